"""``vtprune convert sa2va`` and ``vtprune refer run``: the real Sa2VA, and referring
segmentation (RefCOCO / RefCOCO+ / RefCOCOg) of a converted model under pruning."""

from __future__ import annotations

import argparse
from typing import Any

from .args import add_command, add_weights_options, convert_commands, csv, dtype, positive, ratios


def cmd_convert(args: argparse.Namespace) -> int:
    from ..grounding.checkpoints import ConversionError
    from ..grounding.sa2va_convert import convert_sa2va

    try:
        out = convert_sa2va(args.checkpoint, args.out)
    except (ConversionError, FileNotFoundError) as exc:
        raise SystemExit(f"vtprune convert sa2va: {exc}") from None
    print(f"wrote {out}: load it with vtprune.grounding.load({str(out)!r})")
    return 0


def cmd_refer(args: argparse.Namespace) -> int:
    from ..grounding.refer import run, table

    rows = run(args.model, args.refs, args.images, args.out, args.strategies, args.keeps,
               dataset=args.dataset, split=args.split, split_by=args.split_by, limit=args.limit,
               max_new_tokens=args.max_new_tokens, dtype=dtype(args.dtype), device=args.device)
    print(table(rows))
    return 0


def add_commands(sub: Any) -> None:
    """Register ``convert sa2va`` and ``refer``."""
    p = add_command(convert_commands(sub), "sa2va", "Sa2VA-Qwen2.5-VL -> Qwen2.5-VL + SAM 2 + [SEG] projection (docs/sa2va.md)",
                    "vtprune convert sa2va Sa2VA-Qwen2_5-VL-7B --out sa2va-hf")
    p.add_argument("checkpoint", help="the released Sa2VA folder (config.json, shards, tokenizer)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_convert)

    refer = add_command(sub, "refer", "referring segmentation (cIoU, gIoU) of a converted Sa2VA under pruning",
                        "vtprune refer run sa2va-hf --refs ref_seg --images coco/train2014 "
                        "--dataset refcoco --split val --strategies altp,fastv --keeps 0.1 --out runs/refcoco")
    rsub = refer.add_subparsers(dest="refer_command", required=True)
    p = add_command(rsub, "run", "segment every sentence unpruned and per strategy x keep; write a table",
                    "vtprune refer run sa2va-hf --refs ref_seg --images coco/train2014 --dataset refcoco "
                    "--split val --strategies altp,fastv,uniform --keeps 0.1,0.25 --out runs/refcoco")
    p.add_argument("model", help="a folder `vtprune convert sa2va` wrote")
    p.add_argument("--refs", required=True, help="refer-toolkit root: DATASET/refs(unc|umd).p + DATASET/instances.json")
    p.add_argument("--images", required=True, help="the COCO train2014 image folder")
    p.add_argument("--dataset", default="refcoco", choices=["refcoco", "refcoco+", "refcocog"])
    p.add_argument("--split", default="val", help="val, testA, testB (RefCOCO/+), test (RefCOCOg)")
    p.add_argument("--split-by", default=None, help="refs file suffix (default: unc, umd for refcocog)")
    p.add_argument("--strategies", type=csv, default=["altp", "fastv", "pyramiddrop"])
    p.add_argument("--keeps", type=ratios, default=[0.1])
    p.add_argument("--out", required=True, help="folder for results.json and table.md")
    p.add_argument("--limit", type=positive, default=None, help="only the first N images")
    p.add_argument("--max-new-tokens", type=positive, default=64)
    add_weights_options(p, "Sa2VA")
    p.set_defaults(func=cmd_refer)
