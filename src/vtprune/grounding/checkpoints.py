"""Reading released checkpoints shard by shard, with strict key accounting.

Converters (``glamm_convert``) walk a checkpoint one shard at a time (peak memory: one shard
plus what they keep) and must account for every key: each source tensor is either used or
dropped by name, and each target tensor is filled exactly once. :class:`KeyLedger` keeps that
account and raises :class:`ConversionError` listing the offending keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")


class ConversionError(ValueError):
    """A checkpoint does not have the layout a converter expects (the message says how)."""


def shard_files(directory: str | Path) -> list[Path]:
    """The weight files of a checkpoint folder, in the order of its index.

    Accepts a sharded checkpoint (``*.index.json`` naming its shards, safetensors or pickled
    ``.bin``) or a single ``model.safetensors`` / ``pytorch_model.bin``.
    """
    d = Path(directory)
    if not d.is_dir():
        raise ConversionError(f"{d} is not a directory: expected a checkpoint folder")
    for name in INDEX_FILES:
        if (d / name).is_file():
            weight_map = json.loads((d / name).read_text())["weight_map"]
            files = list(dict.fromkeys(weight_map.values()))
            missing = [f for f in files if not (d / f).is_file()]
            if missing:
                raise ConversionError(f"{d / name} names shards that are not in {d}: {missing}")
            return [d / f for f in files]
    for name in SINGLE_FILES:
        if (d / name).is_file():
            return [d / name]
    raise ConversionError(
        f"no weights in {d}: expected one of {INDEX_FILES + SINGLE_FILES} "
        f"(found {sorted(p.name for p in d.iterdir())[:12]})")


def load_shard(path: Path) -> dict[str, torch.Tensor]:
    """One shard's tensors on the CPU (pickled shards through ``weights_only`` loading)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:  # memory-mapped where the file is in torch's zip format
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (pre-1.6) pickles cannot be mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ConversionError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def iter_tensors(directory: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every (key, tensor) of a checkpoint, one shard in memory at a time."""
    for path in shard_files(directory):
        shard = load_shard(path)
        yield from shard.items()
        del shard


class KeyLedger:
    """The account of a conversion: sources used or dropped, targets filled.

    ``expected`` maps every target key to its shape. ``put`` fills a target (once, with the
    expected shape); ``drop`` records a source key discarded on purpose; ``close`` raises
    unless every source was used or dropped and every target filled.
    """

    def __init__(self, what: str, expected: dict[str, torch.Size]):
        self.what = what
        self.expected = dict(expected)
        self.filled: dict[str, torch.Tensor] = {}
        self.unused: list[str] = []
        self.dropped: list[str] = []

    def put(self, target: str, tensor: torch.Tensor, source: str) -> None:
        if target not in self.expected:
            raise ConversionError(
                f"{self.what}: source key {source!r} maps to {target!r}, which the target model "
                "does not have; the checkpoint's layout differs from the one this converter reads")
        if target in self.filled:
            raise ConversionError(f"{self.what}: {target!r} filled twice (again from {source!r})")
        if tuple(tensor.shape) != tuple(self.expected[target]):
            raise ConversionError(
                f"{self.what}: {source!r} has shape {tuple(tensor.shape)} but {target!r} needs "
                f"{tuple(self.expected[target])}; the config and the tensors disagree")
        self.filled[target] = tensor

    def drop(self, source: str) -> None:
        self.dropped.append(source)

    def unknown(self, source: str) -> None:
        self.unused.append(source)

    def close(self) -> dict[str, torch.Tensor]:
        """The filled tensors; raises listing unknown sources and unfilled targets."""
        missing = sorted(set(self.expected) - set(self.filled))
        if self.unused or missing:
            raise ConversionError(
                f"{self.what}: {len(self.unused)} source key(s) neither used nor dropped "
                f"{_some(self.unused)}, {len(missing)} target key(s) not filled {_some(missing)}")
        return self.filled


def _some(keys: list[str], n: int = 8) -> str:
    return "[]" if not keys else f"{keys[:n]}{' ...' if len(keys) > n else ''}"


def save_sharded(state: dict[str, torch.Tensor], directory: Path,
                 max_shard_bytes: int = 4 << 30) -> None:
    """Write ``state`` as safetensors, sharded with an index above ``max_shard_bytes``."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor.contiguous()
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(directory / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
