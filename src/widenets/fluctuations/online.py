"""Online SGD on a linear teacher: the leading 1/N (width) and 1/B (batch) corrections to the
generalisation error of a two-layer linear muP network.

The task: inputs x ~ N(0, I_D), targets y = beta* . x / sqrt(D), a fresh batch of B examples at
every step. A linear network computes f(x) = beta . x / sqrt(D) (centred: beta - beta_0), so its
generalisation error is exact from the weights, E_x (f - y)^2 = |beta - beta*|^2 / D.

**Population gradient descent is full-batch GD on D examples.** The batch loss is
(1/2D) (beta - beta*)^T S (beta - beta*) with S = X^T X / B, E S = I. At B = infinity this is
full-batch gradient descent on the P = D "examples" x_mu = sqrt(D) e_mu (Kx = I_D,
f(x_mu) = beta_mu, targets beta*_mu), so the infinite-width dynamics are
``wn.dmft.deep_linear(np.eye(D), beta_star, ..., update="exact")`` and the leading width
fluctuations are ``wn.fluctuations.propagator(np.eye(D), beta_star, ..., update="exact")``.

**The network is a function of two random matrices.** Write every neuron's weights as linear
functions of its initial ones xi_i = (W_i(0), r_i(0)): W_i(t) = A_t xi_i, r_i(t) = a_t . xi_i.
Then beta(t) = A_t C a_t / gamma0 with C = (1/N) sum_i xi_i xi_i^T (Wishart, E C = I,
N Cov[C_ab, C_cd] = d_ac d_bd + d_ad d_bc), and gradient descent on a batch is

    A_{t+1} = A_t + c S_t Delta_t a_t^T,    a_{t+1} = a_t + c A_t^T S_t Delta_t,
    Delta_t = beta* - (beta(t) - beta(0)),   c = gamma0 eta / D,

with S_t the batch's input covariance (E S_t = I, B Cov[S_ij, S_kl] = d_ik d_jl + d_il d_jk,
independent across steps). C and S_t have exactly the mean of the infinite-width, infinite-batch
problem and covariances kappa / N and kappa_B / B, so to leading order

    E Delta = Delta_inf + b_N / N + b_B / B,     Cov Delta = Sigma_N / N + Sigma_B / B,
    b = (1/2) tr(d^2 Delta kappa),               Sigma = J kappa J^T,

with J and d^2 Delta the first and second derivatives of the causal recursion (forward-mode
autodiff, no inverse), and

    E |beta - beta*|^2 = |Delta_inf|^2 + [Sigma_par + (D-1) Sigma_perp + 2 Delta_inf b_par] / N
                         + [the same with the batch's Sigma_B, b_B] / B.

**Rotational symmetry: two directions suffice.** Rotate beta* onto e_1. A reflection of any
orthogonal coordinate leaves the problem unchanged, so Cov Delta = diag(Sigma_par, Sigma_perp,
..., Sigma_perp) and the orthogonal components have mean 0 (no bias). To second order each
orthogonal direction k feeds Delta only through the entries (k, 1) and (k, readout) of C and
(k, 1) of S_t (entries (k, k) and (k, j) multiply errors that vanish at infinite width), and
kappa pairs each entry only with itself or its transpose, so every orthogonal direction adds
the same amount: the D-dimensional problem is the 2-dimensional one {beta*, one orthogonal
direction} (with the learning-rate constant c = gamma0 eta / D of the real D), whose bias of
the parallel component is split into the part from direction 1 alone and the part from
direction 2, the latter counted D - 1 times. The tests check this against the full
D-dimensional propagator and second-order expansion at small D, and against networks.

Only two-layer linear networks (depth=1) so far; deeper ones need the deep propagator.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks


class OnlineError(NamedTuple):
    """Generalisation error of online SGD on a linear teacher, and its leading corrections.

    All arrays have shape (steps + 1,), entry 0 at initialisation. Errors are per dimension,
    E|beta - beta*|^2 / D = E_x (f(x) - y(x))^2.

    ``error_inf``: the infinite-width, infinite-batch error |Delta_inf|^2 / D.
    ``delta_inf``: Delta_inf along beta* (the orthogonal components vanish).
    ``width_par`` / ``width_perp``: N Var of Delta along beta* / along one orthogonal direction.
    ``width_bias``: N (E Delta_par - Delta_inf), the O(1/N) bias along beta*.
    ``width_correction``: the coefficient of 1/N in the error,
    (width_par + (D-1) width_perp + 2 delta_inf width_bias) / D.
    ``batch_par``, ``batch_perp``, ``batch_bias``, ``batch_correction``: the same for B times the
    SGD noise of batches of B fresh examples (coefficient of 1/B).
    ``error``: the prediction error_inf + width_correction / N + batch_correction / B at the
    requested ``width`` and ``batch_size`` (a missing one counts as infinite).
    """
    error: np.ndarray
    error_inf: np.ndarray
    delta_inf: np.ndarray
    width_par: np.ndarray
    width_perp: np.ndarray
    width_bias: np.ndarray
    width_correction: np.ndarray
    batch_par: np.ndarray
    batch_perp: np.ndarray
    batch_bias: np.ndarray
    batch_correction: np.ndarray
    params: dict


def _dynamics(C, S, y, gamma0, c, center):
    """Delta(t), t = 0..T (shape (T+1, n)), of a two-layer linear network whose neurons'
    initial weights have empirical covariance C ((n+1, n+1); last index the readout) trained on
    the batch input covariances S ((T, n, n)) toward the teacher y = beta* (n,)."""
    n = y.shape[0]
    A0 = jnp.concatenate([jnp.eye(n, dtype=y.dtype), jnp.zeros((n, 1), y.dtype)], axis=1)
    a0 = jnp.zeros(n + 1, y.dtype).at[n].set(1.0)
    beta0 = A0 @ C @ a0 / gamma0
    shift = beta0 if center else jnp.zeros_like(beta0)

    def step(carry, S_t):
        A, a, d = carry
        g = S_t @ d
        A1, a1 = A + c * jnp.outer(g, a), a + c * A.T @ g
        d1 = y - (A1 @ C @ a1 / gamma0 - shift)
        return (A1, a1, d1), d

    (_, _, d_end), ds = jax.lax.scan(step, (A0, a0, y - (beta0 - shift)), S)
    return jnp.concatenate([ds, d_end[None]])


def _wishart_kappa(m, dt):
    """m^2 x m^2 matrix: (N or B) Cov of the entries of a Wishart matrix with identity mean."""
    I = jnp.eye(m, dtype=dt)
    return (jnp.einsum("ac,bd->abcd", I, I) + jnp.einsum("ad,bc->abcd", I, I)).reshape(m * m,
                                                                                       m * m)


def _moments(y, gamma0, c, S0, center):
    """Mean, covariances and biases of Delta to leading order (see the module docstring).

    Returns mean (T+1, n); width: cov (T+1, n, n) and the bias contributions per entry of C,
    ``bias_entries`` (T+1, n, (n+1)^2); batch: cov (T+1, n, n) and bias contributions per
    entry of S, (T+1, n, n^2) (summed over steps)."""
    n, dt = y.shape[0], y.dtype
    T = S0.shape[0]
    C0 = jnp.eye(n + 1, dtype=dt)
    mean = _dynamics(C0, S0, y, gamma0, c, center)
    # width: derivatives with respect to the (n+1)^2 entries of C
    fC = lambda v: _dynamics(v.reshape(n + 1, n + 1), S0, y, gamma0, c, center)
    vC = C0.reshape(-1)
    JC = jax.jacfwd(fC)(vC)                                        # (T+1, n, m)
    HC = jax.jacfwd(jax.jacfwd(fC))(vC)                            # (T+1, n, m, m)
    kC = _wishart_kappa(n + 1, dt)
    cov_N = jnp.einsum("tai,ij,tbj->tab", JC, kC, JC)
    bias_N = 0.5 * jnp.einsum("taij,ij->tai", HC, kC)              # per first entry i
    # batch: derivatives with respect to the n^2 entries of every S_t
    fS = lambda v: _dynamics(C0, v.reshape(T, n, n), y, gamma0, c, center)
    vS = S0.reshape(-1)
    JS = jax.jacfwd(fS)(vS).reshape(T + 1, n, T, n * n)           # (T+1, n, T, n^2)
    kS = _wishart_kappa(n, dt)
    cov_B = jnp.einsum("tasi,ij,tbsj->tab", JS, kS, JS)

    def hess_at(s):                                               # d^2 Delta / dS_s dS_s
        f = lambda e: _dynamics(C0, S0.at[s].add(e.reshape(n, n)), y, gamma0, c, center)
        return jax.jacfwd(jax.jacfwd(f))(jnp.zeros(n * n, dt))   # (T+1, n, n^2, n^2)

    HS = jax.lax.map(hess_at, jnp.arange(T))                       # (T, T+1, n, n^2, n^2)
    bias_B = 0.5 * jnp.einsum("staij,ij->tai", HS, kS)
    return mean, cov_N, bias_N, cov_B, bias_B


def _second_order(beta_star, *, gamma0, eta, steps, D=None, center=True):
    """Leading-order moments of Delta for the full problem of dimension n = len(beta_star)
    (``D`` sets c = gamma0 eta / D; default n). Returns numpy arrays: mean (T+1, n), width
    cov (T+1, n, n), width bias (T+1, n), batch cov (T+1, n, n), batch bias (T+1, n)."""
    y = jnp.asarray(beta_star, jnp.float64 if _checks._x64() else jnp.float32)
    n = y.shape[0]
    D = n if D is None else D
    dt = y.dtype
    S0 = jnp.broadcast_to(jnp.eye(n, dtype=dt), (steps, n, n))
    out = _second_order_jit(y, jnp.asarray(gamma0, dt), jnp.asarray(gamma0 * eta / D, dt), S0,
                            bool(center))
    mean, cov_N, bias_N, cov_B, bias_B = (np.asarray(a, np.float64) for a in out)
    return mean, cov_N, bias_N.sum(-1), cov_B, bias_B.sum(-1)


_second_order_jit = jax.jit(_moments, static_argnums=(4,))


def online_error(D, beta_star_norm, *, width=None, gamma0, eta, steps, batch_size=None,
                 depth=1, center=True) -> OnlineError:
    """The generalisation error E|beta - beta*|^2 / D of width-N two-layer linear muP networks
    trained by online SGD (fresh batches of ``batch_size`` Gaussian inputs; None: the population
    gradient) on the teacher y = beta* . x / sqrt(D), to leading order in 1/N and 1/B.

    Args:
      D: input dimension. beta_star_norm: |beta*| (the theory depends on beta* only through
        its norm).
      width: N (None: infinite). batch_size: B (None: infinite, population gradient descent).
      gamma0, eta, steps: as in :func:`widenets.nets.train_online` (learning rate
        ``eta * gamma0^2 * N``; the exact discrete-time dynamics, no Euler approximation).
      depth: only 1 (two-layer networks) so far. center: the network's output minus its value at
        initialisation (as the networks of :func:`widenets.nets.train_online` with
        ``center=True``); False keeps the initial function, whose variance D / (gamma0^2 N)
        then adds to the error at t = 0.

    Cost: independent of D (the problem is reduced to two directions by rotational symmetry);
    O(steps^2) for the batch terms (measured: 2.6 s at steps=100, 3.7 s at steps=400, mostly
    compilation).
    """
    D = _checks.positive_int(D, "D")
    norm = _checks.nonnegative(beta_star_norm, "beta_star_norm")
    _checks.representable(norm, "beta_star_norm", power=4)   # (the error holds |beta*|^4 terms)
    gamma0 = _checks.nonnegative(gamma0, "gamma0", strict=True)
    eta = _checks.nonnegative(eta, "eta")
    steps = _checks.positive_int(steps, "steps")
    depth = _checks.positive_int(depth, "depth")
    center = _checks.flag(center, "center")
    if depth != 1:
        raise ValueError(f"depth must be 1 (two-layer networks): the theory of deeper networks "
                         f"needs the deep propagator, which is not available yet; got {depth}")
    if width is not None:
        width = _checks.positive_int(width, "width")
    if batch_size is not None:
        batch_size = _checks.positive_int(batch_size, "batch_size")
    # memory of the batch Hessians: steps * (steps + 1) * 2 * 16 floats (twice)
    _checks.fits(8.0 * 2 * steps * (steps + 1) * 2 * 16 * 4, "steps",
                 f"the online-SGD theory at steps={steps}")
    mean, cov_N, bN, cov_B, bB = _reduced(norm, gamma0, eta, steps, D, center)
    d_inf = mean[:, 0]
    err_inf = np.sum(mean ** 2, -1) / D
    w_par, w_perp = cov_N[:, 0, 0], cov_N[:, 1, 1]
    b_par, b_perp = cov_B[:, 0, 0], cov_B[:, 1, 1]
    w_corr = (w_par + (D - 1) * w_perp + 2 * d_inf * bN) / D
    b_corr = (b_par + (D - 1) * b_perp + 2 * d_inf * bB) / D
    error = err_inf + (0.0 if width is None else w_corr / width) \
        + (0.0 if batch_size is None else b_corr / batch_size)
    out = OnlineError(error=error, error_inf=err_inf, delta_inf=d_inf, width_par=w_par,
                      width_perp=w_perp, width_bias=bN, width_correction=w_corr,
                      batch_par=b_par, batch_perp=b_perp, batch_bias=bB, batch_correction=b_corr,
                      params=dict(D=D, beta_star_norm=norm, width=width, gamma0=gamma0, eta=eta,
                                  steps=steps, batch_size=batch_size, depth=depth, center=center))
    if not all(np.all(np.isfinite(a)) for a in out[:-1]):
        import warnings
        warnings.warn("online_error: the theory is not finite: eta is probably above the stable "
                      "learning rate (about D / 2 at small gamma0), or gamma0 * |beta*| so large "
                      "that the weights grow without bound", RuntimeWarning, stacklevel=2)
    return out


def online_networks(D, beta_star, *, width, gamma0, eta, steps, batch_size, n_seeds, key,
                    depth=1, per_call=100, **kwargs):
    """The mean generalisation error <epsilon(t)> (steps + 1,) of ``n_seeds`` networks trained
    by online SGD (:func:`widenets.nets.train_online`, same arguments and ``kwargs``) and its
    standard error, the networks trained ``per_call`` at a time with the keys
    ``jax.random.split(key, n_calls)``: one compiled program per width, steps, batch size and
    ``per_call``, shared by ensembles of every size (a live panel of 100 networks and a figure's
    thousand). Returns ``(mean, stderr)``, float64."""
    from .. import nets
    n_seeds = _checks.positive_int(n_seeds, "n_seeds", minimum=2)
    per_call = min(_checks.positive_int(per_call, "per_call"), n_seeds)
    sizes = [per_call] * (n_seeds // per_call) + ([n_seeds % per_call] if n_seeds % per_call
                                                   else [])
    keys = jax.random.split(_checks.prng_key(key, "key"), len(sizes))
    from .._progress import track
    err = np.concatenate([np.asarray(nets.train_online(
        D, beta_star, depth=depth, width=width, gamma0=gamma0, eta=eta, steps=steps,
        batch_size=batch_size, key=k, n_seeds=int(b), **kwargs).error, np.float64)
        for k, b in track(list(zip(keys, sizes)), n_seeds, "online_networks",
                          size=lambda kb: int(kb[1]))])
    return err.mean(0), err.std(0, ddof=1) / np.sqrt(n_seeds)


def _reduced(norm, gamma0, eta, steps, D, center):
    """The two-direction problem: mean (T+1, 2), width cov, the full-D width bias of the
    parallel component (T+1,), batch cov, batch bias (T+1,)."""
    from jax.experimental import enable_x64
    with enable_x64():
        dt = jnp.float64
        y = jnp.asarray([norm, 0.0], dt)
        S0 = jnp.broadcast_to(jnp.eye(2, dtype=dt), (steps, 2, 2))
        out = _second_order_jit(y, jnp.asarray(gamma0, dt), jnp.asarray(gamma0 * eta / D, dt),
                                S0, bool(center))
        mean, cov_N, bias_N, cov_B, bias_B = (np.asarray(a, np.float64) for a in out)
    # entries of C (3x3, indices 0: beta*, 1: orthogonal, 2: readout) and S (2x2) that
    # involve the orthogonal direction: each of the D - 1 orthogonal directions adds these
    ortho_C = np.zeros((3, 3), bool)
    ortho_C[1, :] = ortho_C[:, 1] = True
    ortho_S = np.zeros((2, 2), bool)
    ortho_S[1, :] = ortho_S[:, 1] = True
    wC = np.where(ortho_C.reshape(-1), D - 1.0, 1.0)
    wS = np.where(ortho_S.reshape(-1), D - 1.0, 1.0)
    bN = bias_N[:, 0, :] @ wC
    bB = bias_B[:, 0, :] @ wS
    return mean, cov_N, bN, cov_B, bB
