"""The ``lmms_eval.models`` entry point: one manifest naming the ``vtprune`` model class."""

from __future__ import annotations

from typing import Any

MODEL_ID = "vtprune"
CLASS_PATH = "vtprune.integrations.lmms_eval.model.VTPrune"


def manifest() -> Any:
    """``ModelManifest("vtprune", simple_class_path=...)``; lmms-eval calls this at start-up.

    The class itself is imported only when a run asks for ``--model vtprune``.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)
