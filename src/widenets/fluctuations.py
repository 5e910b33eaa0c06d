"""Finite-width fluctuations around the infinite-width limit (Bordelon & Pehlevan, NeurIPS 2023).

At width N every order parameter q (the error Delta, the NTK K, the kernels Phi^l, G^l) of a
network fluctuates over initialisations, q ~ q_inf + eps / sqrt(N) with eps Gaussian to leading
order, so N Var[q] has a finite limit (the "propagator"). This module measures it on ensembles
of networks and computes it in the lazy limit; the propagator of the rich regime is to come
(issue 11).

* :func:`ensemble`: N Var (and N Cov across examples) of Delta and N Var of the NTK over
  ``n_seeds`` networks of width N, with standard errors.
* :func:`lazy_delta_variance`: the lazy limit (kernel frozen at its random initial value). With
  ``K = K_inf + dK`` and ``N Cov[dK_ab, dK_cd] = kappa[a, b, c, d]``, discrete gradient descent
  ``Delta(t+1) = (1 - eta K / P) Delta(t)`` gives to first order ``dDelta(t) = J_t dK`` with
  ``J_{t+1} = M J_t - (eta / P) (I (x) Delta(t))``, ``M = 1 - eta K_inf / P``, so
  ``N Cov[Delta(t)] = J_t kappa J_t^T``. For one example this is
  ``N Var Delta(t) = kappa y^2 (eta t)^2 (1 - eta K)^(2 (t - 1))``, whose gradient-flow limit is
  ``kappa y^2 (eta t)^2 exp(-2 eta K t)``, largest at t* = 1 / (eta K).
* :func:`init_ntk_covariance`: kappa = N Cov of the initial NTK's entries, from sampled networks.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks


class Ensemble(NamedTuple):
    """Statistics of an ensemble of ``n_seeds`` networks of width N over initialisations.

    ``mean_delta`` (T+1, P) and ``delta`` (T+1, P) = N Var[Delta_mu(t)], ``delta_cov``
    (T+1, P, P) = N Cov[Delta_mu(t), Delta_nu(t)]; ``mean_ntk`` and ``ntk`` (n_rec, P, P) =
    N Var[K_mu nu(t)] at ``times``; ``*_stderr`` the standard errors of the N Var estimates
    (a variance from E members has relative error sqrt(2 / (E - 1)) for Gaussian fluctuations);
    ``bias_delta`` (T+1, P) = <Delta> - Delta_inf when a DMFT solution was given, else None.
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


def ensemble(X, y, *, depth, width, activation, gamma0, eta, steps, n_seeds, key,
             parameterization="mup", solution=None, record_every=None) -> Ensemble:
    """N Var of the error and the NTK over ``n_seeds`` centred networks of width N, trained by
    full-batch gradient descent with :func:`widenets.nets.train_mlp` (same arguments). With
    ``solution`` (a DMFT solution with ``delta`` of shape (T+1, P)) also the bias
    <Delta> - Delta_inf."""
    from . import nets
    n_seeds = _checks.positive_int(n_seeds, "n_seeds", minimum=3)
    width = _checks.positive_int(width, "width")
    tr = nets.train_mlp(X, y, depth=depth, width=width, activation=activation, gamma0=gamma0,
                        eta=eta, steps=steps, key=key, parameterization=parameterization,
                        n_seeds=n_seeds, center=True, record_every=record_every)
    delta = np.asarray(tr.delta, np.float64)                              # (E, T+1, P)
    ntk = np.asarray(tr.ntk, np.float64)                                  # (E, n_rec, P, P)
    E, N = n_seeds, width
    rel = np.sqrt(2.0 / (E - 1))
    dev = delta - delta.mean(0)
    cov = N * np.einsum("etm,etn->tmn", dev, dev) / (E - 1)
    var_delta = N * delta.var(0, ddof=1)
    var_ntk = N * ntk.var(0, ddof=1)
    bias = None
    if solution is not None:
        ref = np.asarray(solution.delta, np.float64)
        if ref.shape != var_delta.shape:
            raise ValueError(f"solution.delta must have shape {var_delta.shape} (steps + 1, P); "
                             f"got {ref.shape}")
        bias = delta.mean(0) - ref
    return Ensemble(mean_delta=delta.mean(0), delta=var_delta, delta_stderr=rel * var_delta,
                    delta_cov=cov, mean_ntk=ntk.mean(0), ntk=var_ntk, ntk_stderr=rel * var_ntk,
                    times=np.asarray(tr.times), bias_delta=bias,
                    params=dict(depth=depth, width=width, activation=activation, gamma0=gamma0,
                                eta=eta, steps=steps, n_seeds=n_seeds,
                                parameterization=parameterization))


