"""Ensembles of finite networks, initial kernel covariances and the lazy-limit closed forms."""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks


def variance_stderr(samples, axis=0, sum_axis=None):
    """Standard error of the unbiased sample variance s^2 of ``samples`` along ``axis``, by the
    jackknife, which for s^2 has a closed form: with d_i the deviations from the mean of E
    samples, the leave-one-out variances are s^2_(i) = ((E - 1) s^2 - E d_i^2 / (E - 1)) / (E - 2),
    so Var_jack = E^2 / ((E - 1) (E - 2)^2) * var(d_i^2). It uses the fourth moment, not a
    Gaussian assumption: for Gaussian samples it is s^2 sqrt(2 / E) to O(1/E), for heavy tails
    (excess kurtosis k) s^2 sqrt((2 + k) / E), which the Gaussian formula sqrt(2 / (E - 1))
    understates (the errors Delta of deep networks late in training have k ~ 5-20). Its square
    is unbiased for Var[s^2] (measured within 2% over 4000 draws of E = 100 Gaussian, Laplace,
    Student-t(5) and log-normal samples), but for heavy tails one estimate is itself noisy and,
    through the square root, low on average (by 5% for Laplace, 20-30% for Student-t(5) at
    E = 100). float64; the other axes are kept. ``sum_axis``: the error of the *sum* of the
    variances along that axis (e.g. over examples), which is not the sum of their errors (the
    variances of different examples are correlated): the jackknife of the sum, with d_i^2 summed
    over that axis."""
    x = _checks.real_array(samples, "samples").astype(np.float64)
    if x.ndim == 0:
        raise ValueError("samples must be an array with a sample axis; got a scalar")
    _checks.finite(x, "samples")
    axis = _checks.positive_int(axis, "axis", minimum=-x.ndim, maximum=x.ndim - 1)
    if sum_axis is not None:
        sum_axis = _checks.positive_int(sum_axis, "sum_axis", minimum=-x.ndim,
                                        maximum=x.ndim - 1)
    E = x.shape[axis]
    if E < 4:
        raise ValueError(f"samples needs at least 4 entries along axis {axis} (a fourth-moment "
                         f"estimate); got {E}")
    out = _jackknife_var_se(x, axis, sum_axis)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"samples are too large: their fourth moment overflows float64 "
                         f"(largest |sample| {float(np.max(np.abs(x))):.3g}); rescale samples")
    return out


def _jackknife_var_se(x, axis, sum_axis):
    """:func:`variance_stderr` without the checks (an ensemble that diverged gets NaN errors
    beside the NaN variances train_mlp has warned about)."""
    E = x.shape[axis]
    with np.errstate(over="ignore", invalid="ignore"):
        d2 = (x - x.mean(axis, keepdims=True)) ** 2
    if sum_axis is not None:
        if sum_axis % x.ndim == axis % x.ndim:
            raise ValueError(f"sum_axis must differ from the sample axis {axis}; got {sum_axis}")
        d2 = d2.sum(sum_axis, keepdims=True)
        d2 = np.squeeze(d2, sum_axis)
        axis = axis if axis % x.ndim < sum_axis % x.ndim else axis - 1
    with np.errstate(over="ignore", invalid="ignore"):
        return np.sqrt(E ** 2 / ((E - 1) * (E - 2) ** 2) * d2.var(axis))


