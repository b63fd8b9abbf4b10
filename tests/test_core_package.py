"""The top-level package imports its public API lazily (PEP 562)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import vtprune


def test_bare_import_does_not_load_torch_and_names_resolve_on_use():
    code = textwrap.dedent(
        """
        import sys
        import vtprune
        assert "torch" not in sys.modules, "import vtprune loaded torch"
        assert vtprune.__version__
        assert vtprune.core.MissingSignalError is vtprune.MissingSignalError
        assert "torch" in sys.modules
        assert "uniform" in vtprune.list_strategies()
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_public_names_match_the_core():
    import vtprune.core as core

    for name in vtprune.__all__:
        if name != "__version__":
            assert getattr(vtprune, name) is getattr(core, name)
    assert set(vtprune.__all__) <= set(dir(vtprune))
    with pytest.raises(AttributeError, match="has no attribute 'get_stratgy'"):
        vtprune.get_stratgy  # noqa: B018
