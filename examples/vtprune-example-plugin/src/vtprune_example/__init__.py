"""Example vtprune plugin: a centre-weighted feature-saliency scorer and a strategy using it,
plus a backbone adapter for a toy vision-language model (:class:`ToyVLM`).

Installed, it registers itself through the ``vtprune`` entry-point group (see pyproject.toml);
nothing needs to import this package by hand::

    import vtprune
    strategy = vtprune.get_strategy("center_saliency", center_weight=0.5)
    with vtprune.attach(ToyVLM(), "center_saliency", keep=0.25) as handle: ...
"""

from .plugin import center_prior, feature_saliency, make_center_saliency
from .toy_vlm import ToyVLM

__version__ = "0.1.0"

__all__ = ["ToyVLM", "center_prior", "feature_saliency", "make_center_saliency", "__version__"]
