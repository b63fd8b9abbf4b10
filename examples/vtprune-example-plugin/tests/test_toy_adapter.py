"""The example's backbone adapter, found through the entry point like vtprune's own LLaVA one."""

from __future__ import annotations

import pytest
import torch
from vtprune_example import ToyVLM

import vtprune
from vtprune.backbones import adapter_specs, attach, get_adapter, list_adapters
from vtprune.core import MissingSignalError, Schedule


def inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, 24, 12, generator=gen), torch.randint(0, 32, (batch, 5), generator=gen)


def test_registered_through_the_entry_point() -> None:
    assert "toy-vlm" in list_adapters() and "hf-llava" in list_adapters()
    spec, source = next((s, src) for s, src in adapter_specs() if s.name == "toy-vlm")
    assert source.startswith("vtprune-example-plugin") and spec.models == ("ToyVLM",)
    assert get_adapter("Toy-VLM") is spec.adapter  # names ignore case, like strategy names


def test_attach_prunes_and_detach_restores() -> None:
    model = ToyVLM().eval()
    patches, ids = inputs()
    reference = model(patches, ids)
    with attach(model, "uniform", keep=0.25) as handle:
        pruned = model(patches, ids)
        (record,) = handle.records
        assert handle.adapter.name == "toy-vlm"
    assert record.counts.tolist() == [6, 6] and record.original_count == 24
    assert record.kept_positions.shape == (2, 6 + 5)
    assert not torch.allclose(pruned, reference)
    assert torch.equal(model(patches, ids), reference)  # detached: exactly as before


def test_keep_all_is_the_unpruned_model() -> None:
    model = ToyVLM().eval()
    patches, ids = inputs()
    reference = model(patches, ids)
    with attach(model, "center_saliency", keep=1.0) as handle:
        torch.testing.assert_close(model(patches, ids), reference)
    assert handle.records[0].counts.tolist() == [24, 24]


def test_what_the_adapter_cannot_do_is_refused() -> None:
    model = ToyVLM()
    with pytest.raises(MissingSignalError, match="toy-vlm"):
        attach(model, "fastv", keep=0.5)  # attention exists only inside an LLM it does not run
    with pytest.raises(vtprune.ContractError, match="before the LLM"):
        attach(model, "uniform", schedule=Schedule.at_layers([(1, 0.5)]))
