"""The top-level package imports its public API lazily (PEP 562)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import vtprune


def test_bare_import_does_not_load_torch():
    code = textwrap.dedent(
        """
        import sys
        import vtprune
        assert vtprune.__version__
        print("torch" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_public_names_match_the_core():
    import vtprune.core as core

    assert vtprune.core is core and vtprune.__getattr__("core") is core
    assert "uniform" in vtprune.list_strategies()

    for name in set(vtprune.__all__) & set(core.__all__):
        assert getattr(vtprune, name) is getattr(core, name)
    assert {"get_strategy", "PruneContext", "Selection", "compose"} <= set(vtprune.__all__)
    assert set(vtprune.__all__) <= set(dir(vtprune))
    with pytest.raises(AttributeError, match="has no attribute 'get_stratgy'"):
        vtprune.get_stratgy  # noqa: B018