def init_ntk_covariance(X, *, depth, width, activation, n_seeds, key,
                        parameterization="mup") -> tuple[np.ndarray, np.ndarray]:
    """Mean initial NTK (P, P) and kappa = N Cov[K_ab, K_cd] (P, P, P, P) over ``n_seeds``
    networks of width N at initialisation (their empirical NTKs)."""
    from . import nets
    n_seeds = _checks.positive_int(n_seeds, "n_seeds", minimum=3)
    width = _checks.positive_int(width, "width")
    X = _checks.inputs(X)
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
    K = _checks.real_array(K, "K")
    P = K.shape[0]
    if K.ndim != 2 or K.shape != (P, P) or not np.allclose(K, K.T, atol=1e-6 * np.abs(K).max()):
        raise ValueError(f"K must be a symmetric (P, P) matrix; got shape {K.shape}")
    kappa = _checks.real_array(kappa, "kappa")
    if kappa.shape != (P,) * 4:
        raise ValueError(f"kappa must have shape {(P,) * 4}; got {kappa.shape}")
    y = _checks.targets(y, P)
    eta = _checks.nonnegative(eta, "eta")
    steps = _checks.positive_int(steps, "steps")
    _checks.choice(update, "update", ("exact", "flow"))
    K, kappa, y = (jnp.asarray(a, jnp.float64 if _checks._x64() else jnp.float32)
                   for a in (K, kappa, y))
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
    cov = jnp.einsum("tmab,abcd,tncd->tmn", J, kappa, J)
    cov = np.asarray(cov, np.float64)
    if not np.all(np.isfinite(cov)):
        raise ValueError("the lazy variance is not finite: eta is above the stable learning "
                         "rate 2 P / lambda_max(K) of kernel gradient descent")
    return np.diagonal(cov, axis1=1, axis2=2).copy(), cov


def init_kernel_covariance(X, *, depth, width, activation, n_seeds, key,
                           parameterization="mup"):
    """N Cov of the initial kernels across layers, from ``n_seeds`` sampled networks of width N.

    Returns a dict: ``phi``, ``g`` (L, P, P) the mean kernels and ``phi_cov``, ``g_cov``
    (L, L, P, P, P, P) with ``phi_cov[l, m, a, b, c, d] = N Cov[Phi^(l+1)_ab, Phi^(m+1)_cd]``
    (likewise for G). A covariance from E networks has relative error ~sqrt(2 / (E - 1)).
    """
    from . import nets
    n_seeds = _checks.positive_int(n_seeds, "n_seeds", minimum=3)
    width = _checks.positive_int(width, "width")
    X = _checks.inputs(X)
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
    V = 2.0 if activation == "linear" else 5.0
    l = np.arange(1, depth + 1)
    phi = V * np.minimum(l[:, None], l[None, :])
    g = V * np.minimum(depth + 1 - l[:, None], depth + 1 - l[None, :])
    return phi, g


# ----------------------------------------------------------------------------- the propagator
class Propagator(NamedTuple):
    """Leading-order fluctuations of the order parameters around the infinite-width solution.

    ``delta`` (T+1, P) = N Var[Delta_mu(t)] of the centred error, ``delta_cov`` (T+1, P, P) its
    covariance across examples, ``ntk`` (T+1, P, P) = N Var[K_mu nu(t)]; ``mean_delta`` (T+1, P)
    and ``mean_ntk`` (T+1, P, P) the infinite-width solution it linearises around; ``params``;
    ``delta_stderr`` (T+1, P) the Monte-Carlo standard error of ``delta`` (None when exact).
    """
    delta: np.ndarray
    delta_cov: np.ndarray
    ntk: np.ndarray
    mean_delta: np.ndarray
    mean_ntk: np.ndarray
    params: dict
    delta_stderr: np.ndarray | None = None


