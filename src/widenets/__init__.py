"""widenets: infinite-width neural networks you can run.

Modules: :mod:`~widenets.presets` (problem sizes), :mod:`~widenets.data` (tasks),
:mod:`~widenets.nets` (finite networks), :mod:`~widenets.linearized` (networks and their
linearisations trained side by side), :mod:`~widenets.kernels` (NTK / NNGP, metrics,
predictors), :mod:`~widenets.dmft` (infinite-width dynamics), :mod:`~widenets.fluctuations`
(finite-width variance), :mod:`~widenets.active` (active learning with kernel models),
:mod:`~widenets.widgets` (live panels), :mod:`~widenets.plotting`
(figure style).
"""
from . import (active, data, dmft, fluctuations, kernels, linearized, nets,  # noqa: F401
               plotting, presets, widgets)

__version__ = "0.1.0"
__all__ = ["active", "data", "dmft", "fluctuations", "kernels", "linearized", "nets", "plotting",
           "presets", "widgets"]
