"""Infinite-width kernels (through neural-tangents), empirical kernels, predictors and metrics.

``analytic`` builds, with ``neural_tangents.stax``, exactly the architecture that
:mod:`widenets.nets` trains, so the analytic NTK is the large-width limit of
``nets.kernels(...).ntk`` (in the same units: the kernel that drives the training error).
neural-tangents (and the TensorFlow it imports) is loaded lazily, only by the functions here
that need it.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks, _progress
from . import nets as _nets
from .nets import MLP, apply, scalings

# analytic kernels are evaluated layer by layer (a scan over the identical hidden layers: one
# compilation for any depth), but every layer costs a kernel evaluation (for tanh a 32 x 32-
# point quadrature per pair of inputs): deeper requests are refused rather than left to run.
MAX_ANALYTIC_DEPTH = 1000


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
    depth = _checks.positive_int(depth, "depth", maximum=MAX_ANALYTIC_DEPTH)
    _checks.choice(activation, "activation", _checks.ACTIVATIONS)
    width = _checks.positive_int(width, "width")
    stax = _nt().stax
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(width, W_std=1.0, parameterization="ntk"),
                   _stax_activation(activation)]
    layers += [stax.Dense(1, W_std=1.0, parameterization="ntk")]
    return stax.serial(*layers)


def _analytic_bytes(P: int, P2: int, depth: int, activation: str) -> int:
    """Memory of :func:`analytic`: per layer a few (P, P2) kernels; tanh's quadrature holds
    32 x 32 points per pair of inputs."""
    per_pair = 4 * 32 * 32 if activation == "tanh" else 8
    return 8 * P * P2 * (per_pair + 3 * depth)


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
    X2 = X if X2 is None else jnp.asarray(_checks.inputs(X2, "X2"), X.dtype)
    if X2.shape[1] != X.shape[1]:
        raise ValueError(f"X2 must have D={X.shape[1]} columns like X; got shape {X2.shape}")
    depth = _checks.positive_int(depth, "depth", maximum=MAX_ANALYTIC_DEPTH)
    _checks.choice(activation, "activation", _checks.ACTIVATIONS)
    _checks.fits(_analytic_bytes(X.shape[0], X2.shape[0], depth, activation),
                 "the number of rows of X / X2",
                 f"analytic {activation} kernels of {X.shape[0]} x {X2.shape[0]} input pairs")
    with warnings.catch_warnings():  # neural-tangents warns that tanh uses quadrature
        warnings.simplefilter("ignore", UserWarning)
        out = _analytic_program(depth, activation)(X, X2)
    return _finite_kernels(out, X, "these inputs", "wn.data.normalize")


_ANALYTIC: dict = {}


def _analytic_program(depth: int, activation: str):
    """The jitted layer recursion of :func:`analytic`, one per (depth, activation) (and input
    shapes): evaluated eagerly, neural-tangents runs it op by op, ~50 small compilations per
    new input shape instead of one."""
    if (depth, activation) not in _ANALYTIC:
        stax = _nt().stax
        # one hidden layer (Dense + activation) applied to the previous layer's kernel: after
        # layer l its NNGP is Phi^l (identical to evaluating the depth-l network, in O(L)
        # instead of O(L^2))
        block = stax.serial(stax.Dense(512, W_std=1.0, parameterization="ntk"),
                            _stax_activation(activation))[2]
        readout = stax.Dense(1, W_std=1.0, parameterization="ntk")[2]

        def run(X, X2):
            k = block(X, X2, get=None)
            first = k.nngp
            if depth > 1:     # the identical layers 2..L as a scan: compiled once for any depth
                k, rest = jax.lax.scan(lambda k, _: (block(k, get=None),) * 2, k, None,
                                       length=depth - 1)
                phis = jnp.concatenate([first[None], rest.nngp])
            else:
                phis = first[None]
            k = readout(k, get=None)
            return AnalyticKernels(ntk=k.ntk, nngp=k.nngp, phi=phis)

        _ANALYTIC[depth, activation] = jax.jit(run)
    return _ANALYTIC[depth, activation]


def _finite_kernels(out: AnalyticKernels, X, what: str, fix: str) -> AnalyticKernels:
    """``out``, or a ValueError naming the first kernel that is not finite."""
    for name, a in zip(out._fields, out):
        if not np.all(np.isfinite(np.asarray(a))):      # (on the host: no compilation)
            raise ValueError(f"the analytic {name} is not finite ({a.dtype}) for {what} "
                             f"(largest |x| = {float(jnp.max(jnp.abs(X))):.3g}); rescale X "
                             f"(e.g. {fix})")
    return out


# ----------------------------------------------------------------------------- empirical NTKs
def _ntk_fn(f):
    nt = _nt()
    return nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0,
                               implementation=nt.NtkImplementation.JACOBIAN_CONTRACTION)


_EMPIRICAL: dict = {}


def _empirical_program(net: MLP, summed: bool):
    """The jitted empirical NTK (``summed``: of the sum of logits over sqrt(O), the pNTK) of
    networks shaped like ``net``: ``(params, X, X2, scalings args) -> kernel``.

    One compilation per network shape (:func:`nets._program_net`) and input shapes, shared by
    every seed, parameterisation and gamma0; called eagerly, neural-tangents' contraction
    would instead run op by op, compiling each operation anew for every width (~350 programs
    for a sweep of five widths)."""
    prog = _nets._program_net(net)
    if (prog, summed) not in _EMPIRICAL:
        fan_in = _nets._scalings(prog).fan_in
        O = prog.n_out

        def kernel(params, X, X2, sca):
            sc = _nets._scalings_from(fan_in, sca)
            if summed:
                f = lambda p, x: jnp.sum(_nets._apply(prog, p, x, sc), axis=-1) / jnp.sqrt(O)
            else:
                f = lambda p, x: _nets._apply(prog, p, x, sc)
            return sc.ntk_scale * _ntk_fn(f)(X, X2, params)

        _EMPIRICAL[prog, summed] = jax.jit(kernel)
    return _EMPIRICAL[prog, summed]


def full_ntk(net: MLP, params, X, X2=None):
    """Full empirical NTK of a multi-output net: shape (P, P2, O, O), in ``nets`` units.

    Computed by neural-tangents' Jacobian contraction: its cost and memory grow with the
    number of logits O (one Jacobian row per logit).
    """
    net, params, X, X2 = _ntk_args(net, params, X, X2)
    k = _empirical_program(net, False)(params, X, X2,
                                       _nets._scalings_args(_nets._scalings(net), X.dtype))
    return _nets._finite_or_warn(k, "full_ntk", net, X)


def _ntk_args(net, params, X, X2):
    """Validated network, weights and inputs of an empirical NTK, within the memory limit."""
    net = _nets._net(net)
    params = _nets._params(net, params)
    X = _nets._inputs_for(net, X)
    X2 = X if X2 is None else _nets._inputs_for(net, X2, "X2")
    _checks.fits(_nets._jacobian_ntk_bytes(net, X.shape[0], X2.shape[0]),
                 "the number of rows of X / X2, or width (or n_out)",
                 f"Jacobians of {X.shape[0]} + {X2.shape[0]} inputs x {net.n_out} outputs x "
                 f"{_nets.n_params(net):,} weights")
    return net, params, X, X2


def pntk(net: MLP, params, X, X2=None):
    """pseudo-NTK (Mohamadi et al. 2023): the NTK of the sum of logits over sqrt(O), shape (P, P2).

    ``full_ntk ~ pntk (x) I_O`` with an error O(N^-1/2) in the readout width N, for about 1/O
    of the cost.
    """
    net, params, X, X2 = _ntk_args(net, params, X, X2)
    k = _empirical_program(net, True)(params, X, X2,
                                      _nets._scalings_args(_nets._scalings(net), X.dtype))
    return _nets._finite_or_warn(k, "pntk", net, X)


def flatten_full(full):
    """A full NTK (P, P2, O, O) as the (P O, P2 O) matrix that acts on outputs flattened
    example-major (row ``a * O + i``: example a, logit i; the order of ``Y.reshape(-1)``)."""
    full = _checks.real_array(full, "full")
    if full.ndim != 4 or full.shape[2] != full.shape[3]:
        raise ValueError(f"full must have shape (P, P2, O, O); got {full.shape}")
    P, P2, O = full.shape[0], full.shape[1], full.shape[2]
    return np.asarray(full).transpose(0, 2, 1, 3).reshape(P * O, P2 * O)


def pntk_error(full, approx):
    """Relative Frobenius error of ``approx (x) I_O`` against the full (P, P2, O, O) NTK."""
    full = _matrix(full, "full", ndim=4)
    approx = _matrix(approx, "approx", ndim=2)
    if full.shape[2] != full.shape[3] or full.shape[:2] != approx.shape:
        raise ValueError(f"full must have shape (P, P2, O, O) and approx (P, P2); got "
                         f"{full.shape} and {approx.shape}")
    O = full.shape[-1]
    blocks = approx[:, :, None, None] * np.eye(O)
    return relative_frobenius(blocks, full)


# ----------------------------------------------------------------------------- metrics
def _matrix(A, argname: str, ndim: int | None = None):
    """A finite real array (float64 when concrete; traced arrays pass through)."""
    if _checks.is_traced(A):
        return A
    A = _checks.real_array(A, argname).astype(np.float64)
    if ndim is not None and A.ndim != ndim:
        raise ValueError(f"{argname} must have {ndim} dimensions; got shape {A.shape}")
    if A.size == 0:
        raise ValueError(f"{argname} is empty (shape {A.shape})")
    _checks.finite(A, argname)
    return A


def _pair(A, B):
    A, B = _matrix(A, "A"), _matrix(B, "B")
    if A.shape != B.shape:
        raise ValueError(f"A and B must have the same shape; got {A.shape} and {B.shape}")
    traced = _checks.is_traced(A) or _checks.is_traced(B)
    return A, B, (jnp if traced else np)


def relative_frobenius(A, B):
    """``|A - B|_F / |B|_F`` (B is the reference; computed in float64 for concrete inputs)."""
    A, B, xp = _pair(A, B)
    nB = xp.linalg.norm(B.ravel())
    if xp is np and nB == 0:
        raise ValueError("B (the reference) is zero: the relative distance is undefined")
    return xp.linalg.norm((A - B).ravel()) / nB


def alignment(A, B):
    """Kernel alignment ``<A, B>_F / (|A|_F |B|_F)`` (cosine similarity of two matrices)."""
    A, B, xp = _pair(A, B)
    if xp is np:
        if not (np.all(np.isfinite(A)) and np.all(np.isfinite(B))):
            raise ValueError("A and B must be finite; got " + ("A" if not np.all(np.isfinite(A))
                                                              else "B") + " with inf or NaN")
        # each scaled by its largest entry first: kernels of 1e200 would overflow the norms
        sA, sB = np.abs(A).max(), np.abs(B).max()
        if sA == 0 or sB == 0:
            raise ValueError(f"{'A' if sA == 0 else 'B'} is zero: its alignment is undefined")
        A, B = A / sA, B / sB
    else:
        A = A / jnp.max(jnp.abs(A))
        B = B / jnp.max(jnp.abs(B))
    nA, nB = xp.linalg.norm(A.ravel()), xp.linalg.norm(B.ravel())
    return xp.vdot(A, B) / (nA * nB)


def target_alignment(K, y):
    """Alignment of a kernel with the target kernel ``y y^T``: ``y^T K y / (|K|_F |y|^2)``."""
    K = _matrix(K, "K", ndim=2)
    if K.shape[0] != K.shape[1]:
        raise ValueError(f"K must be a square (P, P) matrix; got shape {K.shape}")
    if _checks.is_traced(y) or _checks.is_traced(K):
        return alignment(K, jnp.outer(y, y))
    y = _checks.targets(y, K.shape[0], "y").astype(np.float64)
    if not np.any(y):
        raise ValueError("y is zero: the target kernel y y^T has no direction to align with")
    if not np.any(K):
        raise ValueError("K is zero: its alignment is undefined")
    return alignment(K, np.outer(y, y))


# ----------------------------------------------------------------------------- predictors
class Prediction(NamedTuple):
    """Outputs of a linearised (kernel) model over time: ``f`` (T+1, P), ``f_test`` (T+1, P_test)."""
    f: jax.Array
    f_test: jax.Array | None


def _predictor_args(K, y, K_test, f0, f0_test):
    """Validated kernel, targets, test kernel and initial outputs of a predictor."""
    K = jnp.asarray(_checks.kernel_matrix(K, "K"))
    P = K.shape[0]
    y = jnp.asarray(_checks.targets(y, P, "y"), K.dtype)
    f0 = jnp.zeros(P, K.dtype) if f0 is None else jnp.asarray(_checks.targets(f0, P, "f0"),
                                                                K.dtype)
    if K_test is None:
        if f0_test is not None:
            raise ValueError("f0_test needs K_test (the test points' kernel with the training set)")
        return K, y, f0, None, None
    K_test = _checks.real_array(K_test, "K_test")
    if K_test.ndim != 2 or K_test.shape[1] != P or K_test.shape[0] < 1:
        raise ValueError(f"K_test must have shape (P_test, {P}); got {K_test.shape}")
    _checks.finite(K_test, "K_test")
    K_test = jnp.asarray(K_test, K.dtype)
    P_test = K_test.shape[0]
    f0_test = (jnp.zeros(P_test, K.dtype) if f0_test is None else
               jnp.asarray(_checks.targets(f0_test, P_test, "f0_test"), K.dtype))
    return K, y, f0, K_test, f0_test


def gd_predictor(K, y, *, eta, steps, K_test=None, f0=None, f0_test=None) -> Prediction:
    """Exact discrete gradient descent of the linearised model with a fixed kernel ``K``.

    ``delta[t+1] = (I - eta K / P) delta[t]`` on the training set, and on test points
    ``f_test[t+1] = f_test[t] + (eta / P) K_test delta[t]`` (``K_test`` is (P_test, P)),
    from outputs ``f0`` (P,) / ``f0_test`` (P_test,) at initialisation (default 0). Solved in
    the eigenbasis of K: no loop over time. Above the stable rate ``2 P / lambda_max(K)``
    (:func:`max_learning_rate`) the error grows like ``|1 - eta lambda_max / P|^t``: that
    warns (``RuntimeWarning``).
    """
    K, y, f0, K_test, f0_test = _predictor_args(K, y, K_test, f0, f0_test)
    P = K.shape[0]
    eta = _checks.nonnegative(eta, "eta")
    steps = _checks.positive_int(steps, "steps")
    P_test = 0 if K_test is None else K_test.shape[0]
    _checks.fits(np.dtype(K.dtype).itemsize * ((steps + 1) * (4 * P + 3 * P_test) + 2 * P * P),
                 "steps", f"a gradient-descent prediction over {steps} steps")
    lam, V = jnp.linalg.eigh(K)
    lam = jnp.clip(lam, 0.0)
    t = jnp.arange(steps + 1)[:, None]
    decay = (1 - eta * lam / P)[None, :] ** t                      # (T+1, P)
    c0 = V.T @ (y - f0)
    f = y[None, :] - (decay * c0[None, :]) @ V.T
    f_test = None
    if K_test is not None:
        # sum_{s<t} (eta/P) (1 - eta lam/P)^s = (1 - decay_t) / lam  (-> eta t / P at lam = 0)
        safe = jnp.where(lam > 1e-12 * jnp.max(lam), lam, 1.0)
        gain = jnp.where(lam > 1e-12 * jnp.max(lam), (1 - decay) / safe, eta * t / P)
        f_test = f0_test[None, :] + ((gain * c0[None, :]) @ V.T) @ K_test.T
    lam_max = float(lam[-1])
    if lam_max > 0 and eta > 2 * P / lam_max * (1 + 1e-6):
        bad = not (bool(jnp.all(jnp.isfinite(f))) and
                   (f_test is None or bool(jnp.all(jnp.isfinite(f_test)))))
        warnings.warn(f"gd_predictor: eta={eta:g} is above the stable learning rate "
                      f"2P/lambda_max(K) = {2 * P / lam_max:.4g}, so the error grows by "
                      f"|1 - eta lambda_max/P| = {abs(1 - eta * lam_max / P):.3g} per step"
                      + (" and the prediction overflows to inf/NaN" if bad else ""),
                      RuntimeWarning, stacklevel=2)
    return Prediction(f, f_test)


def gradient_flow_predictor(K, y, *, eta, t, K_test=None, f0=None, f0_test=None) -> Prediction:
    """Continuous-time gradient flow of the linearised model.

    ``df/dt = -(eta / P) K (f - y)`` evaluated at the times ``t`` (a number or a 1-d array of
    step counts, finite and >= 0), the gradient-flow limit of :func:`gd_predictor`. Returns
    ``f`` (len(t), P) and ``f_test`` (len(t), P_test) with ``K_test`` (P_test, P). Solved in
    the eigenbasis of K, the closed form of ``neural_tangents.predict.gradient_descent_mse``:
    ``f(t) = y - V e^{-eta lam t / P} V^T (y - f0)`` and, on test points,
    ``f_test(t) = f0_test + K_test V [(1 - e^{-eta lam t / P}) / lam] V^T (y - f0)`` (``eta t /
    P`` for lam = 0), without importing neural-tangents (and TensorFlow: ~4 s).
    """
    K, y, f0, K_test, f0_test = _predictor_args(K, y, K_test, f0, f0_test)
    P = K.shape[0]
    eta = _checks.nonnegative(eta, "eta")
    if isinstance(t, (bool, np.bool_, str, bytes)):
        raise ValueError(f"t must be a time or an array of times >= 0; got {t!r}")
    t_arr = _checks.real_array(t, "t")
    if t_arr.ndim > 1 or t_arr.size == 0:
        raise ValueError(f"t must be a time or a non-empty 1-d array of times; got shape "
                         f"{t_arr.shape}")
    if not np.all(np.isfinite(t_arr)) or np.any(t_arr < 0):
        raise ValueError(f"t must hold finite times >= 0 (gradient flow does not run backwards); "
                         f"got {t!r}")
    P_test = 0 if K_test is None else K_test.shape[0]
    _checks.fits(np.dtype(K.dtype).itemsize * (t_arr.size * 4 * (P + P_test) + 4 * P * P),
                 "t (the number of times)", f"a gradient-flow prediction at {t_arr.size} times")
    t = jnp.atleast_1d(jnp.asarray(t_arr, K.dtype))[:, None]          # (n_t, 1)
    lam, V = jnp.linalg.eigh(K)
    lam = jnp.clip(lam, 0.0)
    rate = eta * lam[None, :] / P
    c0 = V.T @ (y - f0)
    f = y[None, :] - (jnp.exp(-rate * t) * c0[None, :]) @ V.T
    if K_test is None:
        return Prediction(f, None)
    # int_0^t (eta/P) e^{-eta lam s/P} ds = -expm1(-eta lam t/P) / lam  (-> eta t / P at lam = 0)
    keep = lam > 1e-12 * jnp.max(lam)
    gain = jnp.where(keep[None, :], -jnp.expm1(-rate * t) / jnp.where(keep, lam, 1.0)[None, :],
                     eta * t / P)
    return Prediction(f, f0_test[None, :] + ((gain * c0[None, :]) @ V.T) @ K_test.T)


class GPPosterior(NamedTuple):
    """The outputs of an infinite ensemble of networks on test points: ``mean`` (P_test,) and
    ``cov`` (P_test, P_test), float64 NumPy arrays (see :func:`ntk_gp`)."""
    mean: np.ndarray
    cov: np.ndarray


def ntk_gp(ntk, nngp, y, *, eta, steps, ntk_test, nngp_test, nngp_test_test) -> GPPosterior:
    """NTK-GP inference: the distribution, over initialisations, of infinitely wide networks
    (NTK parameterisation) trained by ``steps`` steps of full-batch gradient descent on the
    mean squared error, at the test points.

    At infinite width the network is its linearisation with the deterministic NTK ``ntk``
    (Theta, (P, P)), and its outputs at initialisation are a Gaussian process with the NNGP
    kernel ``nngp`` (K). With ``M_t = I - (I - eta Theta / P)^t`` (this package's units: the
    loss is the mean over the P examples, as for :func:`gd_predictor` and ``nets.train_mlp``)
    and ``A = Theta_* Theta^{-1} M_t`` (``Theta_*`` = ``ntk_test``, (P_test, P)),

        f_t(x_*) = f_0(x_*) + A (y - f_0(X)),
        mean = A y,    cov = K_** - A K_X* - K_*X A^T + A K_XX A^T

    (Lee et al. 2019, eqs. 15-16, in discrete time), with ``K_*X`` = ``nngp_test`` (P_test, P)
    and ``K_**`` = ``nngp_test_test`` (P_test, P_test). ``Theta^{-1} M_t`` is taken in the
    eigenbasis of Theta (``(1 - (1 - eta lam / P)^t) / lam``, ``eta t / P`` for lam = 0), so a
    singular NTK needs no ridge. ``steps = 0`` gives the prior; many steps give the mean of
    kernel regression with Theta (:func:`kernel_regression`) and a covariance that is not K's
    posterior (the ensemble is not Bayesian). Computed in float64 on the host.
    """
    theta = np.asarray(_checks.kernel_matrix(ntk, "ntk"), np.float64)
    P = theta.shape[0]
    K = np.asarray(_checks.kernel_matrix(nngp, "nngp"), np.float64)
    if K.shape != theta.shape:
        raise ValueError(f"nngp must have the shape of ntk, {theta.shape}; got {K.shape}")
    y = np.asarray(_checks.targets(y, P, "y"), np.float64)
    eta = _checks.nonnegative(eta, "eta")
    steps = _checks.positive_int(steps, "steps", minimum=0)
    tests = {}
    for name, A in (("ntk_test", ntk_test), ("nngp_test", nngp_test)):
        A = _checks.real_array(A, name)
        if A.ndim != 2 or A.shape[1] != P or A.shape[0] < 1:
            raise ValueError(f"{name} must have shape (P_test, {P}); got {A.shape}")
        _checks.finite(A, name)
        tests[name] = A.astype(np.float64)
    P_test = tests["ntk_test"].shape[0]
    if tests["nngp_test"].shape[0] != P_test:
        raise ValueError(f"nngp_test must have {P_test} rows like ntk_test; got "
                         f"{tests['nngp_test'].shape}")
    Kss = np.asarray(_checks.kernel_matrix(nngp_test_test, "nngp_test_test"), np.float64)
    if Kss.shape != (P_test, P_test):
        raise ValueError(f"nngp_test_test must have shape ({P_test}, {P_test}); got {Kss.shape}")
    _checks.fits(8 * (4 * P * P + 4 * P_test * P + 3 * P_test * P_test), "the test points",
                 f"NTK-GP inference on {P_test} test points")
    lam, V = np.linalg.eigh((theta + theta.T) / 2)
    lam = np.clip(lam, 0.0, None)
    stable = _checks.stable_eta(theta, P)
    if eta > stable * (1 + 1e-6):
        raise ValueError(f"eta={eta:g} is above the stable learning rate 2P/lambda_max(ntk) = "
                         f"{stable:.4g}: the ensemble diverges (no finite posterior)")
    keep = lam > 1e-12 * max(lam[-1], 1e-300)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        gain = np.where(keep, (1 - (1 - eta * lam / P) ** steps) / np.where(keep, lam, 1.0),
                        eta * steps / P)
    A = (tests["ntk_test"] @ V) * gain[None, :] @ V.T                       # (P_test, P)
    Kx = tests["nngp_test"]
    mean = A @ y
    cov = Kss - A @ Kx.T - Kx @ A.T + A @ ((K + K.T) / 2) @ A.T
    return GPPosterior(mean, (cov + cov.T) / 2)


def max_learning_rate(K, *, eps: float = 1e-12) -> float:
    """Largest stable ``eta`` for gradient descent with kernel ``K`` (P, P): ``2 P / lambda_max``.

    Replaces ``neural_tangents.predict.max_learning_rate``, which fails with SciPy >= 1.17.
    """
    K = _checks.kernel_matrix(K, "K")
    eps = _checks.nonnegative(eps, "eps", strict=True)
    rate = _checks.stable_eta(K, K.shape[0])
    if rate == float("inf"):
        raise ValueError("K is zero: gradient descent with it never moves, so every learning "
                         "rate is stable (there is no largest one)")
    return min(rate, 2 * K.shape[0] / eps)


# ----------------------------------------------------------------------------- CNN kernels
# neural-tangents computes a convolution's kernel on the full spatial covariance: for every
# pair of images (x, x') it holds Sigma(x, x')[i, j] for all pairs of positions i, j, that is
# S = (H W)^2 numbers (4096 for 8x8 digits, 10^6 for 32x32 CIFAR-10), for the NNGP and again for
# the NTK; global average pooling then averages them. The NNGP of a conv layer (3x3, SAME, fan-in
# 9 C) is Sigma^{l+1}[i, j] = (1/9) sum_{d in window} E[phi(h^l)_{i+d} phi(h^l)'_{j+d}] (zero
# beyond the border), so that of ``nets._conv`` with multiplier 1/sqrt(9 C) exactly.
def _stax_conv_layer(activation: str, width: int) -> list:
    stax = _nt().stax
    return [stax.Conv(width, (_nets.KERNEL_SIZE,) * 2, padding="SAME", W_std=1.0, b_std=None,
                      parameterization="ntk"),
            _stax_activation(activation)]


def _stax_cnn_readout() -> list:
    stax = _nt().stax
    # channel_axis=3 (NHWC) is the convolutions' own, so parallel branches agree on it
    return [stax.GlobalAvgPool(channel_axis=3),
            stax.Dense(1, W_std=1.0, b_std=None, parameterization="ntk")]


def stax_cnn(depth: int, activation: str = "relu", width: int = 512):
    """``(init_fn, apply_fn, kernel_fn)`` of the neural-tangents CNN matching ``nets``'s muP / NTK CNN.

    ``depth`` times ``Conv(width, (3, 3), padding="SAME", W_std=1, parameterization="ntk")`` (no
    bias; neural-tangents' fan-in is ``3 * 3 * C_in``, as in :func:`widenets.nets.make_cnn`) and
    the activation, then ``GlobalAvgPool()`` and ``Dense(1, W_std=1, parameterization="ntk")``.
    Images are (P, H, W, C), channels last. Its NTK is the large-width limit of
    ``nets.cnn_init_kernels(...).ntk`` for ``parameterization`` ``"mup"`` and ``"ntk"`` (any
    gamma0); its NNGP (the output covariance of the NTK-parameterised net) is the limit of the
    pooled feature kernel ``nets.cnn_init_kernels(...).phi``.
    """
    depth = _checks.positive_int(depth, "depth", maximum=_nets.MAX_DEPTH)
    _checks.choice(activation, "activation", _checks.ACTIVATIONS)
    width = _checks.positive_int(width, "width")
    layers = []
    for _ in range(depth):
        layers += _stax_conv_layer(activation, width)
    return _nt().stax.serial(*layers, *_stax_cnn_readout())


def _stax_cnn_tapped(depth: int, activation: str):
    """A stax network whose kernel_fn returns, nested, the pooled kernel after every layer.

    ``conv, act, FanOut(2), parallel(GlobalAvgPool, conv, act, FanOut(2), parallel(...))``: the
    kernel of each branch is that of the depth-l network truncated after layer l and pooled, all
    in one pass (O(L) layer evaluations, not O(L^2)); the last branch ends with the readout.
    """
    stax = _nt().stax
    tail = stax.serial(*_stax_cnn_readout())
    for _ in range(depth - 1):
        tail = stax.serial(stax.FanOut(2),
                           stax.parallel(stax.GlobalAvgPool(channel_axis=3),
                                         stax.serial(*_stax_conv_layer(activation, 512), tail)))
    return stax.serial(*_stax_conv_layer(activation, 512), tail)


_CNN_TILES: dict = {}


def _cnn_tile_fn(depth: int, activation: str):
    """Jitted ``(x1, x2) -> (phi (depth, b1, b2), ntk (b1, b2))`` for one block of image pairs."""
    key = (depth, activation)
    if key not in _CNN_TILES and activation in _CLOSED_FORM:
        _CNN_TILES[key] = jax.jit(functools.partial(_cnn_closed_form_tile, depth=depth,
                                                    activation=activation))
    if key not in _CNN_TILES:
        with warnings.catch_warnings():  # neural-tangents warns that tanh uses quadrature
            warnings.simplefilter("ignore", UserWarning)
            kernel_fn = _stax_cnn_tapped(depth, activation)[2]

        def tile(x1, x2):
            with warnings.catch_warnings():  # tanh's quadrature warning, at trace time
                warnings.simplefilter("ignore", UserWarning)
                out = kernel_fn(x1, x2, get=None)
            ks = jax.tree_util.tree_leaves(out, is_leaf=lambda k: hasattr(k, "nngp"))
            return jnp.stack([k.nngp for k in ks]), ks[-1].ntk

        _CNN_TILES[key] = jax.jit(tile)
    return _CNN_TILES[key]


def _closed_form_relu(s12, q1, q2):
    """Arc-cosine kernel of ReLU: ``E[relu(u) relu(v)]`` and ``E[relu'(u) relu'(v)]`` for
    ``(u, v)`` of covariance ``[[q1, s12], [s12, q2]]`` (neural-tangents' ``ABRelu(0, 1)``
    formulas, term for term)."""
    root = jnp.sqrt(jnp.maximum(q1 * q2 - s12 ** 2, 0.0))
    angle = jnp.where((root == 0) & (s12 == 0), jnp.pi / 2, jnp.arctan2(root, s12))
    dot = 0.5 - angle / (2 * jnp.pi)
    return root / (2 * jnp.pi) + dot * s12, dot


def _closed_form_erf(s12, q1, q2):
    """``E[erf(u) erf(v)]`` and ``E[erf'(u) erf'(v)]`` (neural-tangents' ``Erf()`` formulas)."""
    root = jnp.sqrt(jnp.maximum((1 + 2 * q1) * (1 + 2 * q2) - 4 * s12 ** 2, 0.0))
    return (2 / jnp.pi) * jnp.arctan2(2 * s12, root), (4 / jnp.pi) / root


_CLOSED_FORM = {
    "linear": (lambda s12, q1, q2: (s12, jnp.ones_like(s12)), lambda q: q),
    "relu": (_closed_form_relu, lambda q: q / 2),
    "erf": (_closed_form_erf, lambda q: (2 / jnp.pi) * jnp.arctan2(q, jnp.sqrt(q + 0.25))),
}


def _cnn_closed_form_tile(x1, x2, *, depth: int, activation: str):
    """The kernels of :func:`_stax_cnn_tapped` for one block of image pairs, without
    neural-tangents: for activations whose Gaussian expectations have a closed form.

    The same recursion as neural-tangents' ``Conv`` / activation / ``GlobalAvgPool`` / ``Dense``
    layers (no bias, ``W_std = 1``, SAME zero padding), on the covariance of every pair of
    positions of every pair of images, ``s12`` (b1, b2, H, W, H, W), and the variances of each
    image's positions, ``q1`` (b1, H, W) and ``q2``: the first convolution gives
    ``s12 = patches(x1) . patches(x2) / (9 C)``; a later one averages the activation's
    kernel over the 9 offsets of the window applied to both positions; the NTK picks up the
    activation's derivative kernel and the covariance at every layer. neural-tangents evaluates
    the same formulas through generic convolutions of the covariance, ~10-30x more slowly on a
    CPU (8x8 digits, depth 1: ~1 ms of CPU per pair of images against ~0.05 ms here).
    """
    fn, diag = _CLOSED_FORM[activation]
    k = _nets.KERNEL_SIZE
    C = x1.shape[-1]

    def patches(x):
        H, W = x.shape[1], x.shape[2]
        lo = (k - 1) // 2
        xp = jnp.pad(x, ((0, 0), (lo, k - 1 - lo), (lo, k - 1 - lo), (0, 0)))
        return jnp.concatenate([xp[:, i:i + H, j:j + W, :] for i in range(k) for j in range(k)],
                               axis=-1)

    def window_mean(a, axes):
        """Mean over the k x k offsets d of ``a[.., i + d, .., j + d]`` (zero outside): the
        same offset on every spatial axis pair in ``axes``."""
        lo = (k - 1) // 2
        pad = [(0, 0)] * a.ndim
        for ax in axes:
            pad[ax] = (lo, k - 1 - lo)
        ap = jnp.pad(a, pad)
        out = 0.0
        for i in range(k):
            for j in range(k):
                idx = [slice(None)] * a.ndim
                for n, ax in enumerate(axes):
                    off = i if n % 2 == 0 else j
                    idx[ax] = slice(off, off + a.shape[ax])
                out = out + ap[tuple(idx)]
        return out / k ** 2

    p1, p2 = patches(x1), patches(x2)
    s12 = jnp.einsum("ahwc,bxyc->abhwxy", p1, p2) / (k * k * C)
    q1, q2 = jnp.sum(p1 * p1, -1) / (k * k * C), jnp.sum(p2 * p2, -1) / (k * k * C)
    t12 = s12
    phis = []
    for l in range(depth):
        k12, d12 = fn(s12, q1[:, None, :, :, None, None], q2[None, :, None, None, :, :])
        t12 = t12 * d12
        phis.append(jnp.mean(k12, axis=(2, 3, 4, 5)))
        if l < depth - 1:
            s12 = window_mean(k12, (2, 3, 4, 5))
            t12 = s12 + window_mean(t12, (2, 3, 4, 5))
            q1, q2 = window_mean(diag(q1), (1, 2)), window_mean(diag(q2), (1, 2))
    return jnp.stack(phis), phis[-1] + jnp.mean(t12, axis=(2, 3, 4, 5))


def _cnn_analytic_bytes(H: int, W: int, depth: int, activation: str, itemsize: int = 4):
    """Bytes of working memory of neural-tangents' CNN kernels per pair of images and per image.

    Per pair the NNGP and the NTK each hold S = (H W)^2 entries, and XLA keeps a few such arrays
    per layer: measured with ``jax.jit(...).lower(...).compile().memory_analysis()`` on blocks of
    4 and 16 8x8 images, 2.7 S (relu, depth 1) and 8.9 S (relu, depth 3; linear 1.8 and 5.3),
    bounded here by (4 L + 4) S; tanh's Gauss-Hermite quadrature evaluates 32 x 32 points per
    entry (measured 913 S at depth 1 and 916 S at depth 3), bounded by (1024 + 4 L + 4) S. Per
    image its covariance with itself, also S entries, goes through the same steps.
    """
    S = (H * W) ** 2
    per_entry = 4 * depth + 4 + (32 * 32 if activation == "tanh" else 0)
    return itemsize * S * per_entry, itemsize * S * per_entry


# working memory of one block of image pairs (less if the limit is lower): small blocks run as
# fast per pair as large ones (8x8 images, relu, depth 2: 2.5-2.8 ms per pair for blocks of
# 4 to 32 images), and blocks of 67 images ran several times slower per pair
CNN_TILE_BYTES = 64 << 20


def cnn_analytic(X, X2=None, *, depth, activation="relu", batch_size=None) -> AnalyticKernels:
    """Analytic NTK and pooled NNGP of the infinite-width CNN of :func:`widenets.nets.train_cnn`.

    ``X`` (P, H, W, C) and ``X2`` (P2, H, W, C) are images, channels last (default ``X2 = X``).
    Returns :class:`AnalyticKernels` with

    * ``ntk`` (P, P2): the limit of ``nets.cnn_init_kernels(...).ntk`` (muP and NTK
      parameterisations, any gamma0: the kernel that drives the training error; the standard
      parameterisation's NTK grows with the width and has no such limit);
    * ``nngp`` (P, P2): the pooled last-layer feature kernel, the limit of ``CNNTrajectory.phi``
      (``pool(phi(h^L)) . pool(phi(h^L))' / N``; also the output covariance of the
      NTK-parameterised net);
    * ``phi`` (depth, P, P2): ``phi[l-1]`` is the pooled feature kernel after layer l (that of
      the depth-l CNN), so ``phi[-1] == nngp``.

    Memory: neural-tangents holds the full spatial covariance, S = (H W)^2 entries per pair of
    images (4096 for 8x8 digits, 10^6 for 32x32 CIFAR-10), for the NNGP and again for the NTK,
    and the activation's kernel a few more. The pairs are therefore evaluated in blocks of
    ``batch_size`` x ``batch_size`` images (default: the largest block within
    :data:`CNN_TILE_BYTES` = 64 MiB of working memory, 17 x 17 for 8x8 digits at depth 2; with
    ``X2 = None`` only the blocks on and above the diagonal, the others by symmetry), and the
    request is refused before anything is allocated when one block plus the outputs would not
    fit: ``itemsize * ((H W)^2 c (b1 b2 + b1 + b2) + (L + 2) P P2)`` bytes for blocks of b1 x b2
    images, with c = 4 L + 4 (relu, linear, erf) or 1024 + 4 L + 4 (tanh: a 32 x 32-point
    quadrature per entry) from XLA's memory analysis (:func:`_cnn_analytic_bytes`). P = 400
    digits at depth 2 then need about 65 MB (1.1 GB peak resident memory, with JAX and TensorFlow).

    For the relu, erf and linear activations the blocks are evaluated by
    :func:`_cnn_closed_form_tile`, the same recursion in closed form without neural-tangents (equal
    to its kernels to float32 round-off, tests/test_cnn_kernels.py): 64 x 64 and 128 x 64 digit
    pairs (erf, depth 1) in 2.2 s of one CPU core including compilation, against 7.7 s. The
    numbers below are neural-tangents' own, still used for tanh (a numerical quadrature).

    Run time, relu, float32, 8x8x1 digits, measured on 2 shared CPU cores (load ~5; the first
    call of a depth and a block shape includes 1-5 s of compilation): P = 200: 42 s wall / 29 s
    CPU (depth 2), 68 s / 50 s (depth 3); P = 400: 164 s / 106 s (depth 2), 208 s / 164 s
    (depth 3). It grows like P^2 L (H W)^2: about 0.6 ms of CPU per pair of images and layer
    (1.2 ms per pair at depth 2), almost all in neural-tangents' convolution of the covariance
    (on a CPU a loop of single-channel 2-d convolutions, single-threaded); tanh's quadrature costs
    ~100x more (128 ms per pair at depth 2: hours for P = 400 on a CPU). On a GPU these
    convolutions run through cuDNN.
    """
    X = jnp.asarray(_nets._images(X, "X"))
    X2 = None if X2 is None else jnp.asarray(_nets._images(X2, "X2", X.shape[1:]), X.dtype)
    depth = _checks.positive_int(depth, "depth", maximum=_nets.MAX_DEPTH)
    _checks.choice(activation, "activation", _checks.ACTIVATIONS)
    P, H, W, _ = X.shape
    P2 = P if X2 is None else X2.shape[0]
    itemsize = np.dtype(X.dtype).itemsize
    per_pair, per_image = _cnn_analytic_bytes(H, W, depth, activation, itemsize)
    tile_bytes = lambda b1, b2: per_pair * b1 * b2 + per_image * (b1 + b2)
    if batch_size is None:
        budget = min(CNN_TILE_BYTES, _checks.memory_limit() // 2)
        b = max(P, P2)
        if tile_bytes(b, b) > budget:    # the largest square block within the budget, ...
            b = max(1, int((np.sqrt(float(per_image) ** 2 + float(per_pair) * budget)
                            - per_image) / per_pair))
            b = -(-max(P, P2) // -(-max(P, P2) // b))    # ... evened out to waste little padding
    else:
        b = _checks.positive_int(batch_size, "batch_size")
    b1, b2 = min(b, P), min(b, P2)
    if tile_bytes(1, 1) > _checks.memory_limit():     # not even one pair of images fits
        argname = f"the image size {H}x{W} (e.g. downsample X)"
    elif batch_size is None:
        argname = "the number of images in X / X2 (or batch_size)"
    else:
        argname = "batch_size (or the number of images in X / X2)"
    _checks.fits(tile_bytes(b1, b2) + itemsize * (depth + 2) * P * P2, argname,
                 f"analytic {activation} CNN kernels of {P} x {P2} images of {H}x{W} pixels in "
                 f"blocks of {b1} x {b2} ((H W)^2 = {(H * W) ** 2} covariance entries per pair)")
    tile = _cnn_tile_fn(depth, activation)
    phi = np.zeros((depth, P, P2), X.dtype)
    ntk = np.zeros((P, P2), X.dtype)
    Y = X if X2 is None else X2

    def block(A, start, size):
        """Rows start..start+size of A, padded with copies of its first row (a fixed shape)."""
        rows = A[start:start + size]
        if rows.shape[0] < size:
            rows = jnp.concatenate([rows, jnp.broadcast_to(A[:1], (size - rows.shape[0],)
                                                           + A.shape[1:])])
        return rows

    pairs = [(i, j) for i in range(0, P, b1) for j in range(i if X2 is None else 0, P2, b2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for i, j in _progress.track(pairs, len(pairs), "cnn_analytic", unit="blocks of images"):
            n1, n2 = min(b1, P - i), min(b2, P2 - j)
            ph, nk = tile(block(X, i, b1), block(Y, j, b2))
            ph, nk = np.asarray(ph)[:, :n1, :n2], np.asarray(nk)[:n1, :n2]
            if X2 is None and j == i:   # exactly symmetric (neural-tangents' is to rounding)
                ph, nk = (ph + np.swapaxes(ph, 1, 2)) / 2, (nk + nk.T) / 2
            phi[:, i:i + n1, j:j + n2], ntk[i:i + n1, j:j + n2] = ph, nk
            if X2 is None and j != i:
                phi[:, j:j + n2, i:i + n1] = np.swapaxes(ph, 1, 2)
                ntk[j:j + n2, i:i + n1] = nk.T
    return _finite_kernels(
        AnalyticKernels(ntk=jnp.asarray(ntk), nngp=jnp.asarray(phi[-1]), phi=jnp.asarray(phi)),
        X, "these images", "per-channel standardisation, as wn.data.images does")


def kernel_regression(K, y, K_test, *, ridge=0.0):
    """Kernel (ridge) regression: the test predictions ``K_test (K + ridge I)^{-1} y``.

    ``K`` (P, P) symmetric PSD training kernel, ``y`` (P,) or (P, O) targets, ``K_test``
    (P_test, P) the test points' kernel with the training set; returns (P_test,) or
    (P_test, O), a float64 NumPy array. With ``ridge = 0`` this is the lazy baseline: a
    linearised network (fixed NTK ``K``) trained to convergence from f0 = 0, the ``t -> inf``
    limit of :func:`gd_predictor` and :func:`gradient_flow_predictor` (which evaluate finite
    times only). Solved by a Cholesky factorisation in float64, never an explicit inverse. A
    ``K + ridge I`` that is singular to working precision (smallest eigenvalue
    <= P * eps * largest) raises a ValueError that suggests a ridge > 0.
    """
    import scipy.linalg  # noqa: PLC0415
    K = _checks.kernel_matrix(K, "K")
    P = K.shape[0]
    y = _checks.real_array(y, "y")
    if y.ndim not in (1, 2) or y.shape[0] != P or y.size == 0:
        raise ValueError(f"y must have shape ({P},) or ({P}, O) to match K; got shape {y.shape}")
    _checks.finite(y, "y")
    K_test = _checks.real_array(K_test, "K_test")
    if K_test.ndim != 2 or K_test.shape[1] != P or K_test.shape[0] < 1:
        raise ValueError(f"K_test must have shape (P_test, {P}); got {K_test.shape}")
    _checks.finite(K_test, "K_test")
    ridge = _checks.nonnegative(ridge, "ridge")
    A = K / 2 + K.T / 2 + ridge * np.eye(P)
    lam = np.linalg.eigvalsh(A)
    if not lam[0] > P * np.finfo(np.float64).eps * max(lam[-1], 0.0):
        raise ValueError(f"K + ridge I is singular to working precision (eigenvalues "
                         f"{lam[0]:.3g} .. {lam[-1]:.3g}, ridge={ridge:g}): pass a ridge > 0 "
                         f"(e.g. 1e-6 times the mean diagonal of K)")
    try:
        factor = scipy.linalg.cho_factor(A, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        raise ValueError(f"K + ridge I is not positive definite (ridge={ridge:g}): pass a "
                         f"larger ridge") from None
    cond = lam[-1] / lam[0]
    if cond * np.finfo(np.float64).eps > 1e-4:
        warnings.warn(f"kernel_regression: K + ridge I is ill-conditioned (condition number "
                      f"{cond:.3g}, ridge={ridge:g}): the predictions can carry errors up to "
                      f"{cond * np.finfo(np.float64).eps:.2g} times the targets' scale from "
                      f"round-off alone; pass a ridge > 0", RuntimeWarning, stacklevel=2)
    alpha = scipy.linalg.cho_solve(factor, y.astype(np.float64), check_finite=False)
    with np.errstate(over="ignore", invalid="ignore"):
        out = K_test.astype(np.float64) @ alpha
    if not np.all(np.isfinite(out)):
        raise ValueError(f"the predictions overflow float64: K + ridge I is nearly singular "
                         f"(condition number {cond:.3g}, ridge={ridge:g}) for targets "
                         f"y up to {float(np.max(np.abs(y))):.3g} and K_test up to "
                         f"{float(np.max(np.abs(K_test))):.3g}: pass a larger ridge or rescale "
                         f"y and the kernels")
    return out