def _next_error(update, y, d, K, eta, moved_output):
    """Delta(t+1): ``"exact"`` y minus the network's centred output at t+1 (``moved_output()``,
    discrete gradient descent); ``"euler"`` Delta(t) - (eta / P) K(t) Delta(t)."""
    if update == "exact":
        return y - moved_output()
    return d - (eta / K.shape[0]) * K @ d


def _two_layer_linear(C, Kx, y, gamma0, eta, steps, update):
    """Delta(t) and K(t) of a two-layer linear muP network whose N neurons' sources
    xi_i = (u_i, r_i) (u_i = W_i x / sqrt(D) ~ N(0, Kx), r_i the readout weight) have empirical
    covariance C ((P+1, P+1); C = blockdiag(Kx, 1) at infinite width).

    Every neuron's fields are linear in its sources, h_i(t) = H_t xi_i and g_i(t) = g_t . xi_i,
    with H_{t+1} = H_t + c Kx Delta(t) g_t^T and g_{t+1} = g_t + c H_t^T Delta(t), c = gamma0
    eta / P; so the kernels are Phi(t) = H_t C H_t^T, G(t) = g_t^T C g_t, K(t) = G(t) Kx + Phi(t)
    and the network depends on its neurons only through C. ``update="exact"``: the network's
    output f(t) = H_t C g_t / gamma0 (centred), Delta = y - f; ``"euler"``: Delta(t+1) =
    Delta(t) - (eta / P) K(t) Delta(t).
    """
    P = Kx.shape[0]
    c = gamma0 * eta / P
    H0 = jnp.concatenate([jnp.eye(P, dtype=Kx.dtype), jnp.zeros((P, 1), Kx.dtype)], axis=1)
    g0 = jnp.zeros(P + 1, Kx.dtype).at[P].set(1.0)
    f0 = H0 @ C @ g0

    def step(carry, _):
        H, g, d = carry
        K = (g @ C @ g) * Kx + H @ C @ H.T
        H_next, g_next = H + c * jnp.outer(Kx @ d, g), g + c * H.T @ d
        d_next = _next_error(update, y, d, K, eta, lambda: (H_next @ C @ g_next - f0) / gamma0)
        return (H_next, g_next, d_next), (d, K)

    _, (delta, K) = jax.lax.scan(step, (H0, g0, y), None, length=steps + 1)
    return delta, K


def _two_layer_weighted(w, U, R, Kx, y, gamma0, eta, steps, activation, update):
    """Delta(t) and K(t) of a two-layer muP network whose neurons are the S samples (U_i, R_i)
    (first-layer pre-activations at initialisation ~ N(0, Kx), readout weights ~ N(0, 1)), each
    counted with weight w_i (averages are sum_i w_i f_i / S). With w = 1 and S = N this *is* a
    width-N network (its neurons interact only through Delta); as S grows, the DMFT. The fields
    follow {eq}`ch4-two-layer`: h(t+1) = h(t) + c Kx (Delta(t) * phi'(h(t)) z(t)),
    z(t+1) = z(t) + c Delta(t) . phi(h(t)), c = gamma0 eta / P."""
    from .dmft import _derivatives
    phi, dphi, _ = _derivatives(activation)
    S, P = U.shape
    c = gamma0 * eta / P
    avg = lambda F: jnp.tensordot(w, F, axes=1) / S
    f0 = avg(R[:, None] * phi(U)) / gamma0

    def step(carry, _):
        h, z, d = carry
        F, g = phi(h), dphi(h) * z[:, None]
        K = avg(g[:, :, None] * g[:, None, :]) * Kx + avg(F[:, :, None] * F[:, None, :])
        h_next, z_next = h + c * (g * d[None, :]) @ Kx, z + c * F @ d
        d_next = _next_error(update, y, d, K, eta,
                             lambda: avg(z_next[:, None] * phi(h_next)) / gamma0 - f0)
        return (h_next, z_next, d_next), (d, K)

    _, (delta, K) = jax.lax.scan(step, (U, R, y), None, length=steps + 1)
    return delta, K


