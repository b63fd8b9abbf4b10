"""``vtprune demo``: the shipped trained grounding model (default) or the tiny random LLaVA."""

from __future__ import annotations

import argparse
from typing import Any

from .args import add_command, csv, positive, ratio


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    if args.model == "grounding":
        from ..grounding.demo import run_grounding_demo

        run_grounding_demo(keep=0.1 if args.keep is None else args.keep, scenes=args.scenes,
                           strategies=args.strategies, out_dir=args.out, repeats=args.repeats,
                           progress=not args.no_progress)
        return 0
    from ..demo import run_demo

    run_demo(keep=0.25 if args.keep is None else args.keep, out_dir=args.out, image=args.image,
             strategies=args.strategies, new_tokens=args.new_tokens, repeats=args.repeats,
             threads=args.threads, print_fn=print)
    return 0


def add_commands(subparsers: Any) -> None:
    """Register ``demo``."""
    p = add_command(
        subparsers, "demo",
        "what pruning does to grounding: the shipped trained model, table + picture",
        "vtprune demo --keep 0.25 --out out/demo   (or: vtprune demo --model tiny)",
        description=(
            "--model grounding (default): the shipped grounding stand-in on a few generated "
            "scenes, unpruned and with altp, fastv, pyramiddrop, uniform and random: visual "
            "tokens per layer, FLOPs, measured prefill speed-up, mIoU and AP50, and a picture "
            "of the kept tokens and predicted masks. --model tiny: every registered strategy "
            "(third-party ones included) on a random-weight tiny LLaVA."),
    )
    p.add_argument("--model", choices=("grounding", "tiny"), default="grounding",
                   help="grounding: the shipped trained model (default); tiny: random weights")
    p.add_argument("--keep", type=ratio, default=None,
                   help="keep ratio (default 0.1 for grounding, 0.25 for tiny)")
    p.add_argument("--out", default="out/demo", help="output directory (default: out/demo)")
    p.add_argument("--strategies", type=csv, default=None,
                   help="comma-separated names (default: altp,fastv,pyramiddrop,uniform,random "
                        "for grounding; all registered for tiny)")
    p.add_argument("--scenes", type=positive, default=16,
                   help="grounding: generated test scenes (default 16)")
    p.add_argument("--repeats", type=positive, default=5,
                   help="timed prefill pairs per strategy (default 5)")
    p.add_argument("--threads", type=positive, default=1, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="grounding: no progress bar")
    p.add_argument("--image", default=None, help="tiny: a bundled image name (default: the first)")
    p.add_argument("--new-tokens", type=positive, default=8,
                   help="tiny: tokens generated per prompt (default 8)")
    p.set_defaults(func=cmd_demo)
