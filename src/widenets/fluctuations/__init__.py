"""Finite-width fluctuations around the infinite-width limit (Bordelon & Pehlevan, NeurIPS 2023).

At width N every order parameter q (the error Delta, the NTK K, the kernels Phi^l, G^l) of a
network fluctuates over initialisations, q ~ q_inf + eps / sqrt(N) with eps Gaussian to leading
order, so N Var[q] has a finite limit (the "propagator"). This module measures it on ensembles
of networks and computes it: in the lazy limit in closed form, and in the rich regime with
:func:`propagator` (two-layer linear networks through the Wishart covariance of the sources,
two-layer tanh / erf networks by Monte Carlo, deep linear networks from the action of
:mod:`.deep` or, for one example, by the Gaussian conditioning of :mod:`.conditioning`), and
for online SGD with :func:`online_error` (and :func:`online_networks`, the networks' mean error).

* :func:`ensemble`: N Var (and N Cov across examples) of Delta and N Var of the NTK over
  ``n_seeds`` networks of width N, with standard errors from the ensemble's fourth moments
  (:func:`variance_stderr`).
* :func:`lazy_delta_variance`: the lazy limit (kernel frozen at its random initial value). With
  ``K = K_inf + dK`` and ``N Cov[dK_ab, dK_cd] = kappa[a, b, c, d]``, discrete gradient descent
  ``Delta(t+1) = (1 - eta K / P) Delta(t)`` gives to first order ``dDelta(t) = J_t dK`` with
  ``J_{t+1} = M J_t - (eta / P) (I (x) Delta(t))``, ``M = 1 - eta K_inf / P``, so
  ``N Cov[Delta(t)] = J_t kappa J_t^T``. For one example this is
  ``N Var Delta(t) = kappa y^2 (eta t)^2 (1 - eta K)^(2 (t - 1))``, whose gradient-flow limit is
  ``kappa y^2 (eta t)^2 exp(-2 eta K t)``, largest at t* = 1 / (eta K).
* :func:`init_ntk_covariance`: kappa = N Cov of the initial NTK's entries, from sampled networks.
"""
from .ensembles import (Ensemble, ensemble, init_kernel_covariance, init_ntk_covariance,
                        init_relative_covariance, lazy_delta_variance, variance_stderr)
from .propagator import MeanField, Propagator, propagator
from .online import OnlineError, online_error, online_networks

__all__ = ["Ensemble", "ensemble", "init_kernel_covariance", "init_ntk_covariance",
           "init_relative_covariance", "lazy_delta_variance", "variance_stderr", "MeanField",
           "Propagator", "propagator", "OnlineError", "online_error", "online_networks"]
