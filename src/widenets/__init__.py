"""widenets: infinite-width neural networks you can run.

Modules: :mod:`~widenets.presets` (problem sizes), :mod:`~widenets.data` (tasks),
:mod:`~widenets.nets` (finite networks), :mod:`~widenets.kernels` (NTK / NNGP, metrics,
predictors), :mod:`~widenets.plotting` (figure style).
"""
from . import data, dmft, fluctuations, kernels, nets, plotting, presets, widgets  # noqa: F401

__version__ = "0.1.0"
__all__ = ["data", "dmft", "kernels", "nets", "plotting", "presets", "widgets"]
