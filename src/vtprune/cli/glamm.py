"""``vtprune convert glamm`` and ``vtprune grandf run|score``: the real GLaMM (or Sa2VA) on GranD-f."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .args import add_command, add_weights_options, convert_commands, csv, dtype, positive, ratios


def cmd_convert(args: argparse.Namespace) -> int:
    from ..grounding.checkpoints import ConversionError
    from ..grounding.glamm_convert import convert_glamm

    try:
        out = convert_glamm(args.checkpoint, args.clip, args.out)
    except (ConversionError, FileNotFoundError) as exc:
        raise SystemExit(f"vtprune convert glamm: {exc}") from None
    print(f"wrote {out}: load it with vtprune.grounding.load({str(out)!r})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ..grounding.grandf_run import run, table

    rows = run(args.model, args.images, args.annotations, args.out, args.strategies, args.keeps,
               split=args.split, bert=args.bert, limit=args.limit, batch_size=args.batch_size,
               max_new_tokens=args.max_new_tokens, dtype=dtype(args.dtype), device=args.device,
               captions=not args.no_captions)
    print(table(rows))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from ..grounding import grandf

    similarity = grandf.bert_similarity(args.bert) if args.bert else None
    res = grandf.score(args.predictions, args.annotations, args.split, similarity,
                       captions=not args.no_captions)
    print(json.dumps({k: ("unavailable" if v is None else v) for k, v in res.items()}, indent=2))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--annotations", required=True,
                   help="GranD-f annotations/val_test folder ({val,test}_gcg_coco_{mask,caption}_gt.json)")
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--bert", help="local bert-base-uncased folder for recall (else 'unavailable')")
    p.add_argument("--no-captions", action="store_true",
                   help="skip METEOR and CIDEr (they need Java and take seconds per setting)")


def add_commands(sub: Any) -> None:
    """Register ``convert`` and ``grandf``."""
    csub = convert_commands(sub)
    p = add_command(csub, "glamm", "GLaMM (+ OpenAI CLIP) -> LLaVA + SAM + [SEG] projection (docs/glamm.md)",
                    "vtprune convert glamm GLaMM-GCG --clip clip-vit-large-patch14-336 --out glamm-hf")
    p.add_argument("checkpoint", help="the released GLaMM folder (config.json, shards, tokenizer)")
    p.add_argument("--clip", required=True, help="OpenAI CLIP folder (CLIPModel, vision_model.* keys)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_convert)

    grandf = add_command(sub, "grandf", "GranD-f GCG evaluation of a converted GLaMM or Sa2VA under pruning",
                         "vtprune grandf run glamm-hf --images GranDf_HA_images/val_test "
                         "--annotations annotations/val_test --strategies altp,fastv --keeps 0.1 --out runs/gcg")
    gsub = grandf.add_subparsers(dest="grandf_command", required=True)
    p = add_command(gsub, "run", "ground every image unpruned and per strategy x keep; write predictions and a table",
                    "vtprune grandf run glamm-hf --images GranDf_HA_images/val_test "
                    "--annotations annotations/val_test --strategies altp,fastv,pyramiddrop --keeps 0.1 --out runs/gcg")
    p.add_argument("model", help="a folder `vtprune convert glamm` or `vtprune convert sa2va` wrote")
    p.add_argument("--images", required=True, help="GranDf_HA_images/val_test")
    p.add_argument("--strategies", type=csv, default=["altp", "fastv", "pyramiddrop"])
    p.add_argument("--keeps", type=ratios, default=[0.1])
    p.add_argument("--out", required=True, help="folder for predictions/, results.json, table.md")
    p.add_argument("--limit", type=positive, default=None, help="only the first N images")
    p.add_argument("--batch-size", type=positive, default=1)
    p.add_argument("--max-new-tokens", type=positive, default=512)
    add_weights_options(p, "GLaMM or Sa2VA")
    _common(p)
    p.set_defaults(func=cmd_run)
    p = add_command(gsub, "score", "score a folder of GLaMM-format prediction files (GLaMM's own too)",
                    "vtprune grandf score runs/gcg/predictions/altp_keep0.1 --annotations annotations/val_test")
    p.add_argument("predictions", help="folder of {image_id}.json prediction files")
    _common(p)
    p.set_defaults(func=cmd_score)
