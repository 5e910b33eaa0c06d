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

Nonlinear networks (:func:`nonlinear`, Chapter 4): the fields are no longer linear in their
sources, so the averages are estimated from S sampled single-site neurons per layer, again in
one causal pass; the response functions of deep networks are estimated with random tangent
probes (see the comment block of that section). :func:`static_ntk`,
:func:`gradient_independence` and :func:`perturbative` take ``activation`` (default
``"linear"``, exact) and, for a nonlinear one, ``samples`` and ``key``.
"""
from __future__ import annotations

import time
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


def _euler_errors(y, ntk, eta):
    """Errors ``Delta(t)`` (T+1, P) of the Euler dynamics ``Delta(t+1) = Delta(t) - (eta/P) K(t)
    Delta(t)`` from ``Delta(0) = y``, given the NTK ``K(t)`` at every step (T+1, P, P)."""
    c = eta / y.shape[0]
    return jax.lax.scan(lambda d, Kt: (d - c * Kt @ d, d), y, ntk)[1]


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

    return _euler_errors(y, K, eta), K, Phi_n, G_n, jnp.stack(new["Hr"]), jnp.stack(new["Gu"])


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


def _monte_carlo(activation, samples, key, what):
    """True when an approximation must be sampled (a nonlinear activation); checks its inputs."""
    _checks.choice(activation, "activation", _checks.ACTIVATIONS)
    if activation == "linear":
        return False
    if samples is None or key is None:
        raise ValueError(f"{what} with activation={activation!r} is solved by Monte Carlo: "
                         "pass samples and key (as for dmft.nonlinear)")
    return True


def static_ntk(Kx, y, *, depth, eta, steps, activation="linear", samples=None, key=None,
               **mc):
    """The lazy (gamma0 = 0) limit: kernels frozen at initialisation.

    Linear networks (the default): exact, ``K = (L+1) Kx``. Nonlinear: :func:`nonlinear` at
    ``gamma0 = 0`` (the sampled arc-cosine kernels), which needs ``samples`` and ``key``;
    further keywords (``repeats``, ``probes``) go to it.
    """
    if _monte_carlo(activation, samples, key, "static_ntk"):
        return nonlinear(Kx, y, depth=depth, activation=activation, gamma0=0.0, eta=eta,
                         steps=steps, samples=samples, key=key, **mc)
    return deep_linear(Kx, y, depth=depth, gamma0=0.0, eta=eta, steps=steps)


def gradient_independence(Kx, y, *, depth, gamma0, eta, steps, update="euler",
                          activation="linear", samples=None, key=None, **mc):
    """The gradient-independence ansatz: the DMFT without the response functions A, B.

    Linear networks: exact (:func:`deep_linear` with ``responses=False``); nonlinear:
    :func:`nonlinear` with ``responses=False`` (needs ``samples`` and ``key``).
    """
    if _monte_carlo(activation, samples, key, "gradient_independence"):
        if update != "euler":
            raise ValueError("update must be 'euler' for a nonlinear activation; got "
                             f"{update!r}")
        return nonlinear(Kx, y, depth=depth, activation=activation, gamma0=gamma0, eta=eta,
                         steps=steps, samples=samples, key=key, responses=False, **mc)
    return deep_linear(Kx, y, depth=depth, gamma0=gamma0, eta=eta, steps=steps, responses=False,
                       update=update)


def perturbative(Kx, y, *, depth, gamma0, eta, steps, activation="linear", samples=None,
                 key=None, **mc):
    """Leading-order perturbation theory in the richness: kernels to O(gamma0^2).

    The kernels are even in gamma0, so ``Phi = Phi_0 + gamma0^2 Phi_2 + O(gamma0^4)`` with
    ``Phi_2 = (1/2) d^2 Phi / d gamma0^2`` at gamma0 = 0, obtained exactly by forward-mode
    differentiation of the causal solver (no finite differences). The error then follows the
    Euler dynamics with the truncated NTK ``K_0(t) + gamma0^2 K_2(t)``.

    Linear networks: exact. Nonlinear (needs ``samples`` and ``key``): the same derivatives of
    the Monte-Carlo solver on its fixed samples (the odd, pure-noise first-order term is
    dropped), with ``loss_stderr`` from ``repeats`` independent sample sets.
    """
    if _monte_carlo(activation, samples, key, "perturbative"):
        return _perturbative_mc(Kx, y, depth=depth, activation=activation, gamma0=gamma0,
                                eta=eta, steps=steps, samples=samples, key=key, **mc)
    Kx, y, depth, gamma0, eta, steps = _validate(Kx, y, depth, gamma0, eta, steps)
    et = jnp.asarray(eta, Kx.dtype)

    def kernels(g):
        delta, ntk, Phi, G, _, _ = _causal_solve(Kx, y, g, et, depth=depth, steps=steps)
        return ntk, Phi, G

    zero, one = jnp.zeros((), Kx.dtype), jnp.ones((), Kx.dtype)
    base = kernels(zero)
    second = jax.jvp(lambda g: jax.jvp(kernels, (g,), (one,))[1], (zero,), (one,))[1]
    ntk, Phi, G = (b + 0.5 * gamma0 ** 2 * s for b, s in zip(base, second))

    delta = _euler_errors(y, ntk, eta)
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
# Single-site process of a depth-L nonlinear network (layers l = 1..L; Phi^0 = Kx, G^{L+1} = 1):
#
#   h^l(t) = u^l(t) + sum_{s<t}  [A^{l-1}(t,s) + gamma0 c Phi^{l-1}(t,s) Delta(s)] g^l(s)
#   z^l(t) = r^l(t) + sum_{s<=t} B^l(t,s) phi(h^l(s)) + sum_{s<t} gamma0 c G^{l+1}(t,s) Delta(s) phi(h^l(s))
#   g^l(t) = phi'(h^l(t)) z^l(t),     c = eta / P,
#
# u^l ~ N(0, Phi^{l-1}), r^l ~ N(0, G^{l+1}) (r^L = the readout weight, the same for all samples
# and times), A^l(t,s) = <d phi(h^l(t)) / d r^l(s)> (strictly causal) and
# B^l(t,s) = <d g^{l+1}(t) / d u^{l+1}(s)>, which has an equal-time part s = t: in gradient descent
# the backward pass at step t runs through the pre-activations of the same step, so
# d g(t)/d u(t) = phi''(h(t)) z(t). (It vanishes for linear networks; for ReLU it is a delta
# function, which autodiff cannot see: :func:`_derivatives` estimates it with a Gaussian kernel.)
#
# Monte Carlo: S single-site neurons per layer. Sources are drawn from the *sampled* kernels by
# random projection, u^{l+1}_i(t) = sum_j Xi_ij phi(h^l_j(t)) / sqrt(S) with Xi = sqrt(S) times a
# random orthogonal matrix, which has
# covariance Phi^l exactly and only needs the present time (likewise r^l from g^{l+1}). The
# responses are estimated with random probes: each neuron carries `probes` tangent fields,
# pushed forward in time by the linearised field equations (forward-mode, exact), and
# <J> ~ (1/(S K)) sum_{i,k} J_i v_ik v_ik^T with E[v v^T] = 1 (Hutchinson). With S K >= (T+1) P
# the S K probe vectors are the rows of sqrt(S K) times a random matrix with orthonormal columns,
# so sum v v^T = S K exactly and a Jacobian shared by all neurons is recovered without error;
# every entry of the estimate still mixes all neurons, which matters for ReLU, whose
# per-neuron Jacobians are heavy-tailed (coordinate probes, one source direction per tangent,
# need no QR but were measured 2-3x further from networks for deep ReLU). With fewer probes,
# Gaussian ones pick up a noise of relative size ~ sqrt((T+1) P / (S K)) that biases the kernels
# (the default number of probes avoids this). All of it is causal, so one pass over time (lax.scan) solves the
# equations: there is no outer fixed-point iteration.

def _derivatives(name):
    """phi, phi' and phi'' (elementwise, on the (S, P) fields of S sampled neurons).

    For ReLU, phi'' is the delta function, whose averages (the equal-time response
    <delta(h) z>) the samples cannot resolve pointwise: it is replaced by a Gaussian kernel of
    Silverman's bandwidth 1.06 sd(h) S^(-1/5) per example, a consistent estimator of those
    averages (bias O(bandwidth^2), noise O((S bandwidth)^-1/2)).
    """
    from .nets import activation_fn
    phi = activation_fn(name)
    d1 = lambda h: jax.jvp(phi, (h,), (jnp.ones_like(h),))[1]        # elementwise phi'
    if name == "relu":
        def d2(h):
            eps = 1.06 * jnp.std(h, axis=0) * h.shape[0] ** -0.2 + jnp.finfo(h.dtype).tiny
            return jnp.exp(-0.5 * (h / eps) ** 2) / (jnp.sqrt(2 * jnp.pi) * eps)
    else:
        d2 = lambda h: jax.jvp(d1, (h,), (jnp.ones_like(h),))[1]     # elementwise phi''
    return phi, d1, d2


def _orthonormal(key, n, m, dtype):
    """sqrt(n) times an (n, m) matrix with orthonormal columns (m <= n), Haar-distributed."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (n, m), dtype))
    return q * jnp.sign(jnp.diagonal(r))[None, :] * jnp.sqrt(jnp.asarray(n, dtype))


