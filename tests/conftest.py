"""Session fixtures shared by the GLaMM tests: one tiny checkpoint, built and converted once."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_glamm_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(GLaMM checkpoint dir, CLIP dir) in the released layouts, random weights."""
    pytest.importorskip("sentencepiece")
    from vtprune.grounding.tiny_glamm import build_tiny_glamm

    return build_tiny_glamm(tmp_path_factory.mktemp("tiny_glamm"))


@pytest.fixture(scope="session")
def tiny_glamm_dir(tiny_glamm_source: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint converted by ``convert_glamm``."""
    from vtprune.grounding.glamm_convert import convert_glamm

    return convert_glamm(*tiny_glamm_source, tmp_path_factory.mktemp("tiny_glamm_out"))
