"""Build a tiny random GLaMM checkpoint in the released layout, an OpenAI-CLIP folder and a
GranD-f-shaped split, to try the whole GLaMM path without the weights (docs/glamm.md):

    python scripts/build_tiny_glamm.py runs/tiny
    vtprune convert glamm runs/tiny/glamm --clip runs/tiny/clip --out runs/tiny/glamm-hf
    vtprune grandf run runs/tiny/glamm-hf --images runs/tiny/grandf/images \
        --annotations runs/tiny/grandf/annotations --strategies altp,fastv,pyramiddrop \
        --keeps 0.1,1.0 --max-new-tokens 16 --out runs/tiny/gcg
"""

from __future__ import annotations

import argparse

from vtprune.grounding.grandf_run import export_scenes
from vtprune.grounding.tiny_glamm import build_tiny_glamm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output folder")
    parser.add_argument("--images", type=int, default=4, help="scenes in the exported split")
    args = parser.parse_args()
    checkpoint, clip = build_tiny_glamm(args.out)
    images, annotations = export_scenes(f"{args.out}/grandf", "val", args.images)
    print(f"checkpoint {checkpoint}\nclip {clip}\nimages {images}\nannotations {annotations}")


if __name__ == "__main__":
    main()