def _mc_noise(Kx, key, *, depth, steps, samples, probes, responses):
    """All random numbers of one Monte-Carlo solve (drawn up front: the pass is deterministic).

    Moment matching (variance reduction): the sources reproduce the kernels they are drawn from
    *exactly* on the sample, e.g. ``u^1`` has empirical covariance Kx, and the projections are
    sqrt(S) times orthogonal matrices, so ``<u^{l+1} u^{l+1}^T> = Phi^l`` of the sampled neurons;
    the probes satisfy ``sum v v^T = S K`` exactly when ``samples * probes >= (T+1) P``. Each source
    is still marginally Gaussian as S grows; only the sampling noise of the kernels is removed.
    """
    S, K, L, P, T1 = samples, probes, depth, Kx.shape[0], steps + 1
    dt = Kx.dtype
    k = jax.random.split(key, 6)
    lam, V = jnp.linalg.eigh(Kx)
    root = V * jnp.sqrt(jnp.clip(lam, 0.0))                 # Kx = root root^T (PSD-safe)
    white = _orthonormal(k[0], S, P, dt) if S >= P else jax.random.normal(k[0], (S, P), dt)
    w = jax.random.normal(k[1], (S,), dt)
    nA = L - 1 if responses else 0
    ortho = lambda kk: jax.vmap(lambda q: _orthonormal(q, S, S, dt))(jax.random.split(kk, L - 1))

    def probe(kk):
        if S * K >= T1 * P:
            return jax.vmap(lambda q: _orthonormal(q, S * K, T1 * P, dt))(
                jax.random.split(kk, nA))
        return jax.random.normal(kk, (nA, S * K, T1 * P), dt)

    return dict(u1=white @ root.T,                          # u^1 ~ N(0, Kx), constant in time
                w=w / jnp.sqrt(jnp.mean(w ** 2)),           # r^L: the readout weights
                Xu=ortho(k[2]), Xr=ortho(k[3]), vA=probe(k[4]), vB=probe(k[5]))


