"""Infinite-width kernels (through neural-tangents), empirical kernels, predictors and metrics.

``analytic`` builds, with ``neural_tangents.stax``, exactly the architecture that
:mod:`widenets.nets` trains, so the analytic NTK is the large-width limit of
``nets.kernels(...).ntk`` (in the same units: the kernel that drives the training error).
neural-tangents (and the TensorFlow it imports) is loaded lazily, only by the functions here
that need it.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from .nets import MLP, apply, scalings


def _nt():
    """neural-tangents, imported on first use with TensorFlow's start-up chatter silenced."""
    if "neural_tangents" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
        with _quiet_stderr():
            import neural_tangents  # noqa: F401, PLC0415  (heavy: imports TensorFlow)
    return sys.modules["neural_tangents"]


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 to /dev/null (TensorFlow's C++ logging ignores Python's sys.stderr)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):   # no real stderr (some embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _stax_activation(name: str):
    stax = _nt().stax
    if name == "linear":
        return stax.Identity()
    if name == "relu":
        return stax.Relu()
    if name == "erf":
        return stax.Erf()
    # tanh has no closed form: Gauss-Hermite quadrature over the 2-d Gaussian
    return stax.ElementwiseNumerical(jnp.tanh, deg=32)


def stax_mlp(depth: int, activation: str = "relu", width: int = 512):
    """``(init_fn, apply_fn, kernel_fn)`` of the neural-tangents network matching ``nets``'s muP / NTK MLP.

    Hidden layers are ``Dense(width, W_std=1, parameterization="ntk")`` (multiplier
    1/sqrt(fan_in), unit-variance weights, no bias) followed by the activation; the readout
    is ``Dense(1)``. Its NTK equals our muP and NTK-parameterisation kernels for any gamma0.
    """
    depth = _checks.positive_int(depth, "depth")
    _checks.choice(activation, "activation", _checks.ACTIVATIONS)
    stax = _nt().stax
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(width, W_std=1.0, parameterization="ntk"),
                   _stax_activation(activation)]
    layers += [stax.Dense(1, W_std=1.0, parameterization="ntk")]
    return stax.serial(*layers)


class AnalyticKernels(NamedTuple):
    """Infinite-width kernels at initialisation on inputs (X, X2)."""
    ntk: jax.Array    # (P, P2)  the NTK (neural_tangents ``ntk``)
    nngp: jax.Array   # (P, P2)  output covariance of the NTK-parameterised net = Phi^L
    phi: jax.Array    # (depth, P, P2) feature kernels Phi^l, l = 1..L


def analytic(X, X2=None, *, depth, activation="relu") -> AnalyticKernels:
    """Analytic NTK, NNGP and per-layer feature kernels Phi^l of the infinite-width MLP.

    Inputs are (P, D) arrays; Phi^l is the NNGP kernel of the network truncated after layer l.
    Valid for ``parameterization`` ``"mup"`` and ``"ntk"`` of :mod:`widenets.nets` (their kernels
    have a width-independent limit; the standard parameterisation's NTK grows with width).
    """
    X = jnp.asarray(_checks.inputs(X, "X"))
    X2 = X if X2 is None else jnp.asarray(_checks.inputs(X2, "X2"))
    if X2.shape[1] != X.shape[1]:
        raise ValueError(f"X2 must have D={X.shape[1]} columns like X; got shape {X2.shape}")
    depth = _checks.positive_int(depth, "depth")
    phis = []
    with warnings.catch_warnings():  # neural-tangents warns that tanh uses quadrature
        warnings.simplefilter("ignore", UserWarning)
        for l in range(1, depth + 1):
            k = stax_mlp(l, activation)[2](X, X2, ("nngp", "ntk"))
            phis.append(k.nngp)
    return AnalyticKernels(ntk=k.ntk, nngp=k.nngp, phi=jnp.stack(phis))


# ----------------------------------------------------------------------------- empirical NTKs
def _ntk_fn(f):
    nt = _nt()
    return nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0,
                               implementation=nt.NtkImplementation.JACOBIAN_CONTRACTION)


def full_ntk(net: MLP, params, X, X2=None):
    """Full empirical NTK of a multi-output net: shape (P, P2, O, O), in ``nets`` units.

    Computed by neural-tangents' Jacobian contraction: its cost and memory grow with the
    number of logits O (one Jacobian row per logit).
    """
    X2 = X if X2 is None else X2
    k = _ntk_fn(lambda p, x: apply(net, p, x))(X, X2, params)
    return scalings(net).ntk_scale * k


def pntk(net: MLP, params, X, X2=None):
    """pseudo-NTK (Mohamadi et al. 2023): the NTK of the sum of logits over sqrt(O), shape (P, P2).

    ``full_ntk ~ pntk (x) I_O`` with an error O(N^-1/2) in the readout width N, for about 1/O
    of the cost.
    """
    X2 = X if X2 is None else X2
    O = net.n_out
    k = _ntk_fn(lambda p, x: jnp.sum(apply(net, p, x), axis=-1) / jnp.sqrt(O))(X, X2, params)
    return scalings(net).ntk_scale * k


def pntk_error(full, approx):
    """Relative Frobenius error of ``approx (x) I_O`` against the full (P, P2, O, O) NTK."""
    O = full.shape[-1]
    blocks = approx[:, :, None, None] * jnp.eye(O)
    return relative_frobenius(blocks, full)