class Ensemble(NamedTuple):
    """Statistics of an ensemble of ``n_seeds`` networks of width N over initialisations.

    ``mean_delta`` (T+1, P) and ``delta`` (T+1, P) = N Var[Delta_mu(t)], ``delta_cov``
    (T+1, P, P) = N Cov[Delta_mu(t), Delta_nu(t)]; ``mean_ntk`` and ``ntk`` (n_rec, P, P) =
    N Var[K_mu nu(t)] at ``times``; ``*_stderr`` the standard errors of the N Var estimates,
    from the ensemble's fourth moments (:func:`variance_stderr`: sqrt(2 / (E - 1)) of the
    variance for Gaussian fluctuations, 1.5-3x more for the heavy-tailed errors of deep networks
    late in training);
    ``bias_delta`` (T+1, P) = <Delta> - Delta_inf when a DMFT solution was given, else None.
    Every layer's kernels at ``times``: ``mean_phi``, ``phi`` = N Var[Phi^l_mu nu] and
    ``mean_g``, ``g`` = N Var[G^l_mu nu], each (L, n_rec, P, P), with ``phi_stderr``,
    ``g_stderr``; ``delta_sum_stderr`` (T+1,) the error of N sum_mu Var[Delta_mu(t)] (not the
    sum of the per-example errors: the examples' variances are correlated).
    """
    mean_delta: np.ndarray
    delta: np.ndarray
    delta_stderr: np.ndarray
    delta_cov: np.ndarray
    mean_ntk: np.ndarray
    ntk: np.ndarray
    ntk_stderr: np.ndarray
    times: np.ndarray
    bias_delta: np.ndarray | None
    params: dict
    mean_phi: np.ndarray | None = None
    phi: np.ndarray | None = None
    mean_g: np.ndarray | None = None
    g: np.ndarray | None = None
    phi_stderr: np.ndarray | None = None
    g_stderr: np.ndarray | None = None
    delta_sum_stderr: np.ndarray | None = None


def ensemble(X, y, *, depth, width, activation, gamma0, eta, steps, n_seeds, key,
             parameterization="mup", solution=None, record_every=None,
             batch_size=None, lowrank=None) -> Ensemble:
    """N Var of the error and the NTK over ``n_seeds`` centred networks of width N, trained by
    full-batch gradient descent with :func:`widenets.nets.train_mlp` (same arguments). With
    ``solution`` (a DMFT solution with ``delta`` of shape (T+1, P)) also the bias
    <Delta> - Delta_inf. ``batch_size``: train the networks in batches of this many (keys
    ``jax.random.split(key, n_batches)``; only the batches' records are kept), for ensembles
    whose weights do not fit in memory at once; the statistics are those of all n_seeds.
    ``lowrank``: train_mlp's low-rank trainer (the same networks, to round-off); default: on a
    CPU, for deep networks (depth >= 2) trained for few steps on few examples,
    steps * P <= width / 8, where it is faster (depth 4, width 500, P = 1, 30 steps: 4x; it
    trains the seeds one after another, which would idle a GPU)."""
    from .. import nets
    n_seeds = _checks.positive_int(n_seeds, "n_seeds", minimum=4)
    width = _checks.positive_int(width, "width")
    batch_size = n_seeds if batch_size is None else _checks.positive_int(batch_size, "batch_size")
    if solution is not None:
        steps = _checks.positive_int(steps, "steps")
        ref = _solution_delta(solution, (steps + 1, int(np.shape(X)[0])))
    if lowrank is None:
        depth, steps = (_checks.positive_int(v, name) for v, name in ((depth, "depth"),
                                                                      (steps, "steps")))
        lowrank = (jax.default_backend() == "cpu" and depth >= 2
                   and 8 * steps * int(np.shape(X)[0]) <= width)
    kw = dict(depth=depth, width=width, activation=activation, gamma0=gamma0, eta=eta,
              steps=steps, parameterization=parameterization, center=True,
              record_every=record_every, lowrank=_checks.flag(lowrank, "lowrank"))
    if batch_size >= n_seeds:
        runs = [nets.train_mlp(X, y, key=key, n_seeds=n_seeds, **kw)]
    else:
        sizes = [batch_size] * (n_seeds // batch_size) + ([n_seeds % batch_size]
                                                           if n_seeds % batch_size else [])
        keys = jax.random.split(_checks.prng_key(key, "key"), len(sizes))
        runs = [nets.train_mlp(X, y, key=k, n_seeds=int(b), **kw) for k, b in zip(keys, sizes)]
    stack = lambda name: np.concatenate([np.asarray(getattr(r, name), np.float64) for r in runs])
    tr = runs[0]
    delta = stack("delta")                                                # (E, T+1, P)
    ntk = stack("ntk")                                                    # (E, n_rec, P, P)
    E, N = n_seeds, width
    dev = delta - delta.mean(0)
    cov = N * np.einsum("etm,etn->tmn", dev, dev) / (E - 1)
    var_delta = N * delta.var(0, ddof=1)
    var_ntk = N * ntk.var(0, ddof=1)
    bias = None
    if solution is not None:
        bias = delta.mean(0) - ref
    phi, g = stack("phi"), stack("g")                                     # (E, L, n_rec, P, P)
    return Ensemble(mean_phi=phi.mean(0), phi=N * phi.var(0, ddof=1), mean_g=g.mean(0),
                    g=N * g.var(0, ddof=1), phi_stderr=N * _jackknife_var_se(phi, 0, None),
                    g_stderr=N * _jackknife_var_se(g, 0, None),
                    delta_sum_stderr=N * _jackknife_var_se(delta, 0, delta.ndim - 1),
                    mean_delta=delta.mean(0), delta=var_delta,
                    delta_stderr=N * _jackknife_var_se(delta, 0, None), delta_cov=cov,
                    mean_ntk=ntk.mean(0), ntk=var_ntk, ntk_stderr=N * _jackknife_var_se(ntk, 0, None),
                    times=np.asarray(tr.times), bias_delta=bias,
                    params=dict(depth=depth, width=width, activation=activation, gamma0=gamma0,
                                eta=eta, steps=steps, n_seeds=n_seeds,
                                parameterization=parameterization))


