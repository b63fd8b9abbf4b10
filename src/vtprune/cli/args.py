"""Argument types shared by every ``vtprune`` command (argparse ``type=`` callables).

Each raises ``argparse.ArgumentTypeError`` with what was wrong and an example of what works,
so argparse prints ``vtprune <cmd>: error: argument --x: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def csv(text: str) -> list[str]:
    """``a,b , c`` -> ``["a", "b", "c"]``; empty items dropped, at least one required."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def typed_list(cast: Callable[[str], T], what: str) -> Callable[[str], list[T]]:
    """A parser of comma-separated ``what`` (e.g. ``typed_list(int, "integer seeds")``)."""
    def parse(text: str) -> list[T]:
        try:
            return [cast(t) for t in csv(text)]
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}") from None
    return parse


def ratios(text: str) -> list[float]:
    """Comma-separated keep ratios, each in (0, 1]: ``0.5,0.25``."""
    try:
        values = [float(t) for t in csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated keep ratios like 0.5,0.25, got {text!r}") from None
    bad = [v for v in values if not 0.0 < v <= 1.0]
    if bad:
        raise argparse.ArgumentTypeError(f"keep ratios must lie in (0, 1], got {bad}")
    return values


def ratio(text: str) -> float:
    """One keep ratio in (0, 1]."""
    values = ratios(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one keep ratio in (0, 1], got {text!r}")
    return values[0]


def positive(text: str) -> int:
    """An integer >= 1 (counts: scenes, repeats)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return n


def value(token: str) -> Any:
    """A parameter value: ``none`` -> None, ``true``/``false`` -> bool, int, float, else str."""
    low = token.strip().lower()
    if low == "none":
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(token)
        except ValueError:
            pass
    return token.strip()


def key_value(text: str) -> tuple[str, Any]:
    """``key=value`` (one value, parsed by :func:`value`)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value (e.g. density=dispersion), got {text!r}")
    return key.strip(), value(raw)


def key_values(text: str) -> tuple[str, list[Any]]:
    """``NAME=V1,V2,...`` (values parsed by :func:`value`), for parameter grids."""
    name, sep, raw = text.partition("=")
    tokens = [t.strip() for t in raw.split(",") if t.strip()]
    if not sep or not name.strip() or not tokens:
        raise argparse.ArgumentTypeError(
            f"expected NAME=V1,V2,... (e.g. segment_ratio=0.25,0.5), got {text!r}")
    return name.strip(), [value(t) for t in tokens]


def keep_or_count(text: str) -> int | float:
    """``0.1`` -> a keep ratio, ``58`` -> a token count."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--keep must be a ratio like 0.1 or a count like 58, got {text!r}") from None


def add_command(sub: Any, name: str, help: str, example: str, **kwargs: Any) -> argparse.ArgumentParser:
    """``sub.add_parser`` with the one-line ``help`` (listed by ``vtprune --help``), used as
    the description too unless given, and an ``example`` shown at the end of ``--help``."""
    kwargs.setdefault("description", help)
    return sub.add_parser(name, help=help, epilog=f"example:\n  {example}",
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def convert_commands(sub: Any) -> Any:
    """The subparsers of ``vtprune convert``, created on first use: each model's command module
    adds its own converter to it (``convert glamm``, ``convert sa2va``)."""
    existing = sub.choices.get("convert")
    if existing is None:
        existing = add_command(sub, "convert", "convert a released checkpoint to transformers-native parts",
                               "vtprune convert sa2va Sa2VA-Qwen2_5-VL-7B --out sa2va-hf")
        existing.set_defaults(convert_subparsers=existing.add_subparsers(dest="convert_command", required=True))
    return existing.get_default("convert_subparsers")


def dtype(name: str | None) -> Any:
    """A ``--dtype`` choice as a torch dtype (None: the checkpoint's own)."""
    if name is None:
        return None
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def add_weights_options(p: argparse.ArgumentParser, model: str) -> None:
    """``--dtype`` and ``--device`` for commands that load a converted model."""
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help=f"weights' dtype ({model}'s evaluation runs bfloat16 on a GPU)")
    p.add_argument("--device", default=None, help="e.g. cuda")
