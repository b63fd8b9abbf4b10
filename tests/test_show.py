"""``vtprune show`` and the pictures module: images, stand-in signals, panels, the CLI."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vtprune import cli
from vtprune.core import ContractError
from vtprune.viz import (
    BUNDLED,
    load_image,
    run_strategy,
    standin_attention,
    standin_features,
)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_images_load_at_encoder_size(name):
    img = load_image(name)
    assert img.shape == (3, 336, 336) and float(img.min()) >= 0 and float(img.max()) <= 1


def test_any_image_file_is_resized_and_centre_cropped(tmp_path):
    path = tmp_path / "wide.png"
    arr = torch.zeros(100, 300, 3, dtype=torch.uint8)
    arr[:, 100:200] = 255  # white centre third
    Image.fromarray(arr.numpy()).save(path)
    img = load_image(path, size=112)
    assert img.shape == (3, 112, 112)
    assert float(img[:, :, 56].mean()) > 0.95  # the crop is centred on the white band
    with pytest.raises(ContractError, match="bundled images"):
        load_image(tmp_path / "missing.png")


def test_standin_signals_have_the_documented_shapes():
    img = load_image("coffee")
    f = standin_features(img, (24, 24))
    assert f.shape == (576, 9) and torch.isfinite(f).all()
    assert torch.allclose(f.mean(dim=0), torch.zeros(9), atol=1e-4)
    a = standin_attention(img, (24, 24))
    assert a.shape == (576,) and float(a.sum()) == pytest.approx(1.0, abs=1e-5) and bool((a >= 0).all())


def test_panels_report_kept_tokens_regions_and_standin_attention():
    img = load_image("astronaut")
    altp = run_strategy("altp", img, (24, 24), 0.1)
    assert int(altp.kept.sum()) == 58 and altp.title.startswith("altp  58/576")
    assert altp.regions is not None and int(altp.regions.max()) >= 1 and not altp.standin_attention
    fastv = run_strategy("fastv", img, (24, 24), 0.1)
    assert fastv.standin_attention and fastv.regions is None and int(fastv.kept.sum()) == 58
    pool = run_strategy("pool", img, (24, 24), 20)
    assert int(pool.kept.sum()) == 20 and any("merging" in n for n in pool.notes)


def test_cli_writes_one_panel_per_strategy_plus_the_input(tmp_path, capsys):
    out = tmp_path / "cmp.png"
    code = cli.main(["show", "chelsea", "--compare", "altp,fastv,uniform", "--keep", "0.1", "-o", str(out)])
    assert code == 0 and out.exists()
    assert "wrote" in capsys.readouterr().out
    with Image.open(out) as im:
        w, h = im.size
    assert w > 3 * h  # four panels side by side


def test_cli_single_strategy_params_and_errors(tmp_path, capsys):
    out = tmp_path / "one.png"
    assert cli.main(["show", "coffee", "-s", "altp", "-k", "30", "-p", "density=gradient", "-o", str(out)]) == 0
    assert out.exists()
    assert cli.main(["show", "coffee", "-s", "nosuch", "-o", str(out)]) == 2
    assert "no strategy named 'nosuch'" in capsys.readouterr().out
