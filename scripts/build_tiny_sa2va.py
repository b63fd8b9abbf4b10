"""Build a tiny random Sa2VA-Qwen2.5-VL checkpoint in the released layout, a GranD-f-shaped
split and a RefCOCO-shaped split, to try the whole Sa2VA path without the weights
(docs/sa2va.md):

    python scripts/build_tiny_sa2va.py runs/tiny-sa2va
    vtprune convert sa2va runs/tiny-sa2va/sa2va --out runs/tiny-sa2va/sa2va-hf
    vtprune grandf run runs/tiny-sa2va/sa2va-hf --images runs/tiny-sa2va/grandf/images \
        --annotations runs/tiny-sa2va/grandf/annotations --strategies altp,fastv,uniform,cdpruner \
        --keeps 0.1,1.0 --max-new-tokens 16 --no-captions --out runs/tiny-sa2va/gcg
    vtprune refer run runs/tiny-sa2va/sa2va-hf --refs runs/tiny-sa2va/refcoco/refs \
        --images runs/tiny-sa2va/refcoco/images --strategies altp,fastv --keeps 0.1 \
        --max-new-tokens 8 --out runs/tiny-sa2va/refcoco-run
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vtprune.grounding import refer
from vtprune.grounding.grandf_run import export_scenes
from vtprune.grounding.tiny_sa2va import build_tiny_sa2va


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output folder")
    parser.add_argument("--images", type=int, default=4, help="scenes in each exported split")
    args = parser.parse_args()
    out = Path(args.out)
    checkpoint = build_tiny_sa2va(out / "sa2va")
    images, annotations = export_scenes(out / "grandf", "val", args.images)
    refs, ref_images = refer.export_scenes(out / "refcoco", count=args.images)
    print(f"checkpoint {checkpoint}\ngcg images {images}\ngcg annotations {annotations}\n"
          f"refcoco refs {refs}\nrefcoco images {ref_images}")


if __name__ == "__main__":
    main()
