"""The GLaMM-shaped stand-in: LLaVA parts, sequence building, mask decoder, save/load, modes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlavaForConditionalGeneration

from vtprune.grounding import inference as inf
from vtprune.grounding import text
from vtprune.grounding.annotations import export_split, rle_decode, rle_encode
from vtprune.grounding.evaluate import evaluate, evaluate_checkpoint, mode_visual
from vtprune.grounding.model import GroundingConfig, GroundingModel
from vtprune.grounding.scenes import SceneConfig, make_scene

TINY = GroundingConfig(scene=SceneConfig(image_size=64, patch_size=16, max_size=32),
                       vision_hidden=32, vision_layers=1, vision_heads=2, vision_mlp=64,
                       text_hidden=32, text_layers=2, text_heads=2, text_mlp=64,
                       decoder_channels=8)


@pytest.fixture(scope="module")
def model() -> GroundingModel:
    torch.manual_seed(0)
    return GroundingModel(TINY).eval()


def test_tokenizer_round_trip(tmp_path: Path) -> None:
    tok = text.build_tokenizer()
    words = ["describe", "red", "circle", "[SEG]", "blue", "cross", "[SEG]"]
    ids = tok(" ".join(words), add_special_tokens=False)["input_ids"]
    assert ids == text.encode(words)
    assert text.decode(ids) == words
    tok.save_pretrained(str(tmp_path))
    assert text.phrases_from_words(words) == ["red circle", "blue cross"]
    with pytest.raises(KeyError, match="not in the grounding vocabulary"):
        text.encode(["magenta"])


def test_llava_is_stock_and_own_merge_equals_its_forward(model: GroundingModel) -> None:
    assert type(model.llava) is LlavaForConditionalGeneration
    scenes = [make_scene("val", i, TINY.scene) for i in range(2)]
    batch = inf.make_batch(scenes)
    with torch.no_grad():
        visual, kept = inf.full_visual(model, batch.images)
        ours = model.lm_hidden(visual, kept, batch.tokens)
        n = TINY.num_visual_tokens
        ids = torch.cat([torch.full((2, 1), text.vocab()[text.BOS]),
                         torch.full((2, n), text.vocab()[text.IMAGE]), batch.tokens], dim=1)
        out = model.llava(input_ids=ids, pixel_values=model.pixel_values(batch.images),
                          attention_mask=torch.ones_like(ids), output_hidden_states=True)
    # The stock forward (placeholders merged by LLaVA itself) gives the same states and logits.
    assert torch.allclose(out.hidden_states[-1][:, 1 + n:], ours, atol=1e-5)
    assert torch.allclose(out.logits[:, 1 + n:], model.logits(ours), atol=1e-5)


def test_visual_tokens_are_normalised(model: GroundingModel) -> None:
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        v = model.visual_features(images)
        text_norm = model.llava.get_input_embeddings().weight.norm(dim=-1).mean()
    assert v.shape == (2, TINY.num_visual_tokens, TINY.text_hidden)
    assert float(v.norm(dim=-1).mean()) < 10 * float(text_norm)


def test_mask_decoder_is_colour_blind(model: GroundingModel) -> None:
    """Two images with the same greyscale give the same masks: colour must come via [SEG]."""
    a = torch.rand(1, 3, 64, 64)
    grey = a.mean(1, keepdim=True)
    perm = a[:, [2, 0, 1]]  # same per-pixel mean, different colours
    seg = torch.randn(3, TINY.text_hidden)
    owner = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        fa, ca = model.decoder(a, seg, owner)
        fb, cb = model.decoder(perm, seg, owner)
        fg, _ = model.decoder(grey.expand(-1, 3, -1, -1), seg, owner)
    assert torch.allclose(fa, fb, atol=1e-5) and torch.allclose(fa, fg, atol=1e-5)
    assert fa.shape == (3, 16, 16) and ca.shape == (3, 4, 4)


def test_losses_backward_and_modes(model: GroundingModel) -> None:
    scenes = [make_scene("val", i, TINY.scene) for i in range(2)]
    batch = inf.make_batch(scenes)
    images_before = batch.images.clone()
    visual, kept = inf.full_visual(model, batch.images)
    loss = inf.losses(model, batch, visual, kept)
    loss["total"].backward()
    assert torch.isfinite(loss["total"])
    assert torch.equal(batch.images, images_before)
    model.zero_grad()
    masks = [torch.from_numpy(sc.masks) for sc in scenes]
    for mode in ("none", "noise"):
        v, k = mode_visual(mode)(model, batch.images, masks)
        assert v.shape[1] == (0 if mode == "none" else TINY.num_visual_tokens)
        words = inf.describe(model, v, k, max_objects=2)
        assert all(len(w) % 3 == 0 and len(w) <= 6 for w in words)
    v, k = mode_visual("oracle")(model, batch.images[:1], masks[:1])
    assert k is not None and k.shape[1] == v.shape[1] > 0


def test_evaluate_runs_on_a_tiny_model(model: GroundingModel) -> None:
    res = evaluate(model, "val", limit=2, mode="full", batch_size=2)
    for key in ("gcg_miou", "gcg_ap50", "gcg_recall", "ref_miou"):
        assert 0.0 <= res[key] <= 1.0


def test_real_scale_entry_point_matches_split_evaluation(model: GroundingModel,
                                                         tmp_path: Path) -> None:
    """A saved checkpoint + an exported GranDf-style file give the split's own numbers."""
    model.save(tmp_path / "ckpt")
    ann = export_split(tmp_path / "data", "val", 3, TINY.scene)
    ours = evaluate_checkpoint(tmp_path / "ckpt", ann)
    direct = evaluate(model, "val", limit=3)
    assert ours == pytest.approx(direct, abs=0.01)  # PNG stores 8-bit pixels


