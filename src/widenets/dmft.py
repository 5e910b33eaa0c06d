"""Infinite-width dynamical mean field theory (DMFT) of kernel evolution.

Deep linear networks (Bordelon & Pehlevan 2022, deep linear section), in the mean-field /
muP parameterisation of DESIGN.md. At infinite width every neuron of layer l carries the
single-site fields (t = 0..T, samples mu = 1..P)::

    h^l(t, mu) = u^l(t, mu) + sum_{s<t} a^l((t, mu), s) g^l(s)
    g^l(t)     = r^l(t)     + sum_{s<t, nu} b^l(t, (s, nu)) h^l(s, nu)

with Gaussian sources ``u^l ~ N(0, Phi^{l-1})`` and ``r^l ~ N(0, G^{l+1})`` (``Phi^0 = Kx`` at all
times, ``G^{L+1} = 1``), and the strictly causal operators

    a^l((t,mu), s)  = R_h^{l-1}((t,mu), s) + gamma0 (eta/P) sum_nu Phi^{l-1}_{mu nu}(t, s) Delta_nu(s)
    b^l(t, (s,nu))  = R_g^{l+1}(t, (s,nu)) + gamma0 (eta/P) G^{l+1}(t, s) Delta_nu(s)

where ``R_h^l = dh^l / dr^l`` and ``R_g^l = dg^l / du^l`` are the response functions (the A, B terms
of the paper, absent for l = 1 and l = L). For a linear network ``g^l`` does not depend on the
sample, so ``G^l(t, s)`` is a (T+1) x (T+1) matrix. The kernels close the equations,

    Phi^l = <h^l h^l^T>,   G^l = <g^l g^l^T>,   K(t) = sum_{l=0}^{L} G^{l+1}(t,t) Phi^l(t,t),

and the training error follows ``Delta(t+1) = Delta(t) - (eta/P) K(t) Delta(t)`` (Euler, the default).

Everything is causal: the fields at time t need only kernels, responses and errors at earlier
times, and within one time step the backward fields g are computed from the top layer down and
the forward fields h from the bottom up. :func:`deep_linear` therefore solves the equations
*exactly in one forward pass over time* (``lax.scan``) instead of iterating a fixed point; the
returned ``residuals`` measure how well the answer satisfies the dense fixed-point equations
(evaluated independently by :func:`_dense_map`), and ``method="picard"`` solves those dense
equations by damped iteration instead (the textbook approach, kept as a cross-check).
"""
from __future__ import annotations

import warnings
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks


class DMFTSolution(NamedTuple):
    """Solution of the DMFT equations (shapes for P samples, T = steps, L = depth).

    ``delta`` (T+1, P), ``loss`` (T+1,), ``ntk`` (T+1, P, P);
    ``phi`` (L, T+1, P, T+1, P) feature kernels Phi^l(t, s), l = 1..L;
    ``g`` gradient kernels G^l(t, s), l = 1..L: (L, T+1, T+1) for linear networks;
    ``residuals`` history of the self-consistency residual; ``converged`` whether the last one
    is below ``tol``; ``method`` and ``params`` describe the solve.
    """
    delta: jax.Array
    loss: jax.Array
    ntk: jax.Array
    phi: jax.Array
    g: jax.Array
    residuals: np.ndarray
    converged: bool
    method: str
    params: dict


def _validate(Kx, y, depth, gamma0, eta, steps):
    Kx = _checks.kernel_matrix(Kx, "Kx")
    y = _checks.targets(y, Kx.shape[0], "y")
    depth = _checks.positive_int(depth, "depth")
    gamma0 = _checks.nonnegative(gamma0, "gamma0")
    eta = _checks.nonnegative(eta, "eta")
    steps = _checks.positive_int(steps, "steps")
    dtype = jnp.zeros(()).dtype   # float64 when x64 is enabled
    return jnp.asarray(Kx, dtype), jnp.asarray(y, dtype), depth, gamma0, eta, steps


