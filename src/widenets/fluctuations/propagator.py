"""The propagator: leading-order N Var of the order parameters from the linear response of the
DMFT (Bordelon & Pehlevan 2023)."""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks, _progress


# ----------------------------------------------------------------------------- the propagator
class MeanField(NamedTuple):
    """The infinite-width solution a propagator linearises around: ``delta`` (T+1, P),
    ``ntk`` (T+1, P, P), ``loss`` (T+1,)."""
    delta: np.ndarray
    ntk: np.ndarray
    loss: np.ndarray


class Propagator(NamedTuple):
    """Leading-order fluctuations of the order parameters around the infinite-width solution.

    ``delta`` (T+1, P) = N Var[Delta_mu(t)] of the centred error, ``delta_cov`` (T+1, P, P) its
    covariance across examples, ``ntk`` (T+1, P, P) = N Var[K_mu nu(t)]; ``mean_delta`` (T+1, P)
    and ``mean_ntk`` (T+1, P, P) the infinite-width solution it linearises around; ``params``;
    ``delta_stderr`` (T+1, P) and ``ntk_stderr`` (T+1, P, P) the Monte-Carlo standard errors of
    ``delta`` and ``ntk`` (None when exact): the sampling error of a variance over S neurons,
    from the influence functions' fourth moments (as :func:`variance_stderr`). The Monte-Carlo
    noise of the mean-field response the influence functions are pushed through is not in it:
    late in training the scatter of ``ntk`` over keys is ~1.3x the stated error (two-layer
    tanh, t = 30; 1.0x at t = 0). ``delta_sum_stderr`` (T+1,) the error of sum_mu ``delta``,
    the same way; against its scatter over 16 keys (two-layer tanh, P = 4, S = 2000, peak at
    t = 7) it is 1.5-2x the scatter up to the peak and 0.5-0.7x after t = 12: use it as an
    order of magnitude, not a calibrated error, late in training.
    With ``kernels=True`` (deep linear networks): ``phi`` (L, T+1, P, P) = N Var[Phi^l_mu nu(t, t)]
    and ``g`` (L, T+1) = N Var[G^l(t, t)] of every layer, and their means ``mean_phi``,
    ``mean_g``; otherwise None. ``converged`` is False (with a RuntimeWarning naming eta and
    the stable learning rate) when the mean diverged or a result is not finite.
    """
    delta: np.ndarray
    delta_cov: np.ndarray
    ntk: np.ndarray
    mean_delta: np.ndarray
    mean_ntk: np.ndarray
    params: dict
    delta_stderr: np.ndarray | None = None
    ntk_stderr: np.ndarray | None = None
    delta_sum_stderr: np.ndarray | None = None
    phi: np.ndarray | None = None
    g: np.ndarray | None = None
    mean_phi: np.ndarray | None = None
    mean_g: np.ndarray | None = None
    converged: bool = True

    @property
    def mean(self) -> MeanField:
        """The DMFT solution it linearises around (``delta``, ``ntk``, ``loss``)."""
        return MeanField(self.mean_delta, self.mean_ntk, 0.5 * np.mean(self.mean_delta ** 2, -1))


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

    def step(carry, t):
        _progress.tick(t, steps + 1)
        H, g, d = carry
        K = (g @ C @ g) * Kx + H @ C @ H.T
        H_next, g_next = H + c * jnp.outer(Kx @ d, g), g + c * H.T @ d
        d_next = _next_error(update, y, d, K, eta, lambda: (H_next @ C @ g_next - f0) / gamma0)
        return (H_next, g_next, d_next), (d, K)

    _, (delta, K) = jax.lax.scan(step, (H0, g0, y), jnp.arange(steps + 1))
    return delta, K


