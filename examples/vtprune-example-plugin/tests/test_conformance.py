"""The plugin's strategy and scorer through vtprune's conformance kit.

Run after installing the plugin (``pip install -e .``): the kit finds ``center_saliency``
through the entry point, exactly as users will. One pytest test per strategy x check.
"""

from __future__ import annotations

import vtprune
from vtprune.conformance_tests import check_stage, parametrize_with_checks, summarize

# The registered default, plus the two extremes of the mix (distinct names -> distinct test ids).
STRATEGIES = [
    "center_saliency",
    vtprune.compose("center_saliency", "global", "topk", name="saliency-only", center_weight=0.0),
    vtprune.compose("center_saliency", "global", "topk", name="center-only", center_weight=1.0),
]


@parametrize_with_checks(STRATEGIES, max_examples=25)
def test_conformance(strategy: vtprune.Strategy, check) -> None:  # type: ignore[no-untyped-def]
    check(strategy)


def test_scorer_conforms_with_neutral_partners() -> None:
    # The scorer alone, with the kit's neutral allocator and selector (global / topk).
    results = check_stage("scorer", "center_saliency", max_examples=25)
    failed = [r.message for r in results if r.status == "failed"]
    assert not failed, summarize(results) + "\n\n" + "\n\n".join(failed)
    assert any(r.status == "passed" for r in results)