# ----------------------------------------------------------------------------- causal solver
@partial(jax.jit, static_argnames=("depth", "steps", "responses", "update"))
def _causal_solve(Kx, y, gamma0, eta, *, depth, steps, responses=True, update="euler"):
    """One forward pass over time: returns (delta, ntk, Phi, G, Hr, Gu), all exact."""
    P, L, T1 = Kx.shape[0], depth, steps + 1
    TP, dt = T1 * P, Kx.dtype
    c = eta / P
    t_of = jnp.arange(TP) // P                      # time of a flattened (s, nu) index
    tidx = jnp.arange(T1)
    ones = jnp.ones((T1, T1), dt)

    def rows(M, t):
        return jax.lax.dynamic_slice_in_dim(M, t * P, P, axis=0)

    def put_rows(M, t, v):
        return jax.lax.dynamic_update_slice_in_dim(M, v, t * P, axis=0)

    def cols(M, t):
        return jax.lax.dynamic_slice_in_dim(M, t * P, P, axis=1)

    def put_cols(M, t, v):
        return jax.lax.dynamic_update_slice_in_dim(M, v, t * P, axis=1)

    # Phi^0((t,mu),(s,nu)) = Kx[mu, nu] at all times: products with it never touch a dense
    # (TP, TP) matrix (for the layers above, Phi^{l-1} is the solver's own state)
    def phi_dn_row(Phi, l, v):          # v @ Phi^{l-1}, v: (TP,)
        return jnp.tile(v.reshape(T1, P).sum(0) @ Kx, T1) if l == 0 else v @ Phi[l - 1]

    def phi_dn_rows(Phi, l, t):         # Phi^{l-1}[(t, .), :], (P, TP)
        return jnp.tile(Kx, (1, T1)) if l == 0 else rows(Phi[l - 1], t)

    def phi_dn_cols(Phi, l, t):         # Phi^{l-1}[:, (t, .)], (TP, P)
        return jnp.tile(Kx, (T1, 1)) if l == 0 else cols(Phi[l - 1], t)

    z = lambda *shape: jnp.zeros(shape, dt)
    state0 = dict(
        Phi=[z(TP, TP) for _ in range(L)], G=[z(T1, T1) for _ in range(L)],
        A=[z(TP, T1) for _ in range(L)], Gr=[z(T1, T1) for _ in range(L)],
        Gu=[z(T1, TP) for _ in range(L)], Hr=[z(TP, T1) for _ in range(L)],
        X=[z(T1, TP) for _ in range(L)], delta=z(T1 + 1, P).at[0].set(y), ntk=z(T1, P, P))

    def step(s, t):
        Phi, G, A, Gr, Gu, Hr, X = (list(s[k]) for k in ("Phi", "G", "A", "Gr", "Gu", "Hr", "X"))
        delta = s["delta"]
        past_h = (t_of < t).astype(dt)
        upto_h, upto = t_of <= t, tidx <= t
        dflat = delta[:T1].reshape(-1) * past_h     # Delta_nu(s) on (s, nu), zero for s >= t
        e_t = (tidx == t).astype(dt)
        # backward fields g^l(t), from the readout down
        for l in reversed(range(L)):
            G_up = ones if l == L - 1 else G[l + 1]
            b_row = gamma0 * c * jnp.repeat(G_up[t], P) * dflat
            if responses and l < L - 1:
                b_row = b_row + Gu[l + 1][t]
            ba = b_row @ A[l]                                   # (T1,)
            Gr[l] = Gr[l].at[t].set(e_t + ba @ Gr[l])
            Gu[l] = Gu[l].at[t].set(b_row + ba @ Gu[l])
            x_row = phi_dn_row(Phi, l, Gu[l][t])   # X(t, .) = <g(t) u^T>, valid on columns < t
            X[l] = X[l].at[t].set(x_row)       # (column block t is filled in the forward pass)
            g_row = (Gr[l][t] @ G_up) @ Gr[l].T + x_row @ Gu[l].T
            g_row = jnp.where(upto, g_row, G[l][t])
            G[l] = G[l].at[t].set(g_row).at[:, t].set(g_row)
        # forward fields h^l(t), from the input up
        for l in range(L):
            phi_dn_t = phi_dn_rows(Phi, l, t)                   # (P, TP)
            a_t = gamma0 * c * (phi_dn_t * dflat[None, :]).reshape(P, T1, P).sum(-1)
            if responses and l > 0:
                a_t = a_t + rows(Hr[l - 1], t)
            A[l] = put_rows(A[l], t, a_t)
            Hr[l] = put_rows(Hr[l], t, a_t @ Gr[l])
            x_col = Gu[l] @ phi_dn_cols(Phi, l, t)              # X(., (t, mu)), (T1, P)
            X[l] = put_cols(X[l], t, x_col)
            # Phi^l = Phi^{l-1} + a X + (a X)^T + a G^l a^T, row t (the last two terms share A^T)
            phi_t = phi_dn_t + a_t @ X[l] + (x_col.T + a_t @ G[l]) @ A[l].T
            phi_t = jnp.where(upto_h[None, :], phi_t, 0.0)
            blk = cols(phi_t, t)
            phi_t = put_cols(phi_t, t, (blk + blk.T) / 2)
            Phi[l] = put_cols(put_rows(Phi[l], t, phi_t), t, phi_t.T)
        # the NTK and the error dynamics
        K_t = G[0][t, t] * Kx
        for l in range(L):
            g_up = 1.0 if l == L - 1 else G[l + 1][t, t]
            K_t = K_t + g_up * cols(rows(Phi[l], t), t)
        d_t = delta[t]
        if update == "euler":
            delta = delta.at[t + 1].set(d_t - c * K_t @ d_t)
        else:  # exact discrete GD: f(t) = <g^L(t) h^L(t)> / gamma0 at infinite width
            f_t = (cols(X[L - 1], t)[t] + rows(A[L - 1], t) @ G[L - 1][t]) / gamma0
            d_t = jnp.where(t == 0, y, y - f_t)
            delta = delta.at[t].set(d_t)
            delta = delta.at[t + 1].set(d_t)      # provisional; overwritten at t + 1
        out = dict(Phi=Phi, G=G, A=A, Gr=Gr, Gu=Gu, Hr=Hr, X=X, delta=delta,
                   ntk=s["ntk"].at[t].set(K_t))
        return out, None

    final, _ = jax.lax.scan(step, state0, jnp.arange(T1))
    return (final["delta"][:T1], final["ntk"], jnp.stack(final["Phi"]), jnp.stack(final["G"]),
            jnp.stack(final["Hr"]), jnp.stack(final["Gu"]))