def _two_layer_weighted(w, U, R, Kx, y, gamma0, eta, steps, activation, update):
    """Delta(t) and K(t) of a two-layer muP network whose neurons are the S samples (U_i, R_i)
    (first-layer pre-activations at initialisation ~ N(0, Kx), readout weights ~ N(0, 1)), each
    counted with weight w_i (averages are sum_i w_i f_i / S). With w = 1 and S = N this *is* a
    width-N network (its neurons interact only through Delta); as S grows, the DMFT. The fields
    follow {eq}`ch4-two-layer`: h(t+1) = h(t) + c Kx (Delta(t) * phi'(h(t)) z(t)),
    z(t+1) = z(t) + c Delta(t) . phi(h(t)), c = gamma0 eta / P."""
    from ..dmft import _derivatives
    phi, dphi, _ = _derivatives(activation)
    S, P = U.shape
    c = gamma0 * eta / P
    avg = lambda F: jnp.tensordot(w, F, axes=1) / S
    f0 = avg(R[:, None] * phi(U)) / gamma0

    def step(carry, t):
        _progress.tick(t, steps + 1)
        h, z, d = carry
        F, g = phi(h), dphi(h) * z[:, None]
        K = avg(g[:, :, None] * g[:, None, :]) * Kx + avg(F[:, :, None] * F[:, None, :])
        h_next, z_next = h + c * (g * d[None, :]) @ Kx, z + c * F @ d
        d_next = _next_error(update, y, d, K, eta,
                             lambda: avg(z_next[:, None] * phi(h_next)) / gamma0 - f0)
        return (h_next, z_next, d_next), (d, K)

    _, (delta, K) = jax.lax.scan(step, (U, R, y), jnp.arange(steps + 1))
    return delta, K


def _neurons_given_error(D, U, R, Kx, gamma0, eta, activation):
    """Every neuron's own output z(t) . phi(h(t)) (T+1, S, P) and NTK contribution
    (g g^T) * Kx + F F^T (T+1, S, P, P), g = phi'(h) z, F = phi(h), when the network's error is
    the prescribed sequence ``D`` (T+1, P): the fields of {eq}`ch4-two-layer` driven by D."""
    from ..dmft import _derivatives
    phi, dphi, _ = _derivatives(activation)
    c = gamma0 * eta / Kx.shape[0]

    def step(carry, d):
        h, z = carry
        F, g = phi(h), dphi(h) * z[:, None]
        k = (g[:, :, None] * g[:, None, :]) * Kx + F[:, :, None] * F[:, None, :]
        return (h + c * (g * d[None, :]) @ Kx, z + c * F @ d), (z[:, None] * F, k)

    return jax.lax.scan(step, (U, R), D)[1]


@partial(jax.jit, static_argnames=("steps", "activation", "update", "samples"))
def _two_layer_mc(Kx, y, gamma0, eta, key, *, steps, activation, update, samples):
    """Two-layer nonlinear propagator by Monte Carlo: a width-N network is a function of the
    empirical measure of its neurons, so to leading order N Cov[Delta(t)] = Cov_xi[psi(xi)] with
    psi the influence function, psi(xi_i) = S dDelta(t)/dw_i at w = 1 (w_i the weight of
    sample i in every average). Returns (cov, var_ntk, mean_delta, mean_ntk, stderr), stderr
    = (that of delta, that of var_ntk).

    The neurons interact only through the error, so by the chain rule psi is neuron i's own
    contribution pushed through the mean-field response to the error: with o_i(t) its output
    and k_i(t) its NTK term (:func:`_neurons_given_error`), J_o(t, s) = d<o(t)>/dD(s) and
    J_K(t, s) = d<k(t)>/dD(s) (one forward-mode pass per (s, mu): P (T+1) of them, not one
    reverse pass per output), psi^K(t) = k_i(t) + sum_{s<t} J_K(t, s) psi^D(s), and psi^D
    solves a unit lower-triangular system: exact update, D(t) = y - (<o(t)> - <o(0)>) / gamma0,
    psi^D(t) = -(o_i(t) - o_i(0) + sum_{s<t} J_o(t, s) psi^D(s)) / gamma0; Euler,
    psi^D(t+1) = psi^D(t) - (eta / P) (psi^K(t) D(t) + K(t) psi^D(t)). One compiled program
    per (P, steps, samples, activation, update): gamma0, eta and the key are traced, so a
    sweep over them compiles once."""
    P, dt = Kx.shape[0], Kx.dtype
    T1, S = steps + 1, samples
    k1, k2 = jax.random.split(key)
    lam, V = jnp.linalg.eigh(Kx)
    U = jax.random.normal(k1, (S, P), dt) @ (V * jnp.sqrt(jnp.clip(lam, 0.0))).T
    R = jax.random.normal(k2, (S,), dt)
    mean_delta, mean_ntk = _two_layer_weighted(jnp.ones(S, dt), U, R, Kx, y, gamma0, eta, steps,
                                               activation, update)
    given = lambda D: _neurons_given_error(D, U, R, Kx, gamma0, eta, activation)
    o, k = given(mean_delta)                                     # (T1, S, P), (T1, S, P, P)
    J_o, J_K = jax.jacfwd(lambda D: tuple(x.mean(1) for x in given(D)))(mean_delta)
    eye = jnp.eye(T1 * P, dtype=dt)
    if update == "exact":
        M = eye + J_o.reshape(T1 * P, T1 * P) / gamma0
        rhs = -(o - o[:1]) / gamma0                              # (T1, S, P)
    else:
        c = eta / P
        C = c * jnp.einsum("tmnsv,tn->tmsv", J_K, mean_delta)    # (T1, P, T1, P)
        step = jnp.eye(P, dtype=dt)[None] - c * mean_ntk         # I - (eta / P) K(t)
        sub = jnp.zeros((T1, P, T1, P), dt).at[jnp.arange(1, T1), :, jnp.arange(T1 - 1), :].set(
            -step[:-1])
        M = eye + (jnp.zeros((T1, P, T1, P), dt).at[1:].set(C[:-1]) + sub).reshape(T1 * P, -1)
        rhs = jnp.zeros((T1, S, P), dt).at[1:].set(
            -c * jnp.einsum("tsmn,tn->tsm", k[:-1], mean_delta[:-1]))
    psi_d = jax.scipy.linalg.solve_triangular(
        M, rhs.transpose(0, 2, 1).reshape(T1 * P, S), lower=True,
        unit_diagonal=True).reshape(T1, P, S)
    psi_K = k.transpose(0, 2, 3, 1) + jnp.einsum("tmnsv,svi->tmni", J_K, psi_d)
    dev_d = psi_d - psi_d.mean(-1, keepdims=True)
    dev_K = psi_K - psi_K.mean(-1, keepdims=True)
    cov = jnp.einsum("tms,tns->tmn", dev_d, dev_d) / (S - 1)
    var_ntk = jnp.sum(dev_K ** 2, axis=-1) / (S - 1)
    # standard error of a variance estimated from S samples: sqrt((E dev^4 - var^2) / S)
    # (variance_stderr's formula at large S, in the compiled program)
    se = lambda d2: jnp.sqrt(jnp.maximum(jnp.mean(d2 ** 2, axis=-1)
                                         - jnp.mean(d2, axis=-1) ** 2, 0.0) / S)
    # (and of the sum over examples of the variances: the examples' errors are correlated)
    return cov, var_ntk, mean_delta, mean_ntk, (se(dev_d ** 2), se(dev_K ** 2),
                                                se(jnp.sum(dev_d ** 2, axis=1)))


