"""Train the grounding stand-in on generated scenes (CPU, seeded, resumable).

    .venv/bin/python scripts/train_grounding.py --minutes 80 --out runs/grounding

Trains on the unbounded ``train`` stream for a wall-clock budget with a cosine learning rate
over that budget, checkpoints every ``--ckpt-minutes`` to ``OUT/ckpt.pt`` (rerun the same
command to resume), writes the final model with ``GroundingModel.save`` to ``OUT/model`` and
runs the validity checks on ``--val-limit`` validation scenes into ``OUT/validity.json``.
Bit-exact reruns need the same thread count and stop step; the scene stream is seeded.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from vtprune.grounding import inference as inf
from vtprune.grounding.evaluate import evaluate, validity
from vtprune.grounding.model import GroundingConfig, GroundingModel
from vtprune.grounding.scenes import make_scene


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/grounding")
    ap.add_argument("--minutes", type=float, default=80.0, help="training wall-clock budget")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ckpt-minutes", type=float, default=3.0)
    ap.add_argument("--val-limit", type=int, default=128)
    ap.add_argument("--test", action="store_true",
                    help="only evaluate OUT/model on test and test_small (-> OUT/test.json)")
    args = ap.parse_args()
    if args.test:
        torch.set_num_threads(args.threads)
        model_dir = Path(args.out) / "model"
        trained = GroundingModel.load(model_dir)
        res = {"test": evaluate(trained, "test"), "test_small": evaluate(trained, "test_small")}
        for mode in ("none", "noise", "oracle"):
            res[f"test_{mode}"] = evaluate(trained, "test", args.val_limit, mode)
        res["test_full_same_subset"] = evaluate(trained, "test", args.val_limit, "full")
        (Path(args.out) / "test.json").write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res, indent=2))
        return

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "train.log", "a")

    model = GroundingModel(GroundingConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    step, elapsed = 0, 0.0
    ckpt = out / "ckpt.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, elapsed = state["step"], state["elapsed"]
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed at step {step}, {elapsed / 60:.1f} min", file=log, flush=True)

    budget = args.minutes * 60
    start = time.time() - elapsed
    last_ckpt = time.time()
    model.train()
    while time.time() - start < budget:
        frac = (time.time() - start) / budget
        lr = args.lr * (min(1.0, step / 100) * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        # Scene index = step * batch + i: the stream is fixed by the seed-free generator.
        scenes = [make_scene("train", (args.seed * 10_000_000) + step * args.batch + i)
                  for i in range(args.batch)]
        batch = inf.make_batch(scenes, patch=model.cfg.scene.patch_size)
        visual, kept = inf.full_visual(model, batch.images)
        loss = inf.losses(model, batch, visual, kept)
        opt.zero_grad()
        loss["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 25 == 0:
            rec = {"step": step, "min": round((time.time() - start) / 60, 2), "lr": lr,
                   **{k: round(float(v.detach()), 4) for k, v in loss.items()}}
            print(json.dumps(rec), file=log, flush=True)
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "elapsed": time.time() - start, "torch_rng": torch.get_rng_state()},
                       ckpt)
            last_ckpt = time.time()
    model.eval()
    model.save(out / "model")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                "elapsed": time.time() - start, "torch_rng": torch.get_rng_state()}, ckpt)
    print(f"trained {step} steps ({step * args.batch} scenes)", file=log, flush=True)
    res = validity(model, "val", args.val_limit)
    res["train"] = {"steps": step, "scenes": step * args.batch, "minutes": args.minutes}
    (out / "validity.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res["checks"]), file=log, flush=True)


if __name__ == "__main__":
    main()
