"""``vtprune show``: draw which tokens strategies keep on an image (see :mod:`vtprune.viz`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..core import VtpruneError
from .args import add_command, keep_or_count, key_value


def cmd_show(args: argparse.Namespace) -> int:
    from ..viz import compare

    names = [n.strip() for n in (args.compare or args.strategy or "altp").split(",") if n.strip()]
    try:
        path = compare(
            args.image, names, keep=args.keep, out=args.output, grid=(args.grid, args.grid),
            size=args.size, params=dict(args.param or []),
        )
    except VtpruneError as err:
        print(f"vtprune show: error: {err}")
        return 2
    print(f"wrote {path} ({', '.join(names)}; keep {args.keep})")
    return 0


def add_commands(subparsers: Any) -> None:
    """Register ``show``."""
    p = add_command(
        subparsers, "show", "draw the tokens strategies keep on an image (no model needed)",
        "vtprune show astronaut --compare altp,fastv,uniform --keep 0.1 -o show.png",
        description=(
            "Draw the image with its token grid, the regions a strategy uses and the kept "
            "tokens, one panel per strategy. Without a model, token features and attention "
            "are stand-ins computed from the pixels (labelled in the picture)."
        ),
    )
    p.add_argument("image", help="an image file, or a bundled sample: astronaut, coffee, chelsea")
    p.add_argument("--strategy", "-s", help="one strategy name (default altp)")
    p.add_argument("--compare", "-c", help="comma-separated strategy names, e.g. altp,fastv,uniform")
    p.add_argument("--keep", "-k", type=keep_or_count, default=0.1, help="keep ratio (0.1) or token count (58)")
    p.add_argument("--output", "-o", default="show.png", help="output PNG (default show.png)")
    p.add_argument("--grid", type=int, default=24, help="tokens per side (default 24)")
    p.add_argument("--size", type=int, default=336, help="image side the encoder sees (default 336)")
    p.add_argument(
        "--param", "-p", type=key_value, action="append",
        help="strategy parameter key=value (repeatable), passed to strategies that accept it",
    )
    p.set_defaults(func=cmd_show)