def _solution_delta(solution, shape):
    """``solution.delta`` as a finite float64 array of ``shape`` (steps + 1, P), else a
    ValueError naming ``solution``."""
    delta = getattr(solution, "delta", None)
    if delta is None:
        raise ValueError(f"solution must be a DMFT solution (wn.dmft.deep_linear / nonlinear) "
                         f"with delta of shape {shape}; got {type(solution).__name__}")
    try:
        ref = np.asarray(delta, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"solution.delta must be an array of shape {shape}; got "
                         f"{type(delta).__name__}") from None
    if ref.shape != shape:
        raise ValueError(f"solution.delta must have shape {shape} (steps + 1, P); got {ref.shape}")
    if not np.all(np.isfinite(ref)):
        raise ValueError("solution.delta holds NaN or infinite values (a diverged solve?)")
    return ref


def init_ntk_covariance(X, *, depth, width, activation, n_seeds, key,
                        parameterization="mup") -> tuple[np.ndarray, np.ndarray]:
    """Mean initial NTK (P, P) and kappa = N Cov[K_ab, K_cd] (P, P, P, P) over ``n_seeds``
    networks of width N at initialisation (their empirical NTKs)."""
    from .. import nets
    n_seeds = _checks.positive_int(n_seeds, "n_seeds", minimum=3)
    width = _checks.positive_int(width, "width")
    X = _checks.inputs(X)
    P = X.shape[0]
    _checks.fits(8.0 * (3 * P ** 4 + 2 * n_seeds * P ** 2), "the number of rows of X",
                 f"kappa = N Cov[K_ab, K_cd] of {P} examples ({P}^4 entries)")
    net = nets.make_mlp(X.shape[1], depth=depth, width=width, activation=activation,
                        parameterization=parameterization)
    K = np.asarray(nets.init_kernels(net, X, key, n_seeds=n_seeds).ntk, np.float64)
    dev = K - K.mean(0)
    return K.mean(0), width * np.einsum("eab,ecd->abcd", dev, dev) / (n_seeds - 1)