def _mc_state(Kx, y, *, depth, steps, samples, probes, responses):
    S, K, L, P, T1 = samples, probes, depth, Kx.shape[0], steps + 1
    TP, dt = T1 * P, Kx.dtype
    z = lambda *shape: jnp.zeros(shape, dt)
    nA = L - 1 if responses else 0
    return dict(F=[z(S, TP) for _ in range(L)], Gh=[z(S, TP) for _ in range(L)],
                Phi=[z(TP, TP) for _ in range(L)], G=[z(TP, TP) for _ in range(L)],
                A=[z(TP, TP) for _ in range(nA)], B=[z(TP, TP) for _ in range(nA)],
                dFA=[z(S * K, TP) for _ in range(nA)], dGA=[z(S * K, TP) for _ in range(nA)],
                dFB=[z(S * K, TP) for _ in range(nA)], dGB=[z(S * K, TP) for _ in range(nA)],
                delta=z(T1 + 1, P).at[0].set(y), ntk=z(T1, P, P))


def _mc_chunk_impl(state, noise, Kx, gamma0, eta, t0, *, activation, chunk, responses):
    """Advance the single-site process by ``chunk`` time steps from ``t0`` (one lax.scan)."""
    L, P = len(state["F"]), Kx.shape[0]
    S, TP = state["F"][0].shape
    T1 = TP // P
    SK = noise["vA"].shape[1] if responses and L > 1 else S
    K = SK // S
    dt = Kx.dtype
    c = gamma0 * eta / P
    phi, dphi, d2phi = _derivatives(activation)
    t_of = jnp.arange(TP) // P
    ones_row = jnp.ones((P, TP), dt)
    Kx_row = jnp.tile(Kx, (1, T1))
    rS = jnp.sqrt(jnp.asarray(S, dt))

    def rows(M, t):
        return jax.lax.dynamic_slice_in_dim(M, t * P, P, axis=0)

    def put_col(M, t, v):                       # M (n, TP), v (n, P): the block of time t
        return jax.lax.dynamic_update_slice_in_dim(M, v, t * P, axis=1)

    def put_sym(M, t, row):                     # kernel row t (P, TP) into rows and columns t
        return jax.lax.dynamic_update_slice_in_dim(
            jax.lax.dynamic_update_slice_in_dim(M, row, t * P, axis=0), row.T, t * P, axis=1)

    def step(s, t):
        s = {k: (list(v) if isinstance(v, list) else v) for k, v in s.items()}
        past, upto = (t_of < t).astype(dt), (t_of <= t).astype(dt)
        dflat = s["delta"][:T1].reshape(-1) * past          # Delta(s) on (s, nu), zero for s >= t
        ph, dph, d2ph, hs, dhA, dhB = [], [], [], [], {}, {}
        # forward fields h^l(t), from the input up (they need g only at earlier times)
        for l in range(L):
            phi_dn = Kx_row if l == 0 else rows(s["Phi"][l - 1], t)
            a_row = c * phi_dn * dflat[None, :]
            if responses and l > 0:
                a_row = a_row + rows(s["A"][l - 1], t)
            u = noise["u1"] if l == 0 else noise["Xu"][l - 1] @ ph[l - 1] / rS
            h = u + s["Gh"][l] @ a_row.T
            p = phi(h)
            s["F"][l] = put_col(s["F"][l], t, p)
            s["Phi"][l] = put_sym(s["Phi"][l], t, p.T @ s["F"][l] / S)
            hs.append(h), ph.append(p), dph.append(dphi(h)), d2ph.append(d2phi(h))
            if responses and l < L - 1:                     # tangent w.r.t. r^l: A^l(t, .)
                dh = s["dGA"][l] @ a_row.T                  # (S K, P)
                dp = jnp.repeat(dph[l], K, axis=0) * dh
                s["dFA"][l] = put_col(s["dFA"][l], t, dp)
                s["A"][l] = jax.lax.dynamic_update_slice_in_dim(
                    s["A"][l], (dp.T @ noise["vA"][l]) / (S * K) * past[None, :], t * P, axis=0)
                dhA[l] = dh
            if responses and l > 0:                         # tangent w.r.t. u^l: B^{l-1}(t, .)
                v_t = jax.lax.dynamic_slice_in_dim(noise["vB"][l - 1], t * P, P, axis=1)
                dh = v_t + s["dGB"][l - 1] @ a_row.T
                s["dFB"][l - 1] = put_col(s["dFB"][l - 1], t,
                                          jnp.repeat(dph[l], K, axis=0) * dh)
                dhB[l] = dh
        # backward fields z^l(t), g^l(t), from the readout down (they need h at t)
        gs, zs = [None] * L, [None] * L
        for l in reversed(range(L)):
            g_up = ones_row if l == L - 1 else rows(s["G"][l + 1], t)
            b_row = c * g_up * dflat[None, :]
            if responses and l < L - 1:
                b_row = b_row + rows(s["B"][l], t)          # includes the equal-time block
            r = (jnp.broadcast_to(noise["w"][:, None], (S, P)) if l == L - 1
                 else noise["Xr"][l] @ gs[l + 1] / rS)
            zt = r + s["F"][l] @ b_row.T
            g = dph[l] * zt
            s["Gh"][l] = put_col(s["Gh"][l], t, g)
            s["G"][l] = put_sym(s["G"][l], t, g.T @ s["Gh"][l] / S)
            gs[l], zs[l] = g, zt
            if responses and (l < L - 1 or l > 0):
                zK, dK, d2K = (jnp.repeat(x, K, axis=0) for x in (zt, dph[l], d2ph[l]))
            if responses and l < L - 1:
                v_t = jax.lax.dynamic_slice_in_dim(noise["vA"][l], t * P, P, axis=1)
                dz = v_t + s["dFA"][l] @ b_row.T
                s["dGA"][l] = put_col(s["dGA"][l], t, dK * dz + d2K * zK * dhA[l])
            if responses and l > 0:
                dz = s["dFB"][l - 1] @ b_row.T
                dg = dK * dz + d2K * zK * dhB[l]
                s["dGB"][l - 1] = put_col(s["dGB"][l - 1], t, dg)
                s["B"][l - 1] = jax.lax.dynamic_update_slice_in_dim(
                    s["B"][l - 1], (dg.T @ noise["vB"][l - 1]) / (S * K) * upto[None, :], t * P, axis=0)
        # the NTK K(t) = sum_l G^{l+1}(t,t) Phi^l(t,t) (Phi^0 = Kx, G^{L+1} = 1), Euler step
        Gtt = [g.T @ g / S for g in gs] + [jnp.ones((P, P), dt)]
        K_t = Gtt[0] * Kx + sum(Gtt[l + 1] * (ph[l].T @ ph[l] / S) for l in range(L))
        d_t = s["delta"][t]
        s["delta"] = s["delta"].at[t + 1].set(d_t - (eta / P) * K_t @ d_t)
        s["ntk"] = s["ntk"].at[t].set(K_t)
        return s, (jnp.stack(hs), jnp.stack(zs))

    return jax.lax.scan(step, state, t0 + jnp.arange(chunk))