def test_rle_round_trip() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = rng.random((7, 9)) > 0.5
        assert np.array_equal(rle_decode(rle_encode(m)), m)
    with pytest.raises(ValueError, match="counts sum"):
        rle_decode({"size": [2, 2], "counts": [1, 1]})


def test_save_load_round_trip(model: GroundingModel, tmp_path: Path) -> None:
    model.save(tmp_path / "m")
    again = GroundingModel.load(tmp_path / "m")
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert (tmp_path / "m" / "tokenizer" / "tokenizer.json").is_file()
    with pytest.raises(FileNotFoundError, match="GroundingModel.save"):
        GroundingModel.load(tmp_path / "missing")


def test_oracle_kept_patches() -> None:
    m = np.zeros((1, 64, 64), dtype=bool)
    m[0, 20:22, 40:42] = True   # patch row 1, col 2 on a 4x4 grid
    kept = inf.oracle_kept([torch.from_numpy(m)], grid=4, image_size=64)
    assert kept[0].tolist() == [1 * 4 + 2]


def test_patch_labels_mark_object_patches() -> None:
    s = make_scene("val", 0, TINY.scene)
    labels = inf.patch_labels(s, 16)
    assert labels.shape == (TINY.num_visual_tokens,)
    occupied = inf.oracle_kept([torch.from_numpy(s.masks)], 4, 64)[0]
    # Every labelled patch overlaps an object; background patches are 0.
    assert set(torch.nonzero(labels)[:, 0].tolist()) <= set(occupied.tolist())
    assert int(labels.max()) <= 30


def test_cli_evaluates_a_checkpoint(model: GroundingModel, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from vtprune.cli import main

    model.save(tmp_path / "ckpt")
    assert main(["grounding", "--checkpoint", str(tmp_path / "ckpt"), "--limit", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 2.0 and 0.0 <= out["gcg_miou"] <= 1.0


def test_validity_reports_every_mode_and_check(model: GroundingModel) -> None:
    from vtprune.grounding.evaluate import validity

    res = validity(model, "val", limit=1)
    assert set(res) == {"full", "none", "noise", "oracle", "checks"}
    checks = res["checks"]
    assert checks["pass"] in (0.0, 1.0) and checks["pass_referring"] in (0.0, 1.0)
    assert checks["none_gcg_miou_ratio"] == pytest.approx(
        res["none"]["gcg_miou"] / max(res["full"]["gcg_miou"], 1e-9))


def test_half_precision_save_loads_as_float32(model: GroundingModel, tmp_path: Path) -> None:
    model.save(tmp_path / "h", dtype=torch.float16)
    again = GroundingModel.load(tmp_path / "h")
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert b.dtype == a.dtype, k
        assert torch.allclose(a, b, atol=1e-2, rtol=1e-3), k
