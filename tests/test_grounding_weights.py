"""The trained stand-in shipped with the package: loads, and its validity holds on a sample."""

from __future__ import annotations

import pytest
import torch

from vtprune.grounding.evaluate import evaluate
from vtprune.grounding.model import WEIGHTS_DIR, load_pretrained

pytestmark = pytest.mark.skipif(not (WEIGHTS_DIR / "model.safetensors").is_file(),
                                reason="this build ships no trained grounding weights")


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    return load_pretrained()


def test_shipped_model_uses_its_visual_tokens(model) -> None:  # type: ignore[no-untyped-def]
    full = evaluate(model, "val", limit=24, mode="full")
    none = evaluate(model, "val", limit=24, mode="none")
    assert full["gcg_miou"] > 0.3
    assert none["gcg_miou"] <= 0.3 * full["gcg_miou"]


def test_model_card_present() -> None:
    card = (WEIGHTS_DIR / "README.md").read_text()
    assert "train_grounding.py" in card and "mIoU" in card