# ----------------------------------------------------------------------------- dense map
@partial(jax.jit, static_argnames=("responses",))
def _dense_map(Kx, y, gamma0, eta, delta, Phi, G, Hr, Gu, *, responses=True):
    """One Jacobi sweep of the dense fixed-point equations (triangular solves, no inverses).

    Takes all fields at once and returns updated ``(delta, ntk, Phi, G, Hr, Gu)``; the
    solution of the DMFT is its fixed point.
    """
    L, T1, P = Phi.shape[0], G.shape[1], Kx.shape[0]
    TP, dt = T1 * P, Kx.dtype
    c = eta / P
    t_of = jnp.arange(TP) // P
    strict_h = (t_of[None, :] < t_of[:, None]).astype(dt)            # (TP, TP): s < t
    strict_hg = (jnp.arange(T1)[None, :] < t_of[:, None]).astype(dt)  # (TP, T1)
    strict_gh = (t_of[None, :] < jnp.arange(T1)[:, None]).astype(dt)  # (T1, TP)
    Phi0 = jnp.tile(Kx, (T1, T1))
    ones = jnp.ones((T1, T1), dt)
    dflat = delta.reshape(-1)
    I = jnp.eye(T1, dtype=dt)
    new = dict(Phi=[], G=[], Hr=[], Gu=[])
    for l in range(L):
        Phi_dn = Phi0 if l == 0 else Phi[l - 1]
        G_up = ones if l == L - 1 else G[l + 1]
        A = gamma0 * c * (Phi_dn * (dflat[None, :] * strict_h)).reshape(TP, T1, P).sum(-1)
        B = gamma0 * c * jnp.repeat(G_up, P, axis=1) * dflat[None, :] * strict_gh
        if responses and l > 0:
            A = A + Hr[l - 1] * strict_hg
        if responses and l < L - 1:
            B = B + Gu[l + 1] * strict_gh
        Gr = jax.scipy.linalg.solve_triangular(I - B @ A, I, lower=True, unit_diagonal=True)
        Gu_l = Gr @ B
        X = Gu_l @ Phi_dn
        G_l = Gr @ G_up @ Gr.T + X @ Gu_l.T
        AX = A @ X
        new["Phi"].append(Phi_dn + AX + AX.T + A @ G_l @ A.T)
        new["G"].append(G_l)
        new["Hr"].append(A @ Gr)
        new["Gu"].append(Gu_l)
    Phi_n, G_n = jnp.stack(new["Phi"]), jnp.stack(new["G"])
    diag = lambda M: M.reshape(T1, P, T1, P)[jnp.arange(T1), :, jnp.arange(T1), :]   # (T1, P, P)
    gdiag = jnp.diagonal(G_n, axis1=1, axis2=2)                                     # (L, T1)
    g_up = jnp.concatenate([gdiag[1:], jnp.ones((1, T1), dt)])                      # G^{l+1}(t,t)
    K = gdiag[0][:, None, None] * Kx[None] + sum(g_up[l][:, None, None] * diag(Phi_n[l])
                                                   for l in range(L))

    def euler(d, Kt):
        return d - c * Kt @ d, d

    _, delta_n = jax.lax.scan(euler, y, K)
    return delta_n, K, Phi_n, G_n, jnp.stack(new["Hr"]), jnp.stack(new["Gu"])