def lazy_delta_variance(K, kappa, y, *, eta, steps, update="exact"):
    """N Cov[Delta(t)] (T+1, P, P) in the lazy limit, from the mean kernel ``K`` (P, P), the
    covariance ``kappa`` = N Cov[K_ab, K_cd] (P, P, P, P) and the targets ``y`` (P,).

    ``update="exact"``: discrete gradient descent, Delta(t+1) = (1 - eta K / P) Delta(t) (for a
    frozen kernel this *is* the network's dynamics); ``"flow"``: gradient flow sampled at
    t = 0..T in units of eta, Delta(t) = exp(-eta K t / P) y. Returns ``(var, cov)``: N Var[
    Delta_mu(t)] (T+1, P) and the full covariance (T+1, P, P).
    """
    K = _checks.kernel_matrix(K, "K")
    P = K.shape[0]
    kappa = _checks.real_array(kappa, "kappa")
    if kappa.shape != (P,) * 4:
        raise ValueError(f"kappa must have shape {(P,) * 4} (N Cov[K_ab, K_cd] for the {P} "
                         f"examples of K); got {kappa.shape}")
    _checks.finite(kappa, "kappa")
    y = _checks.targets(y, P)
    eta = _checks.nonnegative(eta, "eta")
    steps = _checks.positive_int(steps, "steps")
    _checks.choice(update, "update", ("exact", "flow"))
    _covariance_4(kappa, "kappa")
    _checks.fits(8.0 * (steps + 1) * (2 * P ** 3 + P ** 2) + 8.0 * P ** 4, "steps",
                 f"the lazy variance of {P} examples over {steps} steps")
    K, kappa, y = (jnp.asarray(a, jnp.float64 if _checks._x64() else jnp.float32)
                   for a in (K, kappa, y))
    cov = np.asarray(_lazy_cov(K, kappa, y, jnp.asarray(eta, K.dtype), steps=steps,
                               update=update), np.float64)
    eta_max = _checks.stable_eta(K, P)
    if np.all(np.isfinite(cov)) and update == "exact" and eta > eta_max:
        import warnings
        warnings.warn(f"lazy_delta_variance: eta={eta:g} is above the stable learning rate "
                      f"2P/lambda_max(K) = {eta_max:.3g} of kernel gradient descent: the error "
                      f"and its variance grow without bound (lower eta)", RuntimeWarning,
                      stacklevel=2)
    if not np.all(np.isfinite(cov)):
        if update == "exact" and eta > eta_max:
            raise ValueError(f"the lazy variance is not finite: eta={eta:g} is above the stable "
                             f"learning rate 2P/lambda_max(K) = {eta_max:.3g} of kernel gradient "
                             f"descent: lower eta")
        raise ValueError(f"the lazy variance is not finite: it overflowed (kappa up to "
                         f"{float(jnp.max(jnp.abs(kappa))):.3g}, y up to "
                         f"{float(jnp.max(jnp.abs(y))):.3g}, steps={steps}): rescale kappa or y")
    return np.diagonal(cov, axis1=1, axis2=2).copy(), cov


def _covariance_4(kappa, argname):
    """Refuse a (P, P, P, P) array that is not a covariance of the entries of a kernel: as a
    (P^2, P^2) matrix it must be symmetric and positive semi-definite."""
    P2 = kappa.shape[0] ** 2
    M = np.asarray(kappa, np.float64).reshape(P2, P2)
    scale = float(np.max(np.abs(M))) if M.size else 0.0
    if scale == 0.0:
        return
    if float(np.max(np.abs(M - M.T))) > 1e-6 * scale:
        raise ValueError(f"{argname} must be a covariance, symmetric under (a, b) <-> (c, d); "
                         f"max asymmetry {float(np.max(np.abs(M - M.T))):.3g}")
    lam = float(np.linalg.eigvalsh(M / 2 + M.T / 2)[0])
    if lam < -1e-6 * scale * P2:
        raise ValueError(f"{argname} must be a covariance (positive semi-definite as a "
                         f"({P2}, {P2}) matrix); its smallest eigenvalue is {lam:.3g}")


@partial(jax.jit, static_argnames=("steps", "update"))
def _lazy_cov(K, kappa, y, eta, *, steps, update):
    """N Cov[Delta(t)] (T+1, P, P) of :func:`lazy_delta_variance` (inputs validated); one
    compiled program per (P, steps, update, dtype), eta traced."""
    P = K.shape[0]
    eye = jnp.eye(P, dtype=K.dtype)
    if update == "exact":
        M = eye - eta * K / P
        # J_{t+1} = M J_t - (eta/P) I (x) Delta(t); Delta(t+1) = M Delta(t)

        def step(carry, _):
            J, d = carry
            J_next = jnp.einsum("mn,nab->mab", M, J) - (eta / P) * eye[:, :, None] * d[None, None, :]
            return (J_next, M @ d), J
        _, J = jax.lax.scan(step, (jnp.zeros((P, P, P), K.dtype), y), None, length=steps + 1)
    else:
        # gradient flow: dJ/dt = -(eta/P) (K J + I (x) Delta(t)), Delta(t) = e^{-eta K t / P} y;
        # in the eigenbasis K = V diag(lam) V^T the solution is closed form
        lam, V = jnp.linalg.eigh(K)
        t = jnp.arange(steps + 1, dtype=K.dtype)[:, None]
        a = eta * lam / P                                                  # rates
        yv = V.T @ y
        # J_t[mu, alpha, gamma] = -(eta/P) sum_ij V_mu i V_alpha i V_gamma j yv_j
        #                          * int_0^t e^{-a_i (t - s)} e^{-a_j s} ds
        ai, aj = a[:, None], a[None, :]
        diff = aj - ai
        same = jnp.abs(diff) < 1e-12
        integral = jnp.where(same[None], t[:, :, None] * jnp.exp(-ai[None] * t[:, :, None]),
                             (jnp.exp(-ai[None] * t[:, :, None]) - jnp.exp(-aj[None] * t[:, :, None]))
                             / jnp.where(same, 1.0, diff)[None])           # (T+1, P_i, P_j)
        J = -(eta / P) * jnp.einsum("mi,ai,gj,j,tij->tmag", V, V, V, yv, integral)
    return jnp.einsum("tmab,abcd,tncd->tmn", J, kappa, J)