def propagator(Kx, y, *, depth, activation, gamma0, eta, steps, update="exact", samples=None,
               key=None, method=None, kernels=False) -> Propagator:
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
    obtained on S sampled neurons as the derivative with respect to their weights, by the chain
    rule through the mean-field response to the error (:func:`_two_layer_mc`); ``delta_stderr``
    is its Monte-Carlo error.

    Deep linear networks (``depth >= 2``, or ``method="action"`` at any depth): exactly, from
    the Gaussian fluctuations of every layer's second moments around the DMFT,
    N Cov = (I - K H)^{-1} K with K the single-site (Isserlis) covariance and H the Hessian
    of the coupling between layers, applied by a terminating iteration (see
    :mod:`widenets.fluctuations.deep`). For one example with ``update="exact"`` the default
    is ``method="conditioning"`` instead (:mod:`widenets.fluctuations.conditioning`): the
    weight matrices are revealed one query at a time and the network is differentiated with
    respect to the O(L T^2) independent variables revealed, far faster at large T (depth 4,
    T = 300 in seconds); the two agree to round-off, and ``params["method"]`` says which
    answered. Deep nonlinear networks raise a ValueError (the reason is in its message).
    """
    Kx = _checks.kernel_matrix(Kx, "Kx")
    _checks.representable(Kx, "Kx", power=2)
    P = Kx.shape[0]
    y = _checks.targets(y, P)
    from ..dmft import MAX_DEPTH
    depth = _checks.positive_int(depth, "depth", maximum=MAX_DEPTH)
    _checks.choice(activation, "activation", _checks.ACTIVATIONS)
    gamma0 = _checks.nonnegative(gamma0, "gamma0", strict=True)
    eta = _checks.nonnegative(eta, "eta")
    steps = _checks.positive_int(steps, "steps")
    _checks.choice(update, "update", ("exact", "euler"))
    if method is not None:
        _checks.choice(method, "method", ("action", "conditioning"))
    dt = jnp.float64 if _checks._x64() else jnp.float32
    if method == "conditioning" and (depth < 2 or P != 1 or update != "exact"
                                     or activation != "linear"):
        raise ValueError("method='conditioning' is for deep (depth >= 2) linear networks on one "
                         "example (P = 1) with update='exact'; got "
                         f"depth={depth}, P={P}, update={update!r}, activation={activation!r}")
    if depth != 1 or method is not None:
        if activation != "linear":
            raise ValueError(
                f"the propagator of deep networks (depth={depth}) is implemented for "
                "activation='linear' only: the conditioning route needs a linear forward pass, "
                "and the action route for a nonlinear one would need Monte-Carlo estimates of "
                "the four-point moments and responses of every layer's fields at all pairs of "
                "times; measure deep nonlinear networks with fl.ensemble")
        if samples is not None or key is not None:
            raise ValueError("samples and key are for the Monte-Carlo propagator of two-layer "
                             "nonlinear networks; the deep linear propagator is exact")
        params = dict(depth=depth, activation=activation, gamma0=gamma0, eta=eta, steps=steps,
                      update=update)
        if method != "action" and P == 1 and update == "exact":
            res = _conditioning(Kx, y, gamma0, eta, depth, steps, dt,
                                _checks.flag(kernels, "kernels"), params)
            if res is not None:
                return res
        n = 2 * (steps + 1) * (P + 1)
        outputs = (steps + 1) * (P + P * P + (depth * (P * P + 1) if kernels else 0))
        _checks.fits(8.0 * depth * n * n * (outputs + 8),
                     "depth (or steps)" if depth > steps else "steps (or depth)",
                     f"this deep linear propagator (depth={depth}, steps={steps}, P={P})")
        from .deep import deep_linear_propagator
        cov, var_ntk, mean_delta, mean_ntk, kern = deep_linear_propagator(
            jnp.asarray(Kx, dt), jnp.asarray(y, dt), jnp.asarray(gamma0, dt),
            jnp.asarray(eta, dt), depth, steps, update,
            kernels=_checks.flag(kernels, "kernels"))
        res = _propagator_result(cov, var_ntk, mean_delta, mean_ntk, None,
                                 dict(params, method="action"))
        if kern is not None:
            res = res._replace(**{k: np.asarray(v, np.float64) for k, v in
                                  zip(("phi", "g", "mean_phi", "mean_g"), kern)})
        return res
    if kernels:
        raise ValueError("kernels=True (every layer's kernel variances) is available for the "
                         "deep linear propagator: pass method='action' for a two-layer network")
    if activation != "linear" or samples is not None or key is not None:
        if samples is None or key is None:
            raise ValueError("the propagator of a nonlinear network is computed by Monte Carlo: "
                             "pass samples and key (with a linear activation they select the "
                             "Monte-Carlo route, a cross-check of the exact one)")
        if activation == "relu":
            raise ValueError(
                "activation='relu' is not supported by the Monte-Carlo propagator: its "
                "influence function needs phi'' = delta, and even with delta resolved by a kernel "
                "estimate the final NTK's N Var comes out 25 against 37 for width-800 networks "
                "(neurons that cross the kink freeze, phi' = 0, and pile up just below it, which "
                "the linear response misses); use tanh or erf")
        samples = _checks.positive_int(samples, "samples", minimum=16)
        key = _checks.prng_key(key, "key")
        _checks.fits(8.0 * (steps + 1) * P * P * samples * 3, "samples",
                     f"this Monte-Carlo propagator (samples={samples}, steps={steps}, P={P})")
        with _progress.reporting("propagator (Monte Carlo)"):
            cov, var_ntk, mean_delta, mean_ntk, stderr = jax.block_until_ready(_two_layer_mc(
                jnp.asarray(Kx, dt), jnp.asarray(y, dt), jnp.asarray(gamma0, dt),
                jnp.asarray(eta, dt), key, steps=steps, activation=activation, update=update,
                samples=samples))
        return _propagator_result(cov, var_ntk, mean_delta, mean_ntk, stderr,
                                  dict(depth=depth, activation=activation, gamma0=gamma0,
                                       eta=eta, steps=steps, update=update, samples=samples))
    _checks.fits(8.0 * (steps + 1) * (P + 1) ** 2 * P * P * 3, "steps",
                 f"this propagator (steps={steps}, P={P})")
    with _progress.reporting("propagator"):
        cov, var_ntk, mean_delta, mean_ntk = jax.block_until_ready(_two_layer_linear_propagator(
            jnp.asarray(Kx, dt), jnp.asarray(y, dt), jnp.asarray(gamma0, dt),
            jnp.asarray(eta, dt), steps=steps, update=update))
    return _propagator_result(cov, var_ntk, mean_delta, mean_ntk, None,
                              dict(depth=depth, activation=activation, gamma0=gamma0, eta=eta,
                                   steps=steps, update=update))


@partial(jax.jit, static_argnames=("steps", "update"))
def _two_layer_linear_propagator(Kx, y, gamma0, eta, *, steps, update):
    """(cov, var_ntk, mean_delta, mean_ntk) of a two-layer linear network: N Cov[Delta(t)] =
    J_t kappa J_t^T with J_t = dDelta(t)/dC (forward mode) and kappa the Wishart covariance of
    C (see :func:`propagator`). One compiled program per (P, steps, update, dtype)."""
    P, dt = Kx.shape[0], Kx.dtype
    C = jnp.zeros((P + 1, P + 1), dt).at[:P, :P].set(Kx).at[P, P].set(1.0)
    run = lambda C_: _two_layer_linear(C_, Kx, y, gamma0, eta, steps, update)
    mean_delta, mean_ntk = run(C)
    # J: derivatives with respect to the (P+1)^2 entries of C, in forward mode
    basis = jnp.eye((P + 1) ** 2, dtype=dt).reshape(-1, P + 1, P + 1)
    Jd, JK = jax.vmap(lambda E: jax.jvp(run, (C,), (E,))[1])(basis)      # (n, T+1, P[, P])
    kappa = (jnp.einsum("ac,bd->abcd", C, C) + jnp.einsum("ad,bc->abcd", C, C)).reshape(
        (P + 1) ** 2, (P + 1) ** 2)
    cov = jnp.einsum("itm,ij,jtn->tmn", Jd, kappa, Jd)
    var_ntk = jnp.einsum("itmn,ij,jtmn->tmn", JK, kappa, JK)
    return cov, var_ntk, mean_delta, mean_ntk


def _conditioning(Kx, y, gamma0, eta, depth, steps, dt, kernels, params):
    """The deep linear propagator of one example by Gaussian conditioning of the weight
    matrices (:mod:`widenets.fluctuations.conditioning`); None when its check fails (then the
    action route answers)."""
    from .conditioning import one_example_propagator
    try:
        vd, vk, phi, g, outs, _ = one_example_propagator(
            jnp.asarray(Kx, dt), jnp.asarray(y, dt), jnp.asarray(gamma0, dt),
            jnp.asarray(eta, dt), depth, steps, kernels=kernels)
    except RuntimeError:
        return None
    col = lambda v: np.asarray(v, np.float64)[:, None, None]
    res = _propagator_result(col(vd), col(vk), np.asarray(outs[:, :1]), col(outs[:, 1]), None,
                             dict(params, method="conditioning"))
    if kernels:
        L = depth
        res = res._replace(phi=np.asarray(phi, np.float64)[..., None, None],
                           g=np.asarray(g, np.float64),
                           mean_phi=np.asarray(outs[:, 2:2 + L].T, np.float64)[..., None, None],
                           mean_g=np.asarray(outs[:, 2 + L:].T, np.float64))
    return res


def _propagator_result(cov, var_ntk, mean_delta, mean_ntk, stderr, params):
    cov, var_ntk = np.asarray(cov, np.float64), np.asarray(var_ntk, np.float64)
    mean_delta, mean_ntk = np.asarray(mean_delta, np.float64), np.asarray(mean_ntk, np.float64)
    finite = all(np.all(np.isfinite(a)) for a in (cov, var_ntk, mean_delta, mean_ntk))
    msg = _checks.divergence(0.5 * np.mean(mean_delta ** 2, -1), mean_ntk[0], params["eta"],
                             "the infinite-width solution the propagator linearises around",
                             f"the kernel grew during training (gamma0={params['gamma0']:g}): "
                             "lower gamma0 or eta")
    if msg is None and not finite:
        msg = ("the propagator is not finite although its mean is: the fluctuations overflowed "
               f"(gamma0={params['gamma0']:g}, steps={params['steps']}); lower gamma0 or steps")
    if msg is not None:
        import warnings
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return Propagator(delta=np.diagonal(cov, axis1=1, axis2=2).copy(), delta_cov=cov,
                      ntk=var_ntk, mean_delta=np.asarray(mean_delta, np.float64),
                      mean_ntk=np.asarray(mean_ntk, np.float64), params=params,
                      delta_stderr=None if stderr is None else np.asarray(stderr[0], np.float64),
                      ntk_stderr=None if stderr is None else np.asarray(stderr[1], np.float64),
                      delta_sum_stderr=None if stderr is None else np.asarray(stderr[2],
                                                                              np.float64),
                      converged=msg is None)