def _two_layer_mc(Kx, y, gamma0, eta, steps, activation, update, samples, key, dt):
    """Two-layer nonlinear propagator by Monte Carlo: a width-N network is a function of the
    empirical measure of its neurons, so to leading order N Cov[Delta(t)] = Cov_xi[psi(xi)] with
    psi the influence function, psi(xi_i) = S dDelta(t)/dw_i at w = 1 (reverse mode through the
    causal pass). Returns (cov, var_ntk, mean_delta, mean_ntk, stderr)."""
    P = Kx.shape[0]
    k1, k2 = jax.random.split(key)
    lam, V = jnp.linalg.eigh(Kx)
    U = jax.random.normal(k1, (samples, P), dt) @ (V * jnp.sqrt(jnp.clip(lam, 0.0))).T
    R = jax.random.normal(k2, (samples,), dt)
    run = lambda w: _two_layer_weighted(w, U, R, Kx, y, gamma0, eta, steps, activation, update)
    ones = jnp.ones(samples, dt)
    mean_delta, mean_ntk = run(ones)
    psi_d, psi_K = jax.jacrev(run)(ones)                       # (T+1, P, S), (T+1, P, P, S)
    psi_d, psi_K = samples * psi_d, samples * psi_K
    dev_d = psi_d - psi_d.mean(-1, keepdims=True)
    dev_K = psi_K - psi_K.mean(-1, keepdims=True)
    cov = jnp.einsum("tms,tns->tmn", dev_d, dev_d) / (samples - 1)
    var_ntk = jnp.sum(dev_K ** 2, axis=-1) / (samples - 1)
    # standard error of a variance estimated from S samples: sqrt((E dev^4 - var^2) / S)
    var_d = jnp.mean(dev_d ** 2, axis=-1)
    stderr = jnp.sqrt(jnp.maximum(jnp.mean(dev_d ** 4, axis=-1) - var_d ** 2, 0.0) / samples)
    return cov, var_ntk, mean_delta, mean_ntk, stderr