def init_kernel_covariance(X, *, depth, width, activation, n_seeds, key,
                           parameterization="mup"):
    """N Cov of the initial kernels across layers, from ``n_seeds`` sampled networks of width N.

    Returns a dict: ``phi``, ``g`` (L, P, P) the mean kernels and ``phi_cov``, ``g_cov``
    (L, L, P, P, P, P) with ``phi_cov[l, m, a, b, c, d] = N Cov[Phi^(l+1)_ab, Phi^(m+1)_cd]``
    (likewise for G). A covariance from E networks has relative error ~sqrt(2 / (E - 1)).
    """
    from .. import nets
    n_seeds = _checks.positive_int(n_seeds, "n_seeds", minimum=3)
    width = _checks.positive_int(width, "width")
    X = _checks.inputs(X)
    P, L = X.shape[0], _checks.positive_int(depth, "depth")
    _checks.fits(8.0 * (3 * (L * P * P) ** 2 + 4 * n_seeds * L * P * P),
                 "the number of rows of X or depth",
                 f"the covariances of {L} layers' kernels of {P} examples ({L}^2 x {P}^4 entries)")
    net = nets.make_mlp(X.shape[1], depth=depth, width=width, activation=activation,
                        parameterization=parameterization)
    ker = nets.init_kernels(net, X, key, n_seeds=n_seeds)
    out = {}
    for name in ("phi", "g"):
        k = np.asarray(getattr(ker, name), np.float64)                     # (E, L, P, P)
        dev = k - k.mean(0)
        out[name] = k.mean(0)
        out[name + "_cov"] = width * np.einsum("elab,emcd->lmabcd", dev, dev) / (n_seeds - 1)
    return out


def init_relative_covariance(depth, activation):
    """Closed-form N Cov[q^l, q^m] / (q^l q^m) of the initial kernels of one input across layers,
    for a linear or ReLU network (homogeneous activations): ``(phi, g)``, each (L, L).

    Given the layer below, the N pre-activations of layer l are independent Gaussians, so the
    feature kernel Phi^l = <phi(h)^2> of the layer adds a relative fluctuation of variance V / N
    to the one it inherits: V = Var[phi(h)^2] / E[phi(h)^2]^2 = 2 for linear units (chi^2) and
    5 for ReLU (E relu^4 = 3 q^2 / 2, E relu^2 = q / 2); by homogeneity the inherited part passes
    on unchanged. Hence N Cov[Phi^l, Phi^m] / (Phi^l Phi^m) = V min(l, m). The gradient kernels
    accumulate the same way from the readout down: V min(L + 1 - l, L + 1 - m), with
    V = 2 (linear: the readout weights' chi^2, then each W^T) and 5 (ReLU: phi'(h)^2 z^2 with
    z independent of h, E[1(h>0) z^4] = 3 G^2 / 2).
    """
    depth = _checks.positive_int(depth, "depth")
    _checks.choice(activation, "activation", ("linear", "relu"))
    _checks.fits(8.0 * 4 * depth ** 2, "depth", f"two {depth} x {depth} covariance matrices")
    V = 2.0 if activation == "linear" else 5.0
    l = np.arange(1, depth + 1)
    phi = V * np.minimum(l[:, None], l[None, :])
    g = V * np.minimum(depth + 1 - l[:, None], depth + 1 - l[None, :])
    return phi, g
