"""Session fixtures shared by the GLaMM and Sa2VA tests: one tiny checkpoint of each, built and
converted once."""

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


@pytest.fixture(scope="session")
def tiny_sa2va_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Sa2VA-Qwen2.5-VL checkpoint folder in the released layout, random weights."""
    from vtprune.grounding.tiny_sa2va import build_tiny_sa2va

    return build_tiny_sa2va(tmp_path_factory.mktemp("tiny_sa2va"))


@pytest.fixture(scope="session")
def tiny_sa2va_dir(tiny_sa2va_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint converted by ``convert_sa2va``."""
    from vtprune.grounding.sa2va_convert import convert_sa2va

    return convert_sa2va(tiny_sa2va_source, tmp_path_factory.mktemp("tiny_sa2va_out"))
