"""``vtprune grounding`` sub-commands: evaluate the stand-in or a local checkpoint."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..bench_cli import _ratios

MODES = ("full", "none", "noise", "oracle")  # = evaluate.MODES, kept here for a fast import


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, evaluate_checkpoint, validity
    from .model import GroundingModel, load_pretrained

    if args.annotations:
        if not args.checkpoint:
            raise SystemExit("--annotations needs --checkpoint (a GroundingModel.save directory)")
        res: dict = evaluate_checkpoint(args.checkpoint, args.annotations, args.images,
                                        args.mode, args.limit)
    else:
        model = GroundingModel.load(args.checkpoint) if args.checkpoint else load_pretrained()
        if args.validity:
            res = validity(model, args.split, args.limit)
        else:
            res = evaluate(model, args.split, args.limit, args.mode)
    print(json.dumps(res, indent=2))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("grounding", help="evaluate the grounding stand-in (GCG mIoU, AP50, recall)")
    p.add_argument("--checkpoint", help="model directory (default: the weights shipped with vtprune)")
    p.add_argument("--annotations", help="GranDf-style annotation JSON (real-scale path)")
    p.add_argument("--images", help="image folder for --annotations (default: its folder)")
    p.add_argument("--split", default="val", choices=["val", "test", "test_small"])
    p.add_argument("--mode", default="full", choices=MODES, help="visual tokens fed to the LLM")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--validity", action="store_true",
                   help="run every mode and the keep-0 / noise / oracle checks")
    p.set_defaults(func=cmd_eval)


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .bench import format_markdown, run_grounding_bench, write_outputs

    torch.set_num_threads(args.threads)
    result = run_grounding_bench(args.strategies, keeps=args.keeps, split=args.split,
                                 limit=args.limit, seeds=args.seeds, positions=args.positions,
                                 progress=not args.no_progress)
    paths = write_outputs(result, args.out)
    print(format_markdown(result))
    for kind, path in paths.items():
        print(f"{kind:>9}: {path}")
    return 0


def _list(cast: type, what: str) -> Any:
    def parse(value: str) -> list:
        try:
            items = [cast(t.strip()) for t in value.split(",") if t.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {value!r}") from None
        if not items:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {value!r}")
        return items
    return parse


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"--limit must be a positive scene count, got {value!r}")
    return n


def _value(token: str) -> Any:
    """A parameter value from the command line: int, float, None ("none") or the string."""
    if token.lower() == "none":
        return None
    for cast in (int, float):
        try:
            return cast(token)
        except ValueError:
            pass
    return token


def _param(value: str) -> tuple[str, list[Any]]:
    name, sep, values = value.partition("=")
    tokens = [t.strip() for t in values.split(",") if t.strip()]
    if not sep or not name.strip() or not tokens:
        raise argparse.ArgumentTypeError(
            f"expected NAME=V1,V2,... (e.g. segment_ratio=0.25,0.5), got {value!r}")
    return name.strip(), [_value(t) for t in tokens]


def cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from .sweep import format_sweep_markdown, run_param_sweep

    torch.set_num_threads(args.threads)
    grid = dict(args.param)
    if len(grid) != len(args.param):
        raise SystemExit("each --param name may be given once; list all its values after '='")
    result = run_param_sweep(args.strategy, grid, keeps=args.keeps, split=args.split,
                             limit=args.limit, progress=not args.no_progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grounding_sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    table = format_sweep_markdown(result)
    (out / "grounding_sweep.md").write_text(table + "\n")
    print(table)
    print(f"best: {result['best']['params']} (mean mIoU {result['best']['mean_miou']:.3f})")
    print(f"written: {out / 'grounding_sweep.json'}, {out / 'grounding_sweep.md'}")
    return 0


def add_bench_command(sub: argparse._SubParsersAction) -> None:
    """``vtprune bench grounding`` and ``grounding-sweep``: registered under ``bench``."""
    p = sub.add_parser("grounding", help="every pruning strategy on the grounding stand-in (GCG)")
    p.add_argument("--strategies", type=_list(str, "strategy names"), default=None,
                   help="comma-separated names (default: all registered)")
    p.add_argument("--keeps", type=_ratios, default=[0.5, 0.25, 0.1],
                   help="comma-separated keep ratios (default 0.5,0.25,0.1)")
    p.add_argument("--split", default="test", choices=["val", "test", "test_small"],
                   help="main split (test_small is always added); default test")
    p.add_argument("--limit", type=_positive, default=None, help="only the first N scenes")
    p.add_argument("--seeds", type=_list(int, "integer seeds"), default=[0, 1, 2],
                   help="seeds for random (default 0,1,2)")
    p.add_argument("--positions", type=_list(str, "position modes"), default=["original"],
                   help="original and/or compact for every strategy (altp and fastv always "
                        "get both); default original")
    p.add_argument("--out", default="out/grounding_bench", help="output directory")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)

    q = sub.add_parser("grounding-sweep",
                       help="choose a strategy's parameters on the val split (GCG mIoU)")
    q.add_argument("--strategy", default="altp", help="registered strategy (default altp)")
    q.add_argument("--param", type=_param, action="append", required=True,
                   help="NAME=V1,V2,... values to try (repeat for several parameters)")
    q.add_argument("--keeps", type=_ratios, default=[0.25, 0.1],
                   help="comma-separated keep ratios (default 0.25,0.1)")
    q.add_argument("--split", default="val", choices=["val"],
                   help="tuning split (val only: never tune on test)")
    q.add_argument("--limit", type=_positive, default=None, help="only the first N scenes")
    q.add_argument("--out", default="out/grounding_sweep", help="output directory")
    q.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_sweep)