# ----------------------------------------------------------------------------- metrics
def relative_frobenius(A, B):
    """``|A - B|_F / |B|_F`` (B is the reference)."""
    A, B = jnp.asarray(A), jnp.asarray(B)
    if A.shape != B.shape:
        raise ValueError(f"A and B must have the same shape; got {A.shape} and {B.shape}")
    return jnp.linalg.norm((A - B).ravel()) / jnp.linalg.norm(B.ravel())


def alignment(A, B):
    """Kernel alignment ``<A, B>_F / (|A|_F |B|_F)`` (cosine similarity of two matrices)."""
    A, B = jnp.asarray(A), jnp.asarray(B)
    if A.shape != B.shape:
        raise ValueError(f"A and B must have the same shape; got {A.shape} and {B.shape}")
    return jnp.vdot(A, B) / (jnp.linalg.norm(A.ravel()) * jnp.linalg.norm(B.ravel()))


def target_alignment(K, y):
    """Alignment of a kernel with the target kernel ``y y^T``: ``y^T K y / (|K|_F |y|^2)``."""
    y = jnp.asarray(y)
    return alignment(K, jnp.outer(y, y))


# ----------------------------------------------------------------------------- predictors
class Prediction(NamedTuple):
    """Outputs of a linearised (kernel) model over time: ``f`` (T+1, P), ``f_test`` (T+1, P_test)."""
    f: jax.Array
    f_test: jax.Array | None


def gd_predictor(K, y, *, eta, steps, K_test=None, f0=None, f0_test=None) -> Prediction:
    """Exact discrete gradient descent of the linearised model with a fixed kernel ``K``.

    ``delta[t+1] = (I - eta K / P) delta[t]`` on the training set, and on test points
    ``f_test[t+1] = f_test[t] + (eta / P) K_test delta[t]`` (``K_test`` is (P_test, P)),
    from outputs ``f0`` / ``f0_test`` at initialisation (default 0). Solved in the
    eigenbasis of K: no loop over time.
    """
    K = jnp.asarray(_checks.kernel_matrix(K, "K"))
    P = K.shape[0]
    y = jnp.asarray(_checks.targets(y, P, "y"), K.dtype)
    eta = _checks.nonnegative(eta, "eta")
    steps = _checks.positive_int(steps, "steps")
    f0 = jnp.zeros(P, K.dtype) if f0 is None else jnp.asarray(_checks.targets(f0, P, "f0"))
    lam, V = jnp.linalg.eigh(K)
    lam = jnp.clip(lam, 0.0)
    t = jnp.arange(steps + 1)[:, None]
    decay = (1 - eta * lam / P)[None, :] ** t                      # (T+1, P)
    c0 = V.T @ (y - f0)
    f = y[None, :] - (decay * c0[None, :]) @ V.T
    f_test = None
    if K_test is not None:
        K_test = jnp.asarray(K_test)
        if K_test.ndim != 2 or K_test.shape[1] != P:
            raise ValueError(f"K_test must have shape (P_test, {P}); got {K_test.shape}")
        f0_test = jnp.zeros(K_test.shape[0]) if f0_test is None else jnp.asarray(f0_test)
        # sum_{s<t} (eta/P) (1 - eta lam/P)^s = (1 - decay_t) / lam  (-> eta t / P at lam = 0)
        safe = jnp.where(lam > 1e-12 * jnp.max(lam), lam, 1.0)
        gain = jnp.where(lam > 1e-12 * jnp.max(lam), (1 - decay) / safe, eta * t / P)
        f_test = f0_test[None, :] + ((gain * c0[None, :]) @ V.T) @ K_test.T
    return Prediction(f, f_test)


def gradient_flow_predictor(K, y, *, eta, t, K_test=None, f0=None, f0_test=None) -> Prediction:
    """Continuous-time gradient flow of the linearised model, by ``neural_tangents.predict``.

    ``df/dt = -(eta / P) K (f - y)`` evaluated at the times ``t`` (array of step counts), the
    gradient-flow limit of :func:`gd_predictor`.
    """
    K = jnp.asarray(_checks.kernel_matrix(K, "K"))
    P = K.shape[0]
    y = jnp.asarray(_checks.targets(y, P, "y"), K.dtype)
    eta = _checks.nonnegative(eta, "eta")
    f0 = jnp.zeros(P, K.dtype) if f0 is None else jnp.asarray(f0)
    predict = _nt().predict.gradient_descent_mse(K, y[:, None], learning_rate=eta)
    t = jnp.atleast_1d(jnp.asarray(t, K.dtype))
    if K_test is None:
        f = predict(t, f0[:, None])
        return Prediction(f[..., 0], None)
    f0_test = jnp.zeros(K_test.shape[0], K.dtype) if f0_test is None else jnp.asarray(f0_test)
    f, ft = predict(t, f0[:, None], f0_test[:, None], jnp.asarray(K_test))
    return Prediction(f[..., 0], ft[..., 0])


def max_learning_rate(K, *, eps: float = 1e-12) -> float:
    """Largest stable ``eta`` for gradient descent with kernel ``K`` (P, P): ``2 P / lambda_max``.

    Replaces ``neural_tangents.predict.max_learning_rate``, which fails with SciPy >= 1.17.
    """
    K = _checks.kernel_matrix(K, "K")
    lam_max = float(np.linalg.eigvalsh(K)[-1])
    return 2 * K.shape[0] / max(lam_max, eps)