def _residual(old, new):
    """Largest relative change over the fields (delta, Phi, G): max |new - old| / max |old|."""
    r = 0.0
    for o, n in zip(old, new):
        r = max(r, float(jnp.max(jnp.abs(n - o)) / jnp.maximum(jnp.max(jnp.abs(o)), 1e-30)))
    return r


# ----------------------------------------------------------------------------- public API
def deep_linear(Kx, y, *, depth, gamma0, eta, steps, method="causal", responses=True,
                update="euler", tol=None, damping=0.5, max_iter=200) -> DMFTSolution:
    """Solve the DMFT of a depth-L linear network trained by gradient descent (see module doc).

    Args:
      Kx: input Gram matrix ``X X^T / D`` (P, P), symmetric positive semi-definite.
      y: targets (P,).
      depth: number of hidden layers L >= 1. gamma0: richness >= 0 (0 = static NTK).
      eta: learning rate (DMFT units). steps: number of steps T (records have T+1 entries).
      method: ``"causal"`` (exact, one pass over time; default) or ``"picard"`` (damped
        fixed-point iteration of the dense equations; slower, for cross-checks).
      responses: False drops the response functions A, B (the gradient-independence ansatz).
      update: ``"euler"`` (``Delta(t+1) = Delta(t) - (eta/P) K(t) Delta(t)``, the default) or
        ``"exact"`` (the infinite-width output of discrete gradient descent, needs gamma0 > 0).
      tol: self-consistency tolerance (default 1e-9 in float64, 1e-4 in float32).
      damping: Picard mixing weight of the new iterate. max_iter: Picard iteration cap.
    """
    Kx, y, depth, gamma0, eta, steps = _validate(Kx, y, depth, gamma0, eta, steps)
    _checks.choice(method, "method", ("causal", "picard"))
    _checks.choice(update, "update", ("euler", "exact"))
    if update == "exact" and gamma0 == 0:
        raise ValueError("gamma0 must be > 0 for update='exact' (at gamma0 = 0 use 'euler', "
                         "which is then exact)")
    if method == "picard" and update == "exact":
        raise ValueError("update='exact' is only available with method='causal'")
    if not 0 < damping <= 1:
        raise ValueError(f"damping must be in (0, 1]; got {damping!r}")
    x64 = Kx.dtype == jnp.float64
    tol = (1e-9 if x64 else 1e-4) if tol is None else _checks.nonnegative(tol, "tol")
    g0, et = jnp.asarray(gamma0, Kx.dtype), jnp.asarray(eta, Kx.dtype)
    args = dict(responses=responses)
    if method == "causal":
        fields = _causal_solve(Kx, y, g0, et, depth=depth, steps=steps, update=update, **args)
        residuals = []
    else:
        fields = _causal_solve(Kx, y, g0 * 0, et, depth=depth, steps=steps, **args)  # lazy start
        residuals = []
        for _ in range(max_iter):
            new = _dense_map(Kx, y, g0, et, fields[0], *fields[2:], **args)
            residuals.append(_residual((fields[0], fields[2], fields[3]), (new[0], new[2], new[3])))
            fields = tuple(damping * n + (1 - damping) * o for n, o in zip(new, fields))
            if residuals[-1] < tol or not np.isfinite(residuals[-1]):
                break
    delta, ntk, Phi, G = fields[:4]
    finite = bool(jnp.all(jnp.isfinite(delta))) and bool(jnp.all(jnp.isfinite(Phi)))
    if finite and update == "euler":
        check = _dense_map(Kx, y, g0, et, delta, *fields[2:], **args)
        residuals.append(_residual((delta, Phi, G), (check[0], check[2], check[3])))
    elif finite:
        residuals.append(0.0)
    residuals = np.asarray(residuals if finite else [np.inf])
    converged = bool(finite and residuals[-1] < tol)
    if not finite:
        warnings.warn(f"DMFT solve diverged (non-finite fields): eta={eta} is probably above "
                      "the stable learning rate", RuntimeWarning, stacklevel=2)
    elif not converged:
        warnings.warn(f"DMFT solve not converged: residual {residuals[-1]:.3g} > tol {tol:.3g}",
                      RuntimeWarning, stacklevel=2)
    T1, P = steps + 1, Kx.shape[0]
    loss = 0.5 * jnp.mean(delta ** 2, axis=1)
    return DMFTSolution(delta=delta, loss=loss, ntk=ntk,
                        phi=Phi.reshape(depth, T1, P, T1, P), g=G, residuals=residuals,
                        converged=converged, method=method,
                        params=dict(depth=depth, gamma0=gamma0, eta=eta, steps=steps,
                                    responses=responses, update=update))


