"""Example vtprune plugin: a centre-weighted feature-saliency scorer and a strategy using it.

Installed, it registers itself through the ``vtprune`` entry-point group (see pyproject.toml);
nothing needs to import this package by hand::

    import vtprune
    strategy = vtprune.get_strategy("center_saliency", center_weight=0.5)
"""

from .plugin import center_prior, feature_saliency, make_center_saliency

__version__ = "0.1.0"

__all__ = ["center_prior", "feature_saliency", "make_center_saliency", "__version__"]
