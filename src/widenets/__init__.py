"""widenets: infinite-width neural networks you can run.

Modules: :mod:`~widenets.presets` (problem sizes), :mod:`~widenets.data` (tasks),
:mod:`~widenets.nets` (finite networks), :mod:`~widenets.linearized` (networks and their
linearisations trained side by side), :mod:`~widenets.kernels` (NTK / NNGP, metrics,
predictors), :mod:`~widenets.dmft` (infinite-width dynamics), :mod:`~widenets.fluctuations`
(finite-width variance), :mod:`~widenets.active` (active learning with kernel models),
:mod:`~widenets.widgets` (live panels), :mod:`~widenets.plotting`
(figure style).

On a CPU, importing it lowers XLA's optimisation level from 3 to 2 (compiles several times
faster, runs as fast; see :mod:`widenets._xla_flags`; ``WIDENETS_XLA_DEFAULTS=1`` opts out).
"""
from ._xla_flags import fast_cpu_compile as _fast_cpu_compile

_fast_cpu_compile()     # before any submodule computes: XLA reads its flags at JAX's first use
from . import (active, data, dmft, fluctuations, kernels, linearized, nets,  # noqa: F401
               plotting, presets, widgets)

__version__ = "0.1.0"
__all__ = ["active", "data", "dmft", "fluctuations", "kernels", "linearized", "nets", "plotting",
           "presets", "widgets"]