def static_ntk(Kx, y, *, depth, eta, steps) -> DMFTSolution:
    """The lazy (gamma0 = 0) limit: kernels frozen at initialisation, ``K = (L+1) Kx`` for linear nets."""
    return deep_linear(Kx, y, depth=depth, gamma0=0.0, eta=eta, steps=steps)


def gradient_independence(Kx, y, *, depth, gamma0, eta, steps, update="euler") -> DMFTSolution:
    """The gradient-independence ansatz: the DMFT without the response functions A, B."""
    return deep_linear(Kx, y, depth=depth, gamma0=gamma0, eta=eta, steps=steps, responses=False,
                       update=update)


def perturbative(Kx, y, *, depth, gamma0, eta, steps) -> DMFTSolution:
    """Leading-order perturbation theory in the richness: kernels to O(gamma0^2).

    The kernels are even in gamma0, so ``Phi = Phi_0 + gamma0^2 Phi_2 + O(gamma0^4)`` with
    ``Phi_2 = (1/2) d^2 Phi / d gamma0^2`` at gamma0 = 0, obtained exactly by forward-mode
    differentiation of the causal solver (no finite differences). The error then follows the
    Euler dynamics with the truncated NTK ``K_0(t) + gamma0^2 K_2(t)``.
    """
    Kx, y, depth, gamma0, eta, steps = _validate(Kx, y, depth, gamma0, eta, steps)
    et = jnp.asarray(eta, Kx.dtype)

    def kernels(g):
        delta, ntk, Phi, G, _, _ = _causal_solve(Kx, y, g, et, depth=depth, steps=steps)
        return ntk, Phi, G

    zero, one = jnp.zeros((), Kx.dtype), jnp.ones((), Kx.dtype)
    base = kernels(zero)
    second = jax.jvp(lambda g: jax.jvp(kernels, (g,), (one,))[1], (zero,), (one,))[1]
    ntk, Phi, G = (b + 0.5 * gamma0 ** 2 * s for b, s in zip(base, second))

    def euler(d, Kt):
        return d - (eta / Kx.shape[0]) * Kt @ d, d

    _, delta = jax.lax.scan(euler, y, ntk)
    T1, P = steps + 1, Kx.shape[0]
    finite = bool(jnp.all(jnp.isfinite(delta)))
    if not finite:
        warnings.warn("perturbative solve diverged (non-finite error)", RuntimeWarning,
                      stacklevel=2)
    return DMFTSolution(delta=delta, loss=0.5 * jnp.mean(delta ** 2, axis=1), ntk=ntk,
                        phi=Phi.reshape(depth, T1, P, T1, P), g=G,
                        residuals=np.asarray([0.0 if finite else np.inf]), converged=finite,
                        method="perturbative",
                        params=dict(depth=depth, gamma0=gamma0, eta=eta, steps=steps))