def propagator(Kx, y, *, depth, activation, gamma0, eta, steps, update="exact", samples=None,
               key=None) -> Propagator:
    """N Var of the error and the NTK of width-N networks at leading order in 1/N: the
    linear response of the order parameters to the fluctuations of the single-site averages.

    Implemented so far: two-layer linear networks (``depth=1, activation="linear"``), exactly.
    There the network depends on its N neurons only through the empirical covariance C of
    their sources (see :func:`_two_layer_linear`), a Wishart matrix with
    N Cov[C_ab, C_cd] = C_ac C_bd + C_ad C_bc, so N Cov[Delta(t)] = J_t kappa J_t^T with
    J_t = dDelta(t)/dC (forward-mode autodiff through the causal recursion: no Hessian, no
    inverse). ``update`` as in :func:`widenets.dmft.deep_linear`.

    Two-layer nonlinear networks (``samples``, ``key``): by Monte Carlo. A width-N two-layer
    network is a function of the empirical measure of its N neurons (they interact only
    through Delta), so N Cov[Delta(t)] = Cov[psi] with psi the influence function of one neuron,
    obtained on S sampled neurons by reverse-mode differentiation with respect to their weights
    (:func:`_two_layer_mc`); ``delta_stderr`` is its Monte-Carlo error. Deeper networks are the
    next part of issue 11 and raise a ValueError for now.
    """
    Kx = _checks.kernel_matrix(Kx, "Kx")
    P = Kx.shape[0]
    y = _checks.targets(y, P)
    depth = _checks.positive_int(depth, "depth")
    _checks.choice(activation, "activation", _checks.ACTIVATIONS)
    gamma0 = _checks.nonnegative(gamma0, "gamma0", strict=True)
    eta = _checks.nonnegative(eta, "eta")
    steps = _checks.positive_int(steps, "steps")
    _checks.choice(update, "update", ("exact", "euler"))
    if depth != 1:
        raise ValueError("propagator: only two-layer networks (depth=1) are implemented so far "
                         f"(got depth={depth}); deep networks are in progress (issue 11)")
    dt = jnp.float64 if _checks._x64() else jnp.float32
    if activation != "linear" or samples is not None or key is not None:
        if samples is None or key is None:
            raise ValueError("the propagator of a nonlinear network is computed by Monte Carlo: "
                             "pass samples and key (with a linear activation they select the "
                             "Monte-Carlo route, a cross-check of the exact one)")
        if activation == "relu":
            raise ValueError(
                "activation='relu' is not supported by the Monte-Carlo propagator yet: its "
                "influence function needs phi'' = delta, which autodiff drops (measured: N Var of "
                "the final NTK 24 against 35 for networks); use tanh or erf")
        samples = _checks.positive_int(samples, "samples", minimum=16)
        key = _checks.prng_key(key, "key")
        _checks.fits(8.0 * (steps + 1) * P * P * samples * 3, "samples",
                     f"this Monte-Carlo propagator (samples={samples}, steps={steps}, P={P})")
        cov, var_ntk, mean_delta, mean_ntk, stderr = _two_layer_mc(
            jnp.asarray(Kx, dt), jnp.asarray(y, dt), jnp.asarray(gamma0, dt),
            jnp.asarray(eta, dt), steps, activation, update, samples, key, dt)
        return _propagator_result(cov, var_ntk, mean_delta, mean_ntk, stderr,
                                  dict(depth=depth, activation=activation, gamma0=gamma0,
                                       eta=eta, steps=steps, update=update, samples=samples))
    _checks.fits(8.0 * (steps + 1) * (P + 1) ** 2 * P * P * 3, "steps",
                 f"this propagator (steps={steps}, P={P})")
    Kx, y = jnp.asarray(Kx, dt), jnp.asarray(y, dt)
    C = jnp.zeros((P + 1, P + 1), dt).at[:P, :P].set(Kx).at[P, P].set(1.0)
    run = lambda C_: _two_layer_linear(C_, Kx, y, jnp.asarray(gamma0, dt), jnp.asarray(eta, dt),
                                       steps, update)
    mean_delta, mean_ntk = run(C)
    # J: derivatives with respect to the (P+1)^2 entries of C, in forward mode
    basis = jnp.eye((P + 1) ** 2, dtype=dt).reshape(-1, P + 1, P + 1)
    Jd, JK = jax.vmap(lambda E: jax.jvp(run, (C,), (E,))[1])(basis)      # (n, T+1, P[, P])
    kappa = (jnp.einsum("ac,bd->abcd", C, C) + jnp.einsum("ad,bc->abcd", C, C)).reshape(
        (P + 1) ** 2, (P + 1) ** 2)
    cov = jnp.einsum("itm,ij,jtn->tmn", Jd, kappa, Jd)
    var_ntk = jnp.einsum("itmn,ij,jtmn->tmn", JK, kappa, JK)
    return _propagator_result(cov, var_ntk, mean_delta, mean_ntk, None,
                              dict(depth=depth, activation=activation, gamma0=gamma0, eta=eta,
                                   steps=steps, update=update))


def _propagator_result(cov, var_ntk, mean_delta, mean_ntk, stderr, params):
    cov, var_ntk = np.asarray(cov, np.float64), np.asarray(var_ntk, np.float64)
    if not all(np.all(np.isfinite(a)) for a in (cov, var_ntk, mean_delta, mean_ntk)):
        import warnings
        warnings.warn("the propagator is not finite: eta is probably above the stable learning "
                      "rate, or gamma0 so large that the kernels grow without bound",
                      RuntimeWarning, stacklevel=3)
    return Propagator(delta=np.diagonal(cov, axis1=1, axis2=2).copy(), delta_cov=cov,
                      ntk=var_ntk, mean_delta=np.asarray(mean_delta),
                      mean_ntk=np.asarray(mean_ntk), params=params,
                      delta_stderr=None if stderr is None else np.asarray(stderr, np.float64))
