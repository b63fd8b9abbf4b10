"""``python -m vtprune.integrations.lmms_eval tasks DIR`` / ``tiny-llava DIR`` / ``tiny-qwen DIR``:
write the local scene tasks (for ``--include_path``) or a tiny random LLaVA or Qwen2.5-VL
checkpoint (for ``pretrained=``)."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vtprune.integrations.lmms_eval")
    sub = parser.add_subparsers(dest="command", required=True)
    tasks = sub.add_parser("tasks", help="write the vtprune scene tasks to DIR")
    tasks.add_argument("directory")
    tasks.add_argument("--scenes", type=int, default=16, help="documents per task (default 16)")
    tasks.add_argument("--split", default="test", help="scene split (default test)")
    tiny = sub.add_parser("tiny-llava", help="save a tiny random LLaVA + processor to DIR")
    tiny.add_argument("directory")
    tiny.add_argument("--seed", type=int, default=0)
    qwen = sub.add_parser("tiny-qwen", help="save a tiny random Qwen2.5-VL + processor to DIR")
    qwen.add_argument("directory")
    qwen.add_argument("--family", choices=("qwen2_5_vl", "qwen2_vl"), default="qwen2_5_vl")
    qwen.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "tasks":
        from .scenes_task import write_tasks

        for path in write_tasks(args.directory, split=args.split, scenes=args.scenes):
            print(path)
    elif args.command == "tiny-qwen":
        from .tiny import save_tiny_qwen

        print(save_tiny_qwen(args.directory, family=args.family, seed=args.seed))
    else:
        from .tiny import save_tiny_llava

        print(save_tiny_llava(args.directory, seed=args.seed))


if __name__ == "__main__":
    main()