# ----------------------------------------------------------------------------- nonlinear (Monte Carlo)
def _activation_pair(name):
    from .nets import activation_fn
    phi = activation_fn(name)
    return phi, jax.vmap(jax.vmap(jax.grad(phi)))


@partial(jax.jit, static_argnames=("activation", "steps"))
def _two_layer_mc(Kx, y, gamma0, eta, key, *, activation, steps, samples):
    """Single-site process of a two-layer net, sampled: one causal pass over time.

    ``samples`` neurons carry the sources ``u ~ N(0, Kx)`` (P,) and ``r ~ N(0, 1)``; returns
    (delta, ntk, phi_t, g_t) with the per-sample features phi(h(t)) and gradients g(t).
    """
    P = Kx.shape[0]
    c = eta / P
    phi, dphi = _activation_pair(activation)
    ku, kr = jax.random.split(key)
    lam, V = jnp.linalg.eigh(Kx)
    root = V * jnp.sqrt(jnp.clip(lam, 0.0))                 # Kx = root root^T (PSD-safe)
    u = jax.random.normal(ku, (samples.shape[0], P), Kx.dtype) @ root.T
    r = jax.random.normal(kr, (samples.shape[0],), Kx.dtype)

    def step(carry, _):
        acc, z, d = carry                                   # acc = sum_{s<t} Delta(s) g(s)
        h = u + gamma0 * c * acc @ Kx                       # (S, P); Kx symmetric
        a = phi(h)
        g = dphi(h) * z[:, None]
        S = h.shape[0]
        Phi_tt, G_tt = a.T @ a / S, g.T @ g / S
        K = Phi_tt + G_tt * Kx
        acc = acc + d[None, :] * g
        z = z + gamma0 * c * a @ d
        d_next = d - c * K @ d
        return (acc, z, d_next), (d, K, a, g)

    init = (jnp.zeros_like(u), r, y)
    _, (delta, ntk, a, g) = jax.lax.scan(step, init, None, length=steps + 1)
    return delta, ntk, a, g


