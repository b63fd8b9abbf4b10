"""``vtprune grounding``: evaluate the grounding stand-in or a local checkpoint."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .args import add_command, positive

MODES = ("full", "none", "noise", "oracle")  # = grounding.evaluate.MODES, kept here for a fast import


def cmd_eval(args: argparse.Namespace) -> int:
    from ..grounding.evaluate import evaluate, evaluate_checkpoint, validity
    from ..grounding.model import GroundingModel, load_pretrained

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
    from ..grounding.parallel import is_main

    if is_main():  # under torchrun every rank holds the gathered result; rank 0 reports
        print(json.dumps(res, indent=2))
    return 0


def add_commands(sub: Any) -> None:
    """Register ``grounding``."""
    p = add_command(sub, "grounding", "evaluate the grounding stand-in (GCG mIoU, AP50, recall)",
                    "vtprune grounding --split val --limit 20 --mode none")
    p.add_argument("--checkpoint", help="model directory (default: the weights shipped with vtprune)")
    p.add_argument("--annotations", help="GranDf-style annotation JSON (real-scale path)")
    p.add_argument("--images", help="image folder for --annotations (default: its folder)")
    p.add_argument("--split", default="val", choices=["val", "test", "test_small"])
    p.add_argument("--mode", default="full", choices=MODES, help="visual tokens fed to the LLM")
    p.add_argument("--limit", type=positive, default=None, help="evaluate only the first N images")
    p.add_argument("--validity", action="store_true",
                   help="run every mode and the keep-0 / noise / oracle checks")
    p.set_defaults(func=cmd_eval)