_mc_chunk = jax.jit(_mc_chunk_impl, static_argnames=("activation", "chunk", "responses"))


@partial(jax.jit, static_argnames=("activation", "chunk", "responses"))
def _mc_chunk_batched(states, noises, Kx, gamma0, eta, t0, *, activation, chunk, responses):
    """:func:`_mc_chunk_impl` for a batch of independent solves (the repeats of loss_stderr)."""
    f = lambda st, nz: _mc_chunk_impl(st, nz, Kx, gamma0, eta, t0, activation=activation,
                                      chunk=chunk, responses=responses)
    return jax.vmap(f)(states, noises)


class NonlinearSolution(NamedTuple):
    """Monte-Carlo DMFT solution (P samples, T = steps, L = depth, S single-site neurons).

    ``delta`` (T+1, P), ``loss`` (T+1,), ``loss_stderr`` (T+1,) the Monte-Carlo standard error of
    ``loss`` (from independent repeats), ``ntk`` (T+1, P, P); ``phi`` and ``g`` (L, T+1, P, T+1, P)
    the feature and gradient kernels Phi^l(t, s), G^l(t, s) for l = 1..L; ``h`` and ``z``
    (L, T+1, S, P) the sampled pre-activations and backward fields (``g^l = phi'(h^l) z^l``), for
    densities; ``residuals``, ``converged``, ``method``, ``params`` as in :class:`DMFTSolution`.
    """
    delta: jax.Array
    loss: jax.Array
    loss_stderr: jax.Array
    ntk: jax.Array
    phi: jax.Array
    g: jax.Array
    h: jax.Array
    z: jax.Array
    residuals: np.ndarray
    converged: bool
    method: str
    params: dict