class NonlinearSolution(NamedTuple):
    """Monte-Carlo DMFT solution: the fields of :class:`DMFTSolution` plus ``loss_stderr``
    (T+1,), the Monte-Carlo standard error of ``loss`` from independent repeats, and
    ``h_samples``/``z_samples``-style per-sample records (``features`` (T+1, S, P) of phi(h),
    ``gradients`` (T+1, S, P) of g) for densities."""
    delta: jax.Array
    loss: jax.Array
    loss_stderr: jax.Array
    ntk: jax.Array
    phi: jax.Array
    g: jax.Array
    features: jax.Array
    gradients: jax.Array
    residuals: np.ndarray
    converged: bool
    method: str
    params: dict


def nonlinear(Kx, y, *, depth, activation, gamma0, eta, steps, samples, key, repeats=4):
    """Monte-Carlo DMFT of a nonlinear network in the mean-field parameterisation.

    Depth 1 (a two-layer network; no response functions): ``samples`` single-site neurons are
    drawn once and evolved by one causal pass over time (``lax.scan``); the kernels
    ``Phi(t,s) = <phi(h(t)) phi(h(s))>`` and ``G(t,s) = <g(t) g(s)>`` are sample averages and the
    error follows the Euler update with ``K(t) = Phi(t,t) + G(t,t) * Kx``. Because the fields
    at t depend only on the past, no outer fixed-point iteration is needed; the Monte-Carlo
    error is estimated from ``repeats`` independent solves with ``samples // repeats`` neurons
    each (``loss_stderr``). Deeper networks need the response functions A, B and are not
    implemented yet (NotImplementedError).
    """
    Kx, y, depth, gamma0, eta, steps = _validate(Kx, y, depth, gamma0, eta, steps)
    _checks.choice(activation, "activation", _checks.ACTIVATIONS)
    samples = _checks.positive_int(samples, "samples", minimum=2)
    repeats = _checks.positive_int(repeats, "repeats", minimum=2)
    if samples < 2 * repeats:
        raise ValueError(f"samples must be at least 2 * repeats = {2 * repeats}; got {samples}")
    if depth != 1:
        raise NotImplementedError("nonlinear DMFT for depth >= 2 (response functions A, B) is "
                                  "not implemented yet; use depth=1, or dmft.deep_linear for "
                                  "linear networks")
    g0, et = jnp.asarray(gamma0, Kx.dtype), jnp.asarray(eta, Kx.dtype)
    k_main, k_rep = jax.random.split(key)
    delta, ntk, a, g = _two_layer_mc(Kx, y, g0, et, k_main, activation=activation, steps=steps,
                                     samples=jnp.zeros(samples))
    per = samples // repeats
    reps = jax.vmap(lambda k: _two_layer_mc(Kx, y, g0, et, k, activation=activation, steps=steps,
                                            samples=jnp.zeros(per))[0])(
        jax.random.split(k_rep, repeats))
    rep_loss = 0.5 * jnp.mean(reps ** 2, axis=-1)                          # (R, T+1)
    # the pooled solve has `repeats` times the samples of one repeat: its error is smaller by
    # sqrt(repeats) than the spread of the repeats
    loss_stderr = jnp.std(rep_loss, axis=0, ddof=1) / jnp.sqrt(repeats)
    T1, P = steps + 1, Kx.shape[0]
    S = a.shape[1]
    phi = jnp.einsum("tsm,usn->tmun", a, a) / S
    G = jnp.einsum("tsm,usn->tmun", g, g) / S
    finite = bool(jnp.all(jnp.isfinite(delta)))
    if not finite:
        warnings.warn(f"Monte-Carlo DMFT diverged (non-finite error): eta={eta} is probably "
                      "above the stable learning rate", RuntimeWarning, stacklevel=2)
    return NonlinearSolution(
        delta=delta, loss=0.5 * jnp.mean(delta ** 2, axis=1), loss_stderr=loss_stderr, ntk=ntk,
        phi=phi[None], g=G[None], features=a, gradients=g,
        residuals=np.asarray([0.0 if finite else np.inf]), converged=finite,
        method="causal-monte-carlo",
        params=dict(depth=depth, activation=activation, gamma0=gamma0, eta=eta, steps=steps,
                    samples=samples, repeats=repeats))