def _chunks(T1, progress):
    if not progress:
        return [T1]
    n = -(-T1 // 10)
    return [n] * (T1 // n) + ([T1 % n] if T1 % n else [])


def _auto_probes(T1, P, samples):
    """Fewest probes with ``samples * probes >= (T+1) P``: the probes of every neuron together
    then span the whole source space, and are drawn orthogonal (see :func:`_mc_noise`)."""
    return max(1, -(-T1 * P // samples))


def _mc_setup(Kx, y, key, *, depth, steps, samples, repeats, probes, responses):
    """States and noise of the pooled solve (``samples`` neurons) and of the ``repeats``
    independent solves of ``samples // repeats`` neurons that estimate the Monte-Carlo error;
    and the numbers of probes of each."""
    T1, P = steps + 1, Kx.shape[0]
    K_main = probes or _auto_probes(T1, P, samples)
    K_rep = probes or _auto_probes(T1, P, samples // repeats)
    main, reps = _mc_setup_jit(Kx, y, key, depth=depth, steps=steps, samples=samples,
                               repeats=repeats, probes=(K_main, K_rep), responses=responses)
    return main, reps, (K_main, K_rep)


@partial(jax.jit, static_argnames=("depth", "steps", "samples", "repeats", "probes",
                                   "responses"))
def _mc_setup_jit(Kx, y, key, *, depth, steps, samples, repeats, probes, responses):
    k_main, k_rep = jax.random.split(key)
    kw = dict(depth=depth, steps=steps, responses=responses)
    start = lambda k, S, K: (_mc_state(Kx, y, samples=S, probes=K, **kw),
                             _mc_noise(Kx, k, samples=S, probes=K, **kw))
    main = start(k_main, samples, probes[0])
    reps = jax.vmap(lambda k: start(k, samples // repeats, probes[1]))(
        jax.random.split(k_rep, repeats))
    return main, reps


def _stderr(rep_delta, repeats):
    """Monte-Carlo standard error of the pooled loss from the repeats' errors (R, T+1, P): the
    pooled solve has R times the neurons of one repeat, so its error is smaller by sqrt(R)."""
    rep_loss = 0.5 * jnp.mean(rep_delta ** 2, axis=-1)
    return jnp.std(rep_loss, axis=0, ddof=1) / jnp.sqrt(repeats)


def _mc_validate(Kx, y, depth, activation, gamma0, eta, steps, samples, repeats, probes):
    Kx, y, depth, gamma0, eta, steps = _validate(Kx, y, depth, gamma0, eta, steps)
    _checks.choice(activation, "activation", _checks.ACTIVATIONS)
    samples = _checks.positive_int(samples, "samples", minimum=2)
    repeats = _checks.positive_int(repeats, "repeats", minimum=2)
    if probes is not None:
        probes = _checks.positive_int(probes, "probes")
    if samples < 2 * repeats:
        raise ValueError(f"samples must be at least 2 * repeats = {2 * repeats}; got {samples}")
    return Kx, y, depth, gamma0, eta, steps, samples, repeats, probes


def _finish(delta, loss_stderr, ntk, Phi, G, h, z, *, method, params, what="Monte-Carlo DMFT"):
    """Package a Monte-Carlo solve; warn (and flag ``converged=False``) on non-finite results."""
    depth, T1, P = len(Phi), delta.shape[0], delta.shape[1]
    finite = bool(jnp.all(jnp.isfinite(delta))) and bool(jnp.all(jnp.isfinite(loss_stderr)))
    if not finite:
        warnings.warn(f"{what} diverged (non-finite error): eta={params['eta']} is probably "
                      "above the stable learning rate", RuntimeWarning, stacklevel=3)
    shape = (depth, T1, P, T1, P)
    return NonlinearSolution(
        delta=delta, loss=0.5 * jnp.mean(delta ** 2, axis=1), loss_stderr=loss_stderr, ntk=ntk,
        phi=jnp.stack(Phi).reshape(shape), g=jnp.stack(G).reshape(shape), h=h, z=z,
        residuals=np.asarray([0.0 if finite else np.inf]), converged=finite, method=method,
        params=params)


def nonlinear(Kx, y, *, depth, activation, gamma0, eta, steps, samples, key, repeats=4,
              probes=None, responses=True, progress=None) -> NonlinearSolution:
    """Monte-Carlo DMFT of a depth-L nonlinear network in the mean-field (muP) parameterisation.

    ``samples`` single-site neurons per layer are evolved through the field equations (see the
    comment block above :func:`_mc_noise`) in **one causal pass over time**: the fields at step t
    need kernels, responses and errors at earlier steps only, so the alternating-sampling
    fixed point of Bordelon & Pehlevan (2022) is reached without iterating. The error follows the
    Euler update ``Delta(t+1) = Delta(t) - (eta/P) K(t) Delta(t)``.

    Args:
      Kx: input Gram matrix (P, P). y: targets (P,).
      depth: hidden layers L >= 1. For depth >= 2 the response functions contain phi'', a
        delta function for ReLU, estimated with a Gaussian kernel (see :func:`_derivatives`).
      activation: ``"relu"``, ``"tanh"``, ``"erf"`` or ``"linear"``.
      gamma0: richness >= 0 (0 = the static NTK). eta: learning rate. steps: T.
      samples: number S of sampled neurons per layer (Monte-Carlo error ~ 1/sqrt(S)).
      key: PRNG key; the same key gives the same answer.
      repeats: independent solves with ``samples // repeats`` neurons each, run alongside to
        estimate ``loss_stderr`` (their spread / sqrt(repeats)).
      probes: random tangent probes per neuron for the response functions A, B (depth >= 2).
        Default: the fewest with ``samples * probes >= (T+1) P``, so that the probes are
        orthogonal and span the source space (fewer give a biased, noisier estimate).
      responses: False drops A and B (the gradient-independence approximation).
      progress: print progress (the pass then runs in ten jitted chunks); default: only when
        the solve is predicted to take more than about half a minute on a CPU.

    Returns a :class:`NonlinearSolution`; ``residuals`` is ``[0.]`` (the one pass satisfies the
    sampled equations exactly) or ``[inf]`` with ``converged=False`` and a warning if the
    solve diverged.
    """
    Kx, y, depth, gamma0, eta, steps, samples, repeats, probes = _mc_validate(
        Kx, y, depth, activation, gamma0, eta, steps, samples, repeats, probes)
    responses = bool(responses) and depth >= 2
    T1, P = steps + 1, Kx.shape[0]
    (state, noise), (r_state, r_noise), (K_main, K_rep) = _mc_setup(
        Kx, y, key, depth=depth, steps=steps, samples=samples, repeats=repeats, probes=probes,
        responses=responses)
    if progress is None:   # ~1e10 multiply-adds per second on two CPU cores
        rows = samples * (1 + (4 * K_main if responses else 0)) * 2
        progress = rows * (T1 * P) ** 2 * depth > 3e11
    g0, et = jnp.asarray(gamma0, Kx.dtype), jnp.asarray(eta, Kx.dtype)
    run = dict(activation=activation, responses=responses)
    records, t0, start = [], 0, time.perf_counter()
    for n in _chunks(T1, progress):
        tt = jnp.asarray(t0)
        state, rec = _mc_chunk(state, noise, Kx, g0, et, tt, chunk=n, **run)
        r_state, _ = _mc_chunk_batched(r_state, r_noise, Kx, g0, et, tt, chunk=n, **run)
        records.append(rec)
        t0 += n
        if progress:
            jax.block_until_ready(r_state["delta"])
            print(f"Monte-Carlo DMFT (depth {depth}, S={samples}): step {t0}/{T1}, "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
    h = jnp.concatenate([r[0] for r in records]).transpose(1, 0, 2, 3)      # (L, T1, S, P)
    z = jnp.concatenate([r[1] for r in records]).transpose(1, 0, 2, 3)
    return _finish(state["delta"][:T1], _stderr(r_state["delta"][:, :T1], repeats),
                   state["ntk"], state["Phi"], state["G"], h, z, method="causal-monte-carlo",
                   params=dict(depth=depth, activation=activation, gamma0=gamma0, eta=eta,
                               steps=steps, samples=samples, repeats=repeats,
                               probes=K_main if responses else 0, responses=responses))


@partial(jax.jit, static_argnames=("activation", "responses"))
def _mc_second_order(state, noise, Kx, eta, *, activation, responses):
    """Kernels at gamma0 = 0 and half their second derivative in gamma0 (nested forward mode)
    for one Monte-Carlo solve, on its fixed samples."""
    T1 = state["ntk"].shape[0]
    dt = Kx.dtype

    def kernels(g):
        out, _ = _mc_chunk_impl(state, noise, Kx, g, eta, jnp.asarray(0), activation=activation,
                                chunk=T1, responses=responses)
        return out["ntk"], jnp.stack(out["Phi"]), jnp.stack(out["G"])

    zero, one = jnp.zeros((), dt), jnp.ones((), dt)
    base = kernels(zero)
    second = jax.jvp(lambda g: jax.jvp(kernels, (g,), (one,))[1], (zero,), (one,))[1]
    return base, tuple(0.5 * s for s in second)


@partial(jax.jit, static_argnames=("activation", "responses"))
def _mc_second_order_batched(states, noises, Kx, eta, *, activation, responses):
    """:func:`_mc_second_order` for the independent repeats (leading axis)."""
    f = lambda st, nz: _mc_second_order(st, nz, Kx, eta, activation=activation,
                                        responses=responses)
    return jax.vmap(f)(states, noises)


def _perturbative_mc(Kx, y, *, depth, activation, gamma0, eta, steps, samples, key, repeats=4,
                     probes=None):
    """Leading-order perturbation theory for a nonlinear network, on Monte-Carlo samples."""
    Kx, y, depth, gamma0, eta, steps, samples, repeats, probes = _mc_validate(
        Kx, y, depth, activation, gamma0, eta, steps, samples, repeats, probes)
    responses = depth >= 2
    (state, noise), (r_state, r_noise), (K_main, _) = _mc_setup(
        Kx, y, key, depth=depth, steps=steps, samples=samples, repeats=repeats, probes=probes,
        responses=responses)
    et = jnp.asarray(eta, Kx.dtype)
    run = dict(activation=activation, responses=responses)
    truncate = lambda b, s2: tuple(b_ + gamma0 ** 2 * s_ for b_, s_ in zip(b, s2))
    ntk, Phi, G = truncate(*_mc_second_order(state, noise, Kx, et, **run))
    r_ntk = truncate(*_mc_second_order_batched(r_state, r_noise, Kx, et, **run))[0]

    errors = lambda ntk_t: _euler_errors(y, ntk_t, eta)
    delta = errors(ntk)
    T1, S = steps + 1, samples
    empty = jnp.zeros((depth, T1, 0, Kx.shape[0]), Kx.dtype)   # no sampled fields to report
    return _finish(delta, _stderr(jax.vmap(errors)(r_ntk), repeats), ntk, list(Phi), list(G),
                   empty, empty, method="perturbative-monte-carlo", what="perturbative solve",
                   params=dict(depth=depth, activation=activation, gamma0=gamma0, eta=eta,
                               steps=steps, samples=S, repeats=repeats,
                               probes=K_main if responses else 0))
