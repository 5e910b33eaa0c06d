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

# XLA's CPU compiler, for this module's programs: LLVM at -O1 instead of -O2. The solvers' time
# is in matrix products (library calls) and memory traffic, not in the generated code, and -O2
# spent seconds per solver configuration in LLVM: -O1 compiles them 1.5-3x faster and runs them
# as fast, with the same numbers (one CPU core, JAX 0.5.3: Monte-Carlo pass of depth 2, S =
# 1000, T = 50: compile 1.8 -> 0.95 s, its repeats 2.5 -> 1.4 s; depth 3: 2.0 -> 1.3 s and
# 3.4 -> 2.0 s; the random draws 3x faster). (XLA's older whole-program CPU runtime also ran
# 10-20% faster, but its oneDNN rewriter aborts the process on some of these programs.) Other
# backends keep their defaults.
_CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def _jit(fun=None, **kwargs):
    """``jax.jit(fun, **kwargs)``, compiled with ``_CPU_COMPILER_OPTIONS`` on a CPU backend."""
    if fun is None:
        return partial(_jit, **kwargs)
    plain = jax.jit(fun, **kwargs)
    cpu = jax.jit(fun, compiler_options=_CPU_COMPILER_OPTIONS, **kwargs)

    def call(*args, **kw):
        return (cpu if jax.default_backend() == "cpu" else plain)(*args, **kw)

    call.__wrapped__, call.__doc__, call.__name__ = fun, fun.__doc__, getattr(fun, "__name__", "")
    call.lower = lambda *a, **k: (cpu if jax.default_backend() == "cpu" else plain).lower(*a, **k)
    return call


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


MAX_DEPTH = 64   # the solvers unroll their layers: compilation grows with the depth


def _validate(Kx, y, depth, gamma0, eta, steps):
    Kx = _checks.kernel_matrix(Kx, "Kx")
    _checks.representable(Kx, "Kx", power=2)     # (the kernels are products of Kx's entries)
    y = _checks.targets(y, Kx.shape[0], "y")
    depth = _checks.positive_int(depth, "depth")
    if depth > MAX_DEPTH:
        raise ValueError(f"depth must be <= {MAX_DEPTH}: the solvers unroll the layers, so "
                         f"compilation time grows with depth; got {depth}")
    gamma0 = _checks.nonnegative(gamma0, "gamma0")
    eta = _checks.nonnegative(eta, "eta")
    steps = _checks.positive_int(steps, "steps")
    dtype = jnp.zeros(()).dtype   # float64 when x64 is enabled
    return jnp.asarray(Kx, dtype), jnp.asarray(y, dtype), depth, gamma0, eta, steps


def _need(Kx, steps, depth, what, per_layer_square, extra=0.0):
    """Refuse a solve whose state would not fit in memory: ``per_layer_square`` (T+1)P x (T+1)P
    arrays per layer plus ``extra`` bytes. The argument to reduce is ``steps`` (the state grows
    like steps^2) unless the depth dominates."""
    TP = (steps + 1) * Kx.shape[0]
    item = jnp.zeros((), Kx.dtype).dtype.itemsize
    square = float(TP) ** 2 * item * per_layer_square * depth
    argname = "steps" if TP * TP * item * per_layer_square > 2 ** 26 or depth < 8 else "depth"
    _checks.fits(square + extra, argname, what)


def _diagnose(loss, ntk, eta, what, stable_cause=None, K0=None):
    """A warning message when a solve diverged (a non-finite loss, or a final loss above
    ``_checks.GROWTH`` times the initial one), naming eta and the stable learning rate; None
    otherwise. Non-finite kernels under a finite loss are reported too."""
    cause = stable_cause or ("the kernel grew during training (gamma0 too large for this eta) or "
                             "the fields overflowed: lower gamma0 or eta, or use float64")
    first = np.asarray(ntk[0])
    if K0 is not None and not np.all(np.isfinite(first)):   # (an iteration that blew up)
        first = np.asarray(K0)
    msg = _checks.divergence(loss, first, eta, what, cause)
    if msg is None and not _all_finite((ntk,)):
        msg = (f"{what}: the kernels hold NaN or infinite values although the loss is finite "
               "(the fields overflowed: lower gamma0, rescale the inputs or use float64)")
    return msg


# ----------------------------------------------------------------------------- causal solver
def _flags(responses, update):
    """``responses`` and ``update`` as traced arguments (one compiled solver serves all four
    combinations: the terms they switch cost nothing next to the rest of a step)."""
    exact = update == "exact" if isinstance(update, str) else update
    return jnp.asarray(responses, bool), jnp.asarray(exact, bool)


def _causal_solve(Kx, y, gamma0, eta, *, depth, steps, responses=True, update="euler",
                  return_state=False):
    """One forward pass over time: returns (delta, ntk, Phi, G, Hr, Gu), all exact, and with
    ``return_state`` also the final state dict (the operators A, Gr, X of every layer).
    ``responses`` (bool) and ``update`` (``"euler"``/``"exact"``) enter the compiled program as
    traced flags: one compilation per depth and number of steps."""
    return _causal_core(Kx, y, gamma0, eta, *_flags(responses, update), depth=depth,
                        steps=steps, return_state=return_state)


@_jit(static_argnames=("depth", "steps", "return_state"))
def _causal_core(Kx, y, gamma0, eta, responses, exact, *, depth, steps, return_state=False):
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
            if l < L - 1:
                b_row = b_row + jnp.where(responses, Gu[l + 1][t], 0.0)
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
            if l > 0:
                a_t = a_t + jnp.where(responses, rows(Hr[l - 1], t), 0.0)
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
        # exact discrete GD: f(t) = <g^L(t) h^L(t)> / gamma0 at infinite width
        g0 = jnp.where(gamma0 == 0, 1.0, gamma0)     # (at gamma0 = 0 Euler is exact)
        f_t = (cols(X[L - 1], t)[t] + rows(A[L - 1], t) @ G[L - 1][t]) / g0
        d_ex = jnp.where(t == 0, y, y - f_t)
        delta = delta.at[t].set(jnp.where(exact, d_ex, d_t))
        # Euler, or the exact update's provisional value (overwritten at t + 1)
        delta = delta.at[t + 1].set(jnp.where(exact, d_ex, d_t - c * K_t @ d_t))
        out = dict(Phi=Phi, G=G, A=A, Gr=Gr, Gu=Gu, Hr=Hr, X=X, delta=delta,
                   ntk=s["ntk"].at[t].set(K_t))
        return out, None

    final, _ = jax.lax.scan(step, state0, jnp.arange(T1))
    out = (final["delta"][:T1], final["ntk"], jnp.stack(final["Phi"]), jnp.stack(final["G"]),
           jnp.stack(final["Hr"]), jnp.stack(final["Gu"]))
    return out + (final,) if return_state else out


def _euler_errors(y, ntk, eta):
    """Errors ``Delta(t)`` (T+1, P) of the Euler dynamics ``Delta(t+1) = Delta(t) - (eta/P) K(t)
    Delta(t)`` from ``Delta(0) = y``, given the NTK ``K(t)`` at every step (T+1, P, P)."""
    c = eta / y.shape[0]
    return jax.lax.scan(lambda d, Kt: (d - c * Kt @ d, d), y, ntk)[1]


_euler_errors_jit = _jit(_euler_errors)     # (outside a compiled solver: one program per shape)
_euler_errors_batched = _jit(jax.vmap(_euler_errors, in_axes=(None, 0, None)))


# ----------------------------------------------------------------------------- dense map
def _dense_map(Kx, y, gamma0, eta, delta, Phi, G, Hr, Gu, *, responses=True, update="euler"):
    """One Jacobi sweep of the dense fixed-point equations (triangular solves, no inverses).

    Takes all fields at once and returns updated ``(delta, ntk, Phi, G, Hr, Gu)``; the
    solution of the DMFT is its fixed point. (``responses``, ``update``: traced flags, as in
    :func:`_causal_solve`.)
    """
    return _dense_core(Kx, y, gamma0, eta, delta, Phi, G, Hr, Gu, *_flags(responses, update))


@_jit
def _dense_core(Kx, y, gamma0, eta, delta, Phi, G, Hr, Gu, responses, exact):
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
    f = None
    for l in range(L):
        Phi_dn = Phi0 if l == 0 else Phi[l - 1]
        G_up = ones if l == L - 1 else G[l + 1]
        A = gamma0 * c * (Phi_dn * (dflat[None, :] * strict_h)).reshape(TP, T1, P).sum(-1)
        B = gamma0 * c * jnp.repeat(G_up, P, axis=1) * dflat[None, :] * strict_gh
        if l > 0:
            A = A + jnp.where(responses, Hr[l - 1] * strict_hg, 0.0)
        if l < L - 1:
            B = B + jnp.where(responses, Gu[l + 1] * strict_gh, 0.0)
        Gr = jax.scipy.linalg.solve_triangular(I - B @ A, I, lower=True, unit_diagonal=True)
        Gu_l = Gr @ B
        X = Gu_l @ Phi_dn
        G_l = Gr @ G_up @ Gr.T + X @ Gu_l.T
        AX = A @ X
        new["Phi"].append(Phi_dn + AX + AX.T + A @ G_l @ A.T)
        new["G"].append(G_l)
        new["Hr"].append(A @ Gr)
        new["Gu"].append(Gu_l)
        if l == L - 1:   # output f_mu(t) = <g^L(t) h^L_mu(t)> / gamma0 = (X + A G)((t,mu), t)
            XAG = (X.T + A @ G_l).reshape(T1, P, T1)
            f = XAG[jnp.arange(T1), :, jnp.arange(T1)] / jnp.where(gamma0 == 0, 1.0, gamma0)
    Phi_n, G_n = jnp.stack(new["Phi"]), jnp.stack(new["G"])
    diag = lambda M: M.reshape(T1, P, T1, P)[jnp.arange(T1), :, jnp.arange(T1), :]   # (T1, P, P)
    gdiag = jnp.diagonal(G_n, axis1=1, axis2=2)                                     # (L, T1)
    g_up = jnp.concatenate([gdiag[1:], jnp.ones((1, T1), dt)])                      # G^{l+1}(t,t)
    K = gdiag[0][:, None, None] * Kx[None] + sum(g_up[l][:, None, None] * diag(Phi_n[l])
                                                   for l in range(L))

    # Euler, or exact discrete gradient descent: Delta(t) = y - f(t), f(0) = 0
    errors = jnp.where(exact, (y[None, :] - f).at[0].set(y), _euler_errors(y, K, eta))
    return errors, K, Phi_n, G_n, jnp.stack(new["Hr"]), jnp.stack(new["Gu"])


def _residual(old, new):
    """Largest relative change over the fields (delta, Phi, G): max |new - old| / max |old|
    (on the host: no compilation per new shape)."""
    r = 0.0
    for o, n in zip(old, new):
        o, n = np.asarray(o), np.asarray(n)
        r = max(r, float(np.max(np.abs(n - o)) / max(float(np.max(np.abs(o))), 1e-30)))
    return r


@_jit
def _loss(delta):
    """``loss[t] = mean(delta[t]^2) / 2``."""
    return 0.5 * jnp.mean(delta ** 2, axis=1)


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
        ``"exact"`` (the infinite-width output of discrete gradient descent, ``f(t) = <g^L(t)
        h^L(t)> / gamma0``; at gamma0 = 0 the Euler form, which is then exact; needs
        ``responses=True`` at depth >= 2).
      tol: self-consistency tolerance (default 1e-9 in float64, 1e-4 in float32).
      damping: Picard mixing weight of the new iterate. max_iter: Picard iteration cap.
    """
    Kx, y, depth, gamma0, eta, steps = _validate(Kx, y, depth, gamma0, eta, steps)
    _checks.choice(method, "method", ("causal", "picard"))
    _checks.choice(update, "update", ("euler", "exact"))
    responses = _checks.flag(responses, "responses")
    damping = _checks.nonnegative(damping, "damping")
    max_iter = _checks.positive_int(max_iter, "max_iter")
    if method == "picard" and update == "exact":
        raise ValueError("update='exact' is only available with method='causal'")
    if update == "exact" and not responses and depth >= 2:
        raise ValueError(_NO_EXACT_WITHOUT_RESPONSES)
    if not 0 < damping <= 1:
        raise ValueError(f"damping must be in (0, 1]; got {damping!r}")
    _need(Kx, steps, depth, "this deep linear DMFT solve",
          8 if method == "causal" else 16)
    requested = update
    if update == "exact" and gamma0 == 0:
        update = "euler"          # the lazy network is linear in its weights: Euler is exact
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
    loss = _loss(delta)
    finite = _all_finite((delta, loss, ntk, Phi, G))
    if finite:    # the dense equations, evaluated once on the answer (an independent code path)
        check = _dense_map(Kx, y, g0, et, delta, *fields[2:], update=update, **args)
        residuals.append(_residual((delta, Phi, G), (check[0], check[2], check[3])))
    residuals = np.asarray(residuals if finite else [np.inf])
    # (at initialisation every Phi^l = Kx and G^l = 1: K(0) = (L + 1) Kx)
    diverged = _diagnose(loss, ntk, eta, "DMFT solve", K0=(depth + 1) * np.asarray(Kx))
    converged = bool(finite and residuals[-1] < tol and diverged is None)
    if diverged is not None:
        warnings.warn(diverged, RuntimeWarning, stacklevel=2)
    elif not converged:
        warnings.warn(f"DMFT solve not converged: residual {residuals[-1]:.3g} > tol {tol:.3g}"
                      + (f" after max_iter={max_iter} iterations (raise max_iter or lower "
                         f"damping)" if method != "causal" else ""),
                      RuntimeWarning, stacklevel=2)
    T1, P = steps + 1, Kx.shape[0]
    return DMFTSolution(delta=delta, loss=loss, ntk=ntk,
                        phi=Phi.reshape(depth, T1, P, T1, P), g=G, residuals=residuals,
                        converged=converged, method=method,
                        params=dict(depth=depth, gamma0=gamma0, eta=eta, steps=steps,
                                    responses=responses, update=requested))


def _monte_carlo(activation, samples, key, what):
    """True when an approximation must be sampled (a nonlinear activation); checks its inputs."""
    _checks.choice(activation, "activation", _checks.ACTIVATIONS)
    if activation == "linear":
        return False
    if samples is None or key is None:
        raise ValueError(f"{what} with activation={activation!r} is solved by Monte Carlo: "
                         "pass samples and key (as for dmft.nonlinear)")
    return True


def _mc_only(activation, **given):
    """Monte-Carlo settings make no sense for the exact linear solvers: refuse them."""
    if activation == "linear":
        for name, value in given.items():
            if value is not None:
                raise ValueError(f"{name} applies to Monte-Carlo solves only (a nonlinear "
                                 f"activation); the linear solver is exact. Got {name}={value!r}")


def _mc_kwargs(repeats, probes, progress):
    out = dict(probes=probes, progress=progress)
    if repeats is not None:
        out["repeats"] = repeats
    return out


def static_ntk(Kx, y, *, depth, eta, steps, activation="linear", samples=None, key=None,
               repeats=None, probes=None, progress=None):
    """The lazy (gamma0 = 0) limit: kernels frozen at initialisation.

    Linear networks (the default): exact, ``K = (L+1) Kx``. Nonlinear: :func:`nonlinear` at
    ``gamma0 = 0`` (the sampled arc-cosine kernels), which needs ``samples`` and ``key``
    (``repeats``, ``probes``, ``progress`` as there). The network is then linear in its
    weights, so the Euler update is also exact for discrete gradient descent.
    """
    if _monte_carlo(activation, samples, key, "static_ntk"):
        return nonlinear(Kx, y, depth=depth, activation=activation, gamma0=0.0, eta=eta,
                         steps=steps, samples=samples, key=key,
                         **_mc_kwargs(repeats, probes, progress))
    _mc_only(activation, samples=samples, key=key, repeats=repeats, probes=probes,
             progress=progress)
    Kx, y, depth, _, eta, steps = _validate(Kx, y, depth, 0.0, eta, steps)
    _need(Kx, steps, depth, "this static-NTK solve", 4)
    delta, loss, ntk, Phi, G = _static_linear(Kx, y, jnp.asarray(eta, Kx.dtype), depth=depth,
                                              steps=steps)
    finite = bool(_all_finite((delta, loss, ntk)))
    diverged = _diagnose(loss, ntk, eta, "static-NTK solve", K0=(depth + 1) * np.asarray(Kx))
    if diverged is not None:
        warnings.warn(diverged, RuntimeWarning, stacklevel=2)
    return DMFTSolution(delta=delta, loss=loss, ntk=ntk, phi=Phi, g=G, residuals=np.zeros(0),
                        converged=finite and diverged is None, method="closed form",
                        params=dict(depth=depth, gamma0=0.0, eta=eta, steps=steps))


@_jit(static_argnames=("depth", "steps"))
def _static_linear(Kx, y, eta, *, depth, steps):
    """The lazy linear network in closed form: every Phi^l(t, s) = Kx, G^l(t, s) = 1, so
    K(t) = (L + 1) Kx and ``Delta(t+1) = (I - eta K / P) Delta(t)`` (Euler, exact here: the
    lazy network is linear in its weights). No self-consistency to solve: the kernels never
    move, which is what :func:`deep_linear` at gamma0 = 0 finds by solving (to round-off)."""
    T1, P = steps + 1, Kx.shape[0]
    K = (depth + 1) * Kx
    step = lambda d, _: (d - (eta / P) * K @ d, d)
    _, delta = jax.lax.scan(step, y, None, length=T1)
    ntk = jnp.broadcast_to(K, (T1, P, P))
    Phi = jnp.broadcast_to(Kx[None, None, :, None, :], (depth, T1, P, T1, P))
    G = jnp.ones((depth, T1, T1), Kx.dtype)
    return delta, 0.5 * jnp.mean(delta ** 2, axis=1), ntk, Phi, G


def gradient_independence(Kx, y, *, depth, gamma0, eta, steps, activation="linear",
                          samples=None, key=None, repeats=None, probes=None, progress=None):
    """The gradient-independence ansatz: the DMFT without the response functions A, B.

    Linear networks: exact (:func:`deep_linear` with ``responses=False``); nonlinear:
    :func:`nonlinear` with ``responses=False`` (needs ``samples`` and ``key``). Always in the
    Euler (gradient-flow) form: see ``_NO_EXACT_WITHOUT_RESPONSES``.
    """
    if _monte_carlo(activation, samples, key, "gradient_independence"):
        return nonlinear(Kx, y, depth=depth, activation=activation, gamma0=gamma0, eta=eta,
                         steps=steps, samples=samples, key=key, responses=False,
                         **_mc_kwargs(repeats, probes, progress))
    _mc_only(activation, samples=samples, key=key, repeats=repeats, probes=probes,
             progress=progress)
    return deep_linear(Kx, y, depth=depth, gamma0=gamma0, eta=eta, steps=steps, responses=False)


# The exact discrete-time output f(t) = <z^L(t) phi(h^L(t))> / gamma0 rests on the correlations
# between a neuron's readout weight and its fields that the response functions carry. Without
# them (gradient independence, depth >= 2) it disagrees with the same ansatz's own NTK dynamics
# at O(1), not O(eta): 0.045-0.065 in the loss at eta = 0.1, gamma0 = 0.5-1.5 (linear and tanh,
# depth 2), more than the ansatz's error. So that combination is refused.
_NO_EXACT_WITHOUT_RESPONSES = (
    "update='exact' needs the response functions (responses=True) at depth >= 2: without them "
    "the discrete-time output is not consistent with the ansatz's own dynamics; use the Euler "
    "update for gradient independence")


def perturbative(Kx, y, *, depth, gamma0, eta, steps, activation="linear", samples=None,
                 key=None, repeats=None, probes=None):
    """Leading-order perturbation theory in the richness: kernels to O(gamma0^2).

    The kernels are even in gamma0, so ``Phi = Phi_0 + gamma0^2 Phi_2 + O(gamma0^4)`` with
    ``Phi_2 = (1/2) d^2 Phi / d gamma0^2`` at gamma0 = 0. The error then follows the Euler
    dynamics with the truncated NTK ``K_0(t) + gamma0^2 K_2(t)``. ``Phi_0`` and ``Phi_2`` do not
    depend on gamma0: they are computed once for given inputs and settings and reused by a sweep
    over gamma0. The second derivative is taken by central differences in gamma0 on the
    compiled solver, with nothing new to compile:

    Linear networks: exact solves, Richardson-extrapolated differences (relative error ~1e-4
    in float32, ~1e-9 in float64; see :func:`_linear_second_order`). Nonlinear (needs
    ``samples`` and ``key``): the Monte-Carlo solver on its fixed samples, one central
    difference (relative error ~5e-4, far below the Monte-Carlo error; see
    ``SECOND_ORDER_STEP``), which drops the odd, pure-noise first-order term; ``loss_stderr``
    from ``repeats`` independent sample sets.

    There is no self-consistency to check (the kernels are explicit derivatives):
    ``residuals`` is empty and ``converged`` says whether every returned array is finite.
    """
    if _monte_carlo(activation, samples, key, "perturbative"):
        return _perturbative_mc(Kx, y, depth=depth, activation=activation, gamma0=gamma0,
                                eta=eta, steps=steps, samples=samples, key=key,
                                probes=probes, **({} if repeats is None else {"repeats": repeats}))
    _mc_only(activation, samples=samples, key=key, repeats=repeats, probes=probes)
    Kx, y, depth, gamma0, eta, steps = _validate(Kx, y, depth, gamma0, eta, steps)
    _need(Kx, steps, depth, "this perturbative solve", 24)
    et = jnp.asarray(eta, Kx.dtype)
    ck = (_digest(Kx, y), float(eta), depth, steps)
    if ck not in _LINEAR_SECOND_ORDER:     # independent of gamma0: a sweep differentiates once
        _LINEAR_SECOND_ORDER[ck] = _linear_second_order(Kx, y, et, depth=depth, steps=steps)
        while len(_LINEAR_SECOND_ORDER) > _SECOND_ORDER_KEEP:
            _LINEAR_SECOND_ORDER.pop(next(iter(_LINEAR_SECOND_ORDER)))
    delta, loss, ntk, Phi, G = _truncated(*_LINEAR_SECOND_ORDER[ck], y,
                                          jnp.asarray(gamma0, Kx.dtype), et)
    T1, P = steps + 1, Kx.shape[0]
    finite = bool(_all_finite((delta, loss, ntk, Phi, G)))
    diverged = _diagnose(loss, ntk, eta, "perturbative solve", _PERTURBATIVE_CAUSE.format(gamma0))
    if diverged is not None or not finite:
        warnings.warn(diverged or "perturbative solve: the fields are not finite (lower gamma0)",
                      RuntimeWarning, stacklevel=2)
    return DMFTSolution(delta=delta, loss=loss, ntk=ntk,
                        phi=Phi.reshape(depth, T1, P, T1, P), g=G,
                        residuals=np.zeros(0), converged=finite and diverged is None,
                        method="perturbative",
                        params=dict(depth=depth, gamma0=gamma0, eta=eta, steps=steps))


_PERTURBATIVE_CAUSE = ("the expansion to order gamma0^2 left its range: it holds for small gamma0 "
                       "(gamma0={:g} here; the correction grows like gamma0^2): lower gamma0, or "
                       "use deep_linear / nonlinear for the full solution")
_LINEAR_SECOND_ORDER: dict = {}


def _linear_second_order(Kx, y, eta, *, depth, steps):
    """Kernels ``(ntk, Phi, G)`` of the deep linear solver at gamma0 = 0 and half their second
    derivative in gamma0, by differences on the compiled solver (gamma0 is one of its traced
    arguments, so nothing new is compiled), Richardson-extrapolated. The kernels are smooth and
    even in gamma0 -- the solver's are so exactly: K(-h) equals K(h) bit for bit (checked in
    float32 and float64, depths 1-5) -- so the central difference needs one side only:
    ``D(h) = (K(h) - K(0)) / h^2 = K_2 + O(h^2)`` and ``K_2 = (4 D(h) - D(2h)) / 3 + O(h^4)``.
    With h = 0.05 in float32 and 1e-3 in float64 the result agrees with nested forward-mode
    differentiation to ~1e-4 and ~1e-9 (relative Frobenius, depth 1-3, T = 100; in float32
    round-off limits it), at a fraction of its cost: the nested derivative compiled a program
    of its own, 1.5-5 s per depth on one CPU core, and ran for 1-3 s; this costs three solves
    (0.1-0.7 s each, depth 1-5: a panel's new eta)."""
    x64 = Kx.dtype == jnp.float64
    h = jnp.asarray(1e-3 if x64 else 0.05, Kx.dtype)
    K = lambda g: _causal_solve(Kx, y, g, eta, depth=depth, steps=steps)[1:4]
    return _richardson(K(0 * h), K(h), K(2 * h), h)


@_jit
def _richardson(zero, plus, plus2, h):
    """``(zero, half the second derivative)`` of an even function from its values at 0, h, 2h."""
    half = lambda p, z, hh: (p - z) / (hh * hh)
    second = jax.tree_util.tree_map(
        lambda z, p, p2: (4 * half(p, z, h) - half(p2, z, 2 * h)) / 3, zero, plus, plus2)
    return zero, second


@_jit
def _truncated(base, half_second, y, gamma0, eta):
    """The O(gamma0^2) kernels and the Euler errors and loss they drive."""
    ntk, Phi, G = (b + gamma0 ** 2 * s for b, s in zip(base, half_second))
    delta = _euler_errors(y, ntk, eta)
    return delta, 0.5 * jnp.mean(delta ** 2, axis=1), ntk, Phi, G


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
# random orthogonal matrix, which has covariance Phi^l exactly and only needs the present time
# (likewise r^l from g^{l+1}).
#
# Response functions. Each neuron's Jacobian J_i (of phi(h(t)) w.r.t. r(s) for A, of g(t) w.r.t.
# u(s) for B) solves the linearised field equations, J = (1 - M a)^{-1} M = M + M a J, whose
# leading term M_i is explicit:
#
#   A:  M_i(t,s) = phi'(h_i(t)) a(t,s) phi'(h_i(s))                                  (s < t)
#   B:  M_i(t,s) = phi'(h_i(t)) b(t,s) phi'(h_i(s)) + delta_ts phi''(h_i(t)) z_i(t)    (s <= t)
#
# so <M> = a (.) <phi'(t) phi'(s)> (likewise for b, plus the equal-time diagonal <phi'' z>) is
# computed *exactly* from the samples. Only the remainder J - M is estimated with random probes:
# each neuron carries `probes` tangent fields v, pushed forward in time by the linearised
# equations (forward mode), and a second tangent without the feedback gives M v, so
#
#   <J> ~ <M> + (1/(S K)) sum_{i,k} (J_i - M_i) v_ik v_ik^T,      E[v v^T] = 1 (Hutchinson).
#
# This control variate matters: a response estimate with noise delta-B enters z = r + B phi(h)
# linearly, so the kernels G = <phi'^2 z z^T> pick up a positive bias ~ <(delta-B phi)^2>. Plain
# probes carry the full neuron-to-neuron spread of J_i, dominated for tanh by the equal-time
# term phi''(h) z, whose mean is small and whose spread is large: at the default probe count
# that biased G^1 of a depth-2 tanh net by 10-20% (tr G^1(T)/P 0.84-0.87 against 0.75-0.76 for
# wide networks). With the exact <M> the remainder's spread is smaller by the feature-learning
# factor a, and the answer no longer depends on the number of probes (probes = 1 and 4 agree to
# 0.3% in tr G^1; the Monte-Carlo error of S = 1000 neurons is ~5%): see the tests.
# With S K >= (T+1) P the S K probe vectors are the rows of sqrt(S K) times a random matrix
# with orthonormal columns, so sum v v^T = S K exactly and a Jacobian shared by all neurons (a
# linear network's) is recovered without error.
#
# All of it is causal, so one pass over time (lax.scan) solves the equations: there is no outer
# fixed-point iteration.

def _derivatives(name):
    """phi, phi' and phi'' (elementwise, on the (S, P) fields of S sampled neurons).

    ``name`` may also be a traced integer, the index of the activation in
    ``_checks.ACTIVATIONS`` (see :func:`_activation_index`): the functions then switch between
    the activations at run time, so that one compiled solver serves all of them.

    For ReLU, phi'' is the delta function, whose averages (the equal-time response
    <delta(h) z>) the samples cannot resolve pointwise: it is replaced by a Gaussian kernel of
    Silverman's bandwidth 1.06 sd(h) S^(-1/5) per example, a consistent estimator of those
    averages (bias O(bandwidth^2), noise O((S bandwidth)^-1/2)).
    """
    if not isinstance(name, str):
        table = [_derivatives(a) for a in _checks.ACTIVATIONS]
        return tuple((lambda h, k=k: jax.lax.switch(name, [f[k] for f in table], h))
                     for k in range(3))
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


def _activation_index(name):
    """The activation as a traced argument of the compiled solvers: its index in
    ``_checks.ACTIVATIONS`` (compiling a solver costs seconds; switching between the elementwise
    functions costs nothing next to its matrix products)."""
    return jnp.asarray(_checks.ACTIVATIONS.index(name), jnp.int32)


def _orthonormal(key, n, m, dtype):
    """sqrt(n) times an (n, m) matrix with orthonormal columns (m <= n), Haar-distributed."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (n, m), dtype))
    return q * jnp.sign(jnp.diagonal(r))[None, :] * jnp.sqrt(jnp.asarray(n, dtype))


# The random numbers of a solve are drawn by small programs compiled once per *shape* (below),
# not by one program per solver configuration: drawing them (threefry, QR) cost ~6 s of
# compilation per configuration on a CPU core, more than the pass itself, and the shapes are
# shared by every depth, activation and setting of ``responses`` at the same S and T. The keys
# and the draws are those of the single program they replace: the same numbers.
_ortho_jit = _jit(_orthonormal, static_argnums=(1, 2, 3))
_normal_jit = _jit(jax.random.normal, static_argnums=(1, 2))


@_jit(static_argnames=("samples",))
def _mc_first(Kx, key, *, samples):
    """The six keys of a solve, its first-layer sources u^1 (S, P) with covariance exactly Kx and
    its readout weights w (S,) with mean square exactly 1."""
    S, P, dt = samples, Kx.shape[0], Kx.dtype
    k = jax.random.split(key, 6)
    lam, V = jnp.linalg.eigh(Kx)
    root = V * jnp.sqrt(jnp.clip(lam, 0.0))                 # Kx = root root^T (PSD-safe)
    white = _orthonormal(k[0], S, P, dt) if S >= P else jax.random.normal(k[0], (S, P), dt)
    w = jax.random.normal(k[1], (S,), dt)
    return k, white @ root.T, w / jnp.sqrt(jnp.mean(w ** 2))


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
    k, u1, w = _mc_first(Kx, key, samples=S)
    nA = L - 1 if responses else 0

    def stack(draw, kk, n, shape):          # one draw per key of split(kk, n), stacked
        if n == 0:
            return jnp.zeros((0,) + shape, dt)
        return jnp.stack([draw(q) for q in jax.random.split(kk, n)])

    ortho = lambda kk: stack(lambda q: _ortho_jit(q, S, S, dt), kk, L - 1, (S, S))

    def probe(kk):
        if S * K >= T1 * P:
            return stack(lambda q: _ortho_jit(q, S * K, T1 * P, dt), kk, nA, (S * K, T1 * P))
        return _normal_jit(kk, (nA, S * K, T1 * P), dt)

    return dict(u1=u1, w=w, Xu=ortho(k[2]), Xr=ortho(k[3]), vA=probe(k[4]), vB=probe(k[5]))


def _mc_state(Kx, y, *, depth, steps, samples, probes, responses, batch=()):
    """The zero state of a solve (with a leading axis ``batch`` for the repeats)."""
    S, K, L, P, T1 = samples, probes, depth, Kx.shape[0], steps + 1
    TP, dt = T1 * P, Kx.dtype
    z = lambda *shape: jnp.zeros(tuple(batch) + shape, dt)
    nA = L - 1 if responses else 0
    tangents = lambda: [z(S * K, TP) for _ in range(nA)]
    delta = jnp.broadcast_to(z(T1 + 1, P).at[..., 0, :].set(y), tuple(batch) + (T1 + 1, P))
    return dict(F=[z(S, TP) for _ in range(L)], Gh=[z(S, TP) for _ in range(L)],
                Dh=[z(S, TP) for _ in range(L if nA else 0)],
                Phi=[z(TP, TP) for _ in range(L)], G=[z(TP, TP) for _ in range(L)],
                A=[z(TP, TP) for _ in range(nA)], B=[z(TP, TP) for _ in range(nA)],
                dFA=tangents(), dGA=tangents(), dGA0=tangents(),
                dFB=tangents(), dGB=tangents(), dFB0=tangents(),
                delta=delta, ntk=z(T1, P, P))


_mc_state_jit = _jit(_mc_state, static_argnames=("depth", "steps", "samples", "probes",
                                                 "responses", "batch"))
_stack_trees = _jit(lambda trees: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *trees))


def _mc_chunk_impl(state, noise, Kx, y, gamma0, eta, t0, *, activation, chunk, responses,
                   update="euler"):
    """Advance the single-site process by ``chunk`` time steps from ``t0`` (one lax.scan).

    ``update``: ``"euler"``, ``"exact"``, or a traced boolean (True: exact), which lets one
    compiled program serve both updates (:func:`_mc_chunk`)."""
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
    rep = lambda x: jnp.repeat(x, K, axis=0)         # (S, P) -> (S K, P): one row per probe

    def rows(M, t):
        return jax.lax.dynamic_slice_in_dim(M, t * P, P, axis=0)

    def block(M, t):                            # M (n, TP) -> the columns of time t, (n, P)
        return jax.lax.dynamic_slice_in_dim(M, t * P, P, axis=1)

    def put_col(M, t, v):                       # M (n, TP), v (n, P): the block of time t
        return jax.lax.dynamic_update_slice_in_dim(M, v, t * P, axis=1)

    def put_row(M, t, v):                       # M (TP, TP), v (P, TP): the rows of time t
        return jax.lax.dynamic_update_slice_in_dim(M, v, t * P, axis=0)

    def put_sym(M, t, row):                     # kernel row t (P, TP) into rows and columns t
        return put_col(put_row(M, t, row), t, row.T)

    def response_row(tangent, tangent0, probes_l, coef, mean_dd, mask):
        """Row t of a response function: the exact average of its leading term (the
        coefficient times <phi'(t) phi'(s)>) plus the probe estimate of the rest."""
        return (coef * mean_dd + (tangent - tangent0).T @ probes_l / SK) * mask[None, :]

    def step(s, t):
        s = {k: (list(v) if isinstance(v, list) else v) for k, v in s.items()}
        past, upto = (t_of < t).astype(dt), (t_of <= t).astype(dt)
        dflat = s["delta"][:T1].reshape(-1) * past          # Delta(s) on (s, nu), zero for s >= t
        hs, ph, dph, d2ph, dhA, dhB = [], [], [], [], {}, {}
        # forward fields h^l(t), from the input up (they need g only at earlier times)
        for l in range(L):
            phi_dn = Kx_row if l == 0 else rows(s["Phi"][l - 1], t)
            a_row = c * phi_dn * dflat[None, :]
            if responses and l > 0:
                a_row = a_row + rows(s["A"][l - 1], t)
            u = noise["u1"] if l == 0 else noise["Xu"][l - 1] @ ph[l - 1] / rS
            h = u + s["Gh"][l] @ a_row.T
            p, d1 = phi(h), dphi(h)
            s["F"][l] = put_col(s["F"][l], t, p)
            s["Phi"][l] = put_sym(s["Phi"][l], t, p.T @ s["F"][l] / S)
            hs.append(h), ph.append(p), dph.append(d1), d2ph.append(d2phi(h))
            if responses:
                s["Dh"][l] = put_col(s["Dh"][l], t, d1)
                dd = d1.T @ s["Dh"][l] / S                  # <phi'(h(t)) phi'(h(s))>, (P, TP)
            if responses and l < L - 1:                     # tangent w.r.t. r^l: A^l(t, .)
                dh = s["dGA"][l] @ a_row.T                  # (S K, P)
                dp = rep(d1) * dh
                dp0 = rep(d1) * (s["dGA0"][l] @ a_row.T)    # its leading term, without feedback
                s["dFA"][l] = put_col(s["dFA"][l], t, dp)
                s["A"][l] = put_row(s["A"][l], t, response_row(dp, dp0, noise["vA"][l], a_row,
                                                               dd, past))
                dhA[l] = dh
            if responses and l > 0:                         # tangent w.r.t. u^l: B^{l-1}(t, .)
                v_t = block(noise["vB"][l - 1], t)
                dh = v_t + s["dGB"][l - 1] @ a_row.T
                s["dFB"][l - 1] = put_col(s["dFB"][l - 1], t, rep(d1) * dh)
                s["dFB0"][l - 1] = put_col(s["dFB0"][l - 1], t, rep(d1) * v_t)
                dhB[l] = (dh, v_t, dd)
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
            if responses:
                dK, cK = rep(dph[l]), rep(d2ph[l] * zt)     # phi'(h(t)), phi''(h(t)) z(t)
            if responses and l < L - 1:
                v_t = block(noise["vA"][l], t)
                dz = v_t + s["dFA"][l] @ b_row.T
                s["dGA"][l] = put_col(s["dGA"][l], t, dK * dz + cK * dhA[l])
                s["dGA0"][l] = put_col(s["dGA0"][l], t, dK * v_t)
            if responses and l > 0:
                dh, v_t, dd = dhB[l]
                dg = dK * (s["dFB"][l - 1] @ b_row.T) + cK * dh
                dg0 = dK * (s["dFB0"][l - 1] @ b_row.T) + cK * v_t     # leading term
                s["dGB"][l - 1] = put_col(s["dGB"][l - 1], t, dg)
                # <M>: b(t,s) <phi'(t) phi'(s)> plus the equal-time diagonal <phi''(h(t)) z(t)>
                eq = put_col(jnp.zeros((P, TP), dt), t, jnp.diag(jnp.mean(d2ph[l] * zt, 0)))
                s["B"][l - 1] = put_row(s["B"][l - 1], t, response_row(
                    dg, dg0, noise["vB"][l - 1], b_row, dd, upto) + eq)
        # the NTK K(t) = sum_l G^{l+1}(t,t) Phi^l(t,t) (Phi^0 = Kx, G^{L+1} = 1) and the error
        Gtt = [g.T @ g / S for g in gs] + [jnp.ones((P, P), dt)]
        K_t = Gtt[0] * Kx + sum(Gtt[l + 1] * (ph[l].T @ ph[l] / S) for l in range(L))
        d_t = s["delta"][t]
        if update == "euler":
            s["delta"] = s["delta"].at[t + 1].set(d_t - (eta / P) * K_t @ d_t)
        else:   # exact discrete GD: f(t) = <z^L(t) phi(h^L(t))> / gamma0, centred at f(0)
            g0 = jnp.where(gamma0 == 0, 1.0, gamma0)      # (the lazy network is Euler's)
            moved = noise["w"] @ (ph[L - 1] - block(s["F"][L - 1], 0)) / S / g0
            f_t = moved + (eta / P) * rows(s["Phi"][L - 1], t) @ dflat
            d_ex = jnp.where(t == 0, y, y - f_t)
            if update == "exact":
                d_t, d_next = d_ex, d_ex                      # t+1 is provisional
            else:   # a traced flag: one compiled program for both updates
                d_t = jnp.where(update, d_ex, d_t)
                d_next = jnp.where(update, d_ex, d_t - (eta / P) * K_t @ d_t)
            s["delta"] = s["delta"].at[t].set(d_t).at[t + 1].set(d_next)
        s["ntk"] = s["ntk"].at[t].set(K_t)
        return s, (jnp.stack(hs), jnp.stack(zs))

    return jax.lax.scan(step, state, t0 + jnp.arange(chunk))


@_jit(static_argnames=("chunk", "responses"))
def _mc_chunk_either(state, noise, Kx, y, gamma0, eta, t0, exact, act, *, chunk, responses):
    """:func:`_mc_chunk_impl` with the update as a traced flag ``exact`` and the activation as a
    traced index ``act`` (one compilation for both updates and every activation; the exact
    output and the activation switch cost O(S P) per step, nothing next to the fields)."""
    return _mc_chunk_impl(state, noise, Kx, y, gamma0, eta, t0, activation=act,
                          chunk=chunk, responses=responses, update=exact)


def _mc_chunk(state, noise, Kx, y, gamma0, eta, t0, *, activation, chunk, responses,
              update="euler"):
    """One pooled solve advanced by ``chunk`` steps (compiled once for both updates and all
    activations)."""
    return _mc_chunk_either(state, noise, Kx, y, gamma0, eta, t0,
                            jnp.asarray(update == "exact"), _activation_index(activation),
                            chunk=chunk, responses=responses)


def _over_repeats(f, states, noises):
    """``f(state, noise)`` for each of a batch of independent solves (leading axis), stacked.

    On a CPU one solve after another (lax.map): there the vmapped pass (batched matrix
    products) ran 2.6x slower and took 1.4x longer to compile (depth 2, S = 1000, T = 50, one
    core); on a GPU or TPU one vmapped program, whose batch fills the device."""
    if jax.default_backend() != "cpu":
        return jax.vmap(f)(states, noises)
    return jax.lax.map(lambda a: f(*a), (states, noises))


@_jit(static_argnames=("chunk", "responses"))
def _mc_chunk_batched_either(states, noises, Kx, y, gamma0, eta, t0, exact, act, *, chunk,
                             responses):
    f = lambda st, nz: _mc_chunk_impl(st, nz, Kx, y, gamma0, eta, t0, activation=act,
                                      chunk=chunk, responses=responses, update=exact)
    return _over_repeats(f, states, noises)


def _mc_chunk_batched(states, noises, Kx, y, gamma0, eta, t0, *, activation, chunk, responses,
                      update="euler"):
    """:func:`_mc_chunk_impl` for a batch of independent solves (the repeats of loss_stderr),
    through :func:`_over_repeats` (compiled once for both updates)."""
    return _mc_chunk_batched_either(states, noises, Kx, y, gamma0, eta, t0,
                                    jnp.asarray(update == "exact"),
                                    _activation_index(activation), chunk=chunk,
                                    responses=responses)


def _gaussian(key, C, n):
    """n draws of N(0, C) for a PSD matrix C (m, m) -> (n, m), through its eigendecomposition
    (a kernel of slowly varying fields is close to singular, so no Cholesky)."""
    lam, V = jnp.linalg.eigh((C + C.T) / 2)
    return jax.random.normal(key, (n, C.shape[0]), C.dtype) @ (V * jnp.sqrt(jnp.clip(lam, 0.0))).T


_gaussian_jit = _jit(_gaussian, static_argnums=(2,))


@_jit
def _mc_resample_layer(Phi_dn, G_up, A, B, delta, u, r, gamma0, eta, activation):
    """One layer of :func:`_mc_resample`: the fields of S fresh neurons driven by the sources
    ``u``, ``r`` (S, (T+1) P), the kernels of the layers below and above (``Phi_dn``, ``G_up``)
    and the response functions ``A``, ``B`` entering this layer (zeros where there are none);
    returns ``(_estimate(F), _estimate(Gh))``. ``activation``: a traced index
    (:func:`_activation_index`). Compiled once per shape, whatever the activation, the depth and
    the position of the layer."""
    TP, S = Phi_dn.shape[0], u.shape[0]
    P = delta.shape[1]
    T1, dt = TP // P, u.dtype
    phi, dphi, _ = _derivatives(activation)
    c = gamma0 * eta / P
    t_of = jnp.arange(TP) // P
    causal = (t_of[None, :] < t_of[:, None]).astype(dt) * delta.reshape(-1)[None, :]
    a = c * Phi_dn * causal + A
    b = c * G_up * causal + B

    def step(carry, t):
        F, Gh = carry
        cols = lambda M: jax.lax.dynamic_slice_in_dim(M, t * P, P, axis=1)
        rows = lambda M: jax.lax.dynamic_slice_in_dim(M, t * P, P, axis=0)
        h = cols(u) + Gh @ rows(a).T
        F = jax.lax.dynamic_update_slice_in_dim(F, phi(h), t * P, axis=1)
        g = dphi(h) * (cols(r) + F @ rows(b).T)
        return (F, jax.lax.dynamic_update_slice_in_dim(Gh, g, t * P, axis=1)), None

    (F, Gh), _ = jax.lax.scan(step, (jnp.zeros((S, TP), dt),) * 2, jnp.arange(T1))
    return _estimate(F), _estimate(Gh)


def _mc_resample(Kx, delta, Phi, G, A, B, gamma0, eta, key, *, activation, samples):
    """Kernels re-estimated from ``samples`` *fresh* single-site neurons per layer, driven by
    independent Gaussian sources drawn from the returned kernels and by the returned response
    functions and errors (one alternating-sampling sweep, see the module doc). At a solution
    they agree with the returned kernels up to the Monte-Carlo error of the fresh samples.

    Given the sources the layers decouple, so each is one lax.scan over time
    (:func:`_mc_resample_layer`, compiled once whatever the depth).
    """
    Kx, delta, Phi, G = (jnp.asarray(x) for x in (Kx, delta, Phi, G))
    L, TP = Phi.shape[0], Phi.shape[1]
    P = Kx.shape[0]
    T1, S, dt = TP // P, samples, Kx.dtype
    g0, et = jnp.asarray(gamma0, dt), jnp.asarray(eta, dt)
    keys = jax.random.split(key, 2 * L)
    zeros = jnp.zeros((TP, TP), dt)
    new_Phi, new_G = [], []
    for l in range(L):
        Phi_dn = jnp.tile(Kx, (T1, T1)) if l == 0 else Phi[l - 1]
        G_up = jnp.ones((TP, TP), dt) if l == L - 1 else G[l + 1]
        A_l = A[l - 1] if (A is not None and l > 0) else zeros
        B_l = B[l] if (B is not None and l < L - 1) else zeros
        u = (jnp.tile(_gaussian_jit(keys[2 * l], Kx, S), (1, T1)) if l == 0
             else _gaussian_jit(keys[2 * l], Phi_dn, S))
        r = (jnp.broadcast_to(_normal_jit(keys[2 * l + 1], (S, 1), dt), (S, TP))
             if l == L - 1 else _gaussian_jit(keys[2 * l + 1], G_up, S))
        est_F, est_G = _mc_resample_layer(Phi_dn, G_up, A_l, B_l, delta, u, r, g0, et,
                                          _activation_index(activation))
        new_Phi.append(est_F)
        new_G.append(est_G)
    return tuple(jnp.stack(k) for k in zip(*new_Phi)), tuple(jnp.stack(k) for k in zip(*new_G))


def _estimate(F):
    """Kernel estimate K = F^T F / S from S i.i.d. rows of fields F, and the expected squared
    Frobenius norm of its error, E|K - <K>|^2 = (E|f|^4 - |<K>|^2) / S, with E|f|^4 the mean
    fourth power of a row's norm (for Gaussian fields this is ((tr K)^2 + |K|^2) / S; fields
    of a bounded activation have lighter, ReLU's heavier fourth moments)."""
    S = F.shape[0]
    K = F.T @ F / S
    m4 = jnp.mean(jnp.sum(F ** 2, axis=1) ** 2)
    return K, jnp.maximum(m4 - jnp.sum(K ** 2), 0.0) / S


def _mc_residual(old, new, noise2):
    """Largest ratio, over the layers of (L, m, m) kernels, of the Frobenius difference between
    returned and re-estimated kernels to its expected size at a solution, sqrt(2 noise2) (both
    are estimates from as many neurons, with independent errors)."""
    return float(_mc_residual_jit(old, new, noise2))


@_jit
def _mc_residual_jit(old, new, noise2):
    diff2 = jnp.sum((new - old) ** 2, axis=(1, 2))
    return jnp.max(jnp.sqrt(diff2 / (2 * noise2)))


class NonlinearSolution(NamedTuple):
    """Monte-Carlo DMFT solution (P samples, T = steps, L = depth, S single-site neurons).

    ``delta`` (T+1, P), ``loss`` (T+1,), ``loss_stderr`` (T+1,) the Monte-Carlo standard error of
    ``loss`` (from independent repeats), ``ntk`` (T+1, P, P); ``phi`` and ``g`` (L, T+1, P, T+1, P)
    the feature and gradient kernels Phi^l(t, s), G^l(t, s) for l = 1..L; ``h`` and ``z``
    (L, T+1, S, P) the sampled pre-activations and backward fields (``g^l = phi'(h^l) z^l``), for
    densities; ``residuals``, ``converged``, ``method``, ``params`` as in :class:`DMFTSolution`;
    ``kernel_err``: relative Monte-Carlo standard errors of the equal-time kernels, a dict with
    ``phi`` and ``g`` (L, T+1) and ``ntk`` (T+1,) (see :func:`kernel_stderr`).
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
    kernel_err: dict | None = None


def band(sol, sigmas=3.0):
    """Half-width of a band around ``sol.loss`` with the coverage of +-``sigmas`` Gaussian
    standard deviations (99.7% for 3), allowing for ``loss_stderr`` being itself estimated from
    ``repeats`` solves: Student's t quantile with repeats - 1 degrees of freedom times
    ``loss_stderr`` (3 s.e. become 9.2 estimated s.e. at 4 repeats, 4.5 at 8, 3.6 at 16)."""
    from scipy import stats
    sigmas = _checks.nonnegative(sigmas, "sigmas", strict=True)
    params = getattr(sol, "params", None)
    repeats = params.get("repeats") if isinstance(params, dict) else None
    if not repeats or getattr(sol, "loss_stderr", None) is None:
        raise ValueError("sol must be a Monte-Carlo solution of wn.dmft.nonlinear (with "
                         f"params['repeats'] and loss_stderr); got {type(sol).__name__}")
    # the upper tail's probability, not the coverage: norm.cdf(9) rounds to 1, whose t quantile
    # is infinite
    q = float(stats.t.isf(stats.norm.sf(sigmas), repeats - 1))
    if not (np.isfinite(q) and q > 0):   # the tail probability underflows (sigmas ~ 20 or more)
        raise ValueError(f"sigmas={sigmas!r} is too large: its Gaussian tail probability "
                         f"{stats.norm.sf(sigmas):.3g} has no finite Student-t quantile at "
                         f"{repeats - 1} degrees of freedom in float64")
    return q * sol.loss_stderr


def kernel_stderr(sol, t=-1):
    """Relative Monte-Carlo standard errors |K^ - K|_F / |K|_F of the equal-time kernels of a
    Monte-Carlo solution at step ``t``: ``(phi, g, ntk)``, arrays (L,), (L,) and a float.

    Like ``loss_stderr`` they come from the ``repeats`` independent solves that run alongside
    the pooled one: the spread of the repeats' kernels, divided by sqrt(repeats) (the pooled
    solve has that many times their neurons). This includes what a formula for independent
    samples would miss: the noise that the sampled kernels and response functions feed back
    into the fields (in deep ReLU networks, through the kernel estimate of phi'' = delta, it
    doubles the error), and the noise that moment matching removes (see :func:`_mc_noise`).
    Being estimated from ``repeats`` solves, an error is itself uncertain by about
    1 / sqrt(2 (repeats - 1)) (27% at 8 repeats).
    """
    if not isinstance(sol, NonlinearSolution) or sol.kernel_err is None:
        raise ValueError("sol must be a Monte-Carlo solution of nonlinear() or perturbative()")
    T1 = sol.loss.shape[0]
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not -T1 <= t < T1:
        raise ValueError(f"t must be an integer time index in [-{T1}, {T1 - 1}]; got {t!r}")
    e = sol.kernel_err
    return e["phi"][:, t], e["g"][:, t], float(e["ntk"][t])


def _equal_time(K, T1, P):
    """(..., (T+1) P, (T+1) P) two-time kernels -> (..., T+1, P, P) equal-time blocks K(t, t)."""
    K5 = K.reshape(K.shape[:-2] + (T1, P, T1, P))
    return jnp.moveaxis(jnp.diagonal(K5, axis1=-4, axis2=-2), -1, -3)


def _repeat_errors(ntk, Phi, G, r_ntk, r_Phi, r_G):
    """Relative standard errors of the pooled solve's equal-time kernels from the repeats' spread
    (leading axis R of ``r_*``): sqrt(sum_r |K_r - mean|^2 / (R - 1)) / sqrt(R) / |K|."""
    return {k: np.asarray(v, np.float64)
            for k, v in _repeat_errors_jit(ntk, Phi, G, r_ntk, r_Phi, r_G).items()}


@_jit
def _repeat_errors_jit(ntk, Phi, G, r_ntk, r_Phi, r_G):
    T1, P = ntk.shape[0], ntk.shape[1]

    def rel(main, reps):
        R = reps.shape[0]
        dev2 = jnp.sum((reps - reps.mean(0)) ** 2, axis=(-2, -1)).sum(0) / (R - 1)
        norm = jnp.maximum(jnp.linalg.norm(main, axis=(-2, -1)), jnp.finfo(main.dtype).tiny)
        return jnp.sqrt(dev2 / R) / norm

    return dict(phi=rel(_equal_time(Phi, T1, P), _equal_time(r_Phi, T1, P)),
                g=rel(_equal_time(G, T1, P), _equal_time(r_G, T1, P)), ntk=rel(ntk, r_ntk))


def _all_finite(arrays):
    """True when every entry of every array of ``arrays`` is finite (checked on the host: a
    compiled check costs ~0.3 s per new set of shapes, more than reading the arrays)."""
    return all(bool(np.isfinite(np.asarray(a)).all()) for a in arrays)


def _chunks(T1, progress):
    if not progress:
        return [T1]
    n = -(-T1 // 10)
    return [n] * (T1 // n) + ([T1 % n] if T1 % n else [])


def _auto_probes(T1, P, samples):
    """Fewest probes with ``samples * probes >= (T+1) P``: the probes of every neuron together
    then span the whole source space, and are drawn orthogonal (see :func:`_mc_noise`)."""
    return max(1, -(-T1 * P // samples))


def _digest(*arrays):
    """A hash of the arrays' bytes, dtypes and shapes (PRNG keys included): a cache key."""
    import hashlib
    digest = hashlib.sha256()
    for a in arrays:
        a = np.asarray(jax.random.key_data(a) if jax.dtypes.issubdtype(
            a.dtype, jax.dtypes.prng_key) else a)
        digest.update(f"{a.dtype}{a.shape}".encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


# The random numbers of a solve depend only on Kx, the key and the sizes, not on gamma0, eta,
# the activation or the update: a sweep over gamma0 with one key (Chapter 4's common random
# numbers) draws them once. Drawing them (QR factorisations of S x S and S K x (T+1) P
# matrices) costs ~0.7 s at S = 1000, depth 2 on one CPU core, a third of a solve. The last
# two sets are kept (~40 MB at that size).
_NOISE: dict = {}
_NOISE_KEEP = 2


def _mc_noise_all(Kx, key, *, depth, steps, samples, repeats, probes, responses):
    """The noise of the pooled solve and the stacked noise of the repeats (cached, see above)."""
    K_main, K_rep = probes
    base = (_digest(Kx, key), depth, steps, samples, repeats, K_main, K_rep)
    if (base, responses) in _NOISE:
        _NOISE[base, responses] = _NOISE.pop((base, responses))        # most recently used last
        return _NOISE[base, responses]
    if not responses and (base, True) in _NOISE:    # the same draws without the probes
        main, reps = _NOISE[base, True]
        return (dict(main, vA=main["vA"][:0], vB=main["vB"][:0]),
                dict(reps, vA=reps["vA"][:, :0], vB=reps["vB"][:, :0]))
    k_main, k_rep = jax.random.split(key)
    kw = dict(depth=depth, steps=steps, responses=responses)
    main = _mc_noise(Kx, k_main, samples=samples, probes=K_main, **kw)
    r_noise = [_mc_noise(Kx, k, samples=samples // repeats, probes=K_rep, **kw)
               for k in jax.random.split(k_rep, repeats)]
    out = (main, _stack_trees(r_noise))
    _NOISE[base, responses] = out
    while len(_NOISE) > _NOISE_KEEP:
        _NOISE.pop(next(iter(_NOISE)))
    return out


def _mc_setup(Kx, y, key, *, depth, steps, samples, repeats, probes, responses):
    """States and noise of the pooled solve (``samples`` neurons) and of the ``repeats``
    independent solves of ``samples // repeats`` neurons that estimate the Monte-Carlo error;
    and the numbers of probes of each."""
    T1, P = steps + 1, Kx.shape[0]
    K_main = probes or _auto_probes(T1, P, samples)
    K_rep = probes or _auto_probes(T1, P, samples // repeats)
    kw = dict(depth=depth, steps=steps, responses=responses)
    noise, r_noise = _mc_noise_all(Kx, key, samples=samples, repeats=repeats,
                                   probes=(K_main, K_rep), **kw)
    main = (_mc_state_jit(Kx, y, samples=samples, probes=K_main, **kw), noise)
    reps = (_mc_state_jit(Kx, y, samples=samples // repeats, probes=K_rep, batch=(repeats,),
                          **kw), r_noise)
    return main, reps, (K_main, K_rep)


def _stderr(rep_delta, repeats):
    """Monte-Carlo standard error of the pooled loss from the repeats' errors (R, T+1, P): the
    pooled solve has R times the neurons of one repeat, so its error is smaller by sqrt(R)."""
    return _stderr_jit(rep_delta, repeats)


@_jit(static_argnums=(1,))
def _stderr_jit(rep_delta, repeats):
    rep_loss = 0.5 * jnp.mean(rep_delta ** 2, axis=-1)
    return jnp.std(rep_loss, axis=0, ddof=1) / jnp.sqrt(repeats)


MIN_SAMPLES_PER_REPEAT = 64   # deep ReLU: the kernel estimate of phi'' = delta needs this many


def _mc_validate(Kx, y, depth, activation, gamma0, eta, steps, samples, repeats, probes, key):
    Kx, y, depth, gamma0, eta, steps = _validate(Kx, y, depth, gamma0, eta, steps)
    _checks.choice(activation, "activation", _checks.ACTIVATIONS)
    samples = _checks.positive_int(samples, "samples", minimum=2)
    repeats = _checks.positive_int(repeats, "repeats", minimum=2)
    key = _checks.prng_key(key, "key")
    if probes is not None:
        probes = _checks.positive_int(probes, "probes")
    if samples < 2 * repeats:
        raise ValueError(f"samples must be at least 2 * repeats = {2 * repeats}; got {samples}")
    if activation == "relu" and depth >= 2 and samples // repeats < MIN_SAMPLES_PER_REPEAT:
        raise ValueError(
            f"samples must be at least {MIN_SAMPLES_PER_REPEAT} * repeats = "
            f"{MIN_SAMPLES_PER_REPEAT * repeats} for a deep ReLU network: each of the {repeats} "
            f"repeats estimates phi'' = delta(h) with a kernel over its samples // repeats = "
            f"{samples // repeats} neurons, which is too few; got samples={samples}")
    # memory of the state (the pooled solve and the repeats, which hold as many neurons)
    T1, P = steps + 1, Kx.shape[0]
    TP = T1 * P
    SK = max(samples * (probes or 1), TP) if depth >= 2 else 0
    item = jnp.zeros((), Kx.dtype).dtype.itemsize
    per_solve = depth * (4.0 * TP * TP + 6.0 * samples * TP) + (depth - 1) * (
        2.0 * samples ** 2 + 8.0 * SK * TP)
    _checks.fits(2 * 2 * per_solve * item, "samples" if samples > TP else "steps",
                 f"this Monte-Carlo DMFT solve (samples={samples}, steps={steps}, depth={depth})")
    return Kx, y, depth, gamma0, eta, steps, samples, repeats, probes, key


@_jit
def _package(delta, Phi, G):
    """The loss, and the kernels (lists or stacks of (TP, TP) matrices) as (L, T+1, P, T+1, P)."""
    Phi, G = jnp.stack(Phi), jnp.stack(G)
    T1, P = delta.shape
    shape = (Phi.shape[0], T1, P, T1, P)
    return 0.5 * jnp.mean(delta ** 2, axis=1), Phi.reshape(shape), G.reshape(shape)


@_jit(static_argnames=("repeats",))
def _mc_collect(state, r_state, records, *, repeats):
    """Everything nonlinear() returns from the final states of the pooled solve and of the
    repeats and the chunks' records of the fields, in one compiled step: errors, NTK, stacked
    kernels and responses, sampled fields (L, T+1, S, P), ``loss_stderr`` and the relative
    Monte-Carlo errors of the equal-time kernels (see :func:`_repeat_errors`)."""
    T1 = state["ntk"].shape[0]
    stack = lambda a, axis=0: jnp.stack(a, axis) if a else None
    Phi, G = stack(state["Phi"]), stack(state["G"])
    return dict(
        delta=state["delta"][:T1], ntk=state["ntk"], Phi=Phi, G=G,
        A=stack(state["A"]), B=stack(state["B"]),
        h=jnp.concatenate([r[0] for r in records]).transpose(1, 0, 2, 3),
        z=jnp.concatenate([r[1] for r in records]).transpose(1, 0, 2, 3),
        loss_stderr=_stderr_jit.__wrapped__(r_state["delta"][:, :T1], repeats),
        kernel_err=_repeat_errors_jit.__wrapped__(state["ntk"], Phi, G, r_state["ntk"],
                                                  stack(r_state["Phi"], 1),
                                                  stack(r_state["G"], 1)))


def _finish(delta, loss_stderr, ntk, Phi, G, h, z, *, method, params, residuals, tol,
            kernel_err, what="Monte-Carlo DMFT"):
    """Package a Monte-Carlo solve; warn (and flag ``converged=False``) on non-finite results or
    a self-consistency residual above ``tol``."""
    loss, Phi, G = _package(delta, Phi, G)
    finite = bool(_all_finite((delta, loss, loss_stderr, ntk, Phi, G)))
    diverged = _diagnose(loss, ntk, params["eta"], what)
    if not finite:
        residuals = np.asarray([np.inf])
    if diverged is not None or not finite:
        warnings.warn(diverged or f"{what}: the fields are not finite (lower gamma0 or eta)",
                      RuntimeWarning, stacklevel=3)
    converged = finite and diverged is None and (len(residuals) == 0
                                                 or bool(residuals[-1] < tol))
    if finite and diverged is None and not converged:
        warnings.warn(f"{what} not self-consistent: kernels re-estimated from fresh samples "
                      f"differ by {residuals[-1]:.3g} times their expected Monte-Carlo "
                      f"difference, more than tol = {tol:.3g}", RuntimeWarning, stacklevel=3)
    return NonlinearSolution(
        delta=delta, loss=loss, loss_stderr=loss_stderr, ntk=ntk, phi=Phi, g=G, h=h, z=z,
        residuals=np.asarray(residuals, float), converged=bool(converged), method=method,
        params=params, kernel_err=kernel_err)


RESIDUAL_TOL = 4.0     # default tol of the fresh-sample check (see nonlinear)


def nonlinear(Kx, y, *, depth, activation, gamma0, eta, steps, samples, key, repeats=8,
              probes=None, responses=True, update="euler", check=True, tol=None,
              progress=None) -> NonlinearSolution:
    """Monte-Carlo DMFT of a depth-L nonlinear network in the mean-field (muP) parameterisation.

    ``samples`` single-site neurons per layer are evolved through the field equations (see the
    comment block above :func:`_derivatives`) in **one causal pass over time**: the fields at
    step t need kernels, responses and errors at earlier steps only, so the alternating-sampling
    fixed point of Bordelon & Pehlevan (2022) is reached without iterating.

    Args:
      Kx: input Gram matrix (P, P). y: targets (P,).
      depth: hidden layers L >= 1. For depth >= 2 the response functions contain phi'', a
        delta function for ReLU, estimated with a Gaussian kernel (see :func:`_derivatives`).
      activation: ``"relu"``, ``"tanh"``, ``"erf"`` or ``"linear"``.
      gamma0: richness >= 0 (0 = the static NTK). eta: learning rate. steps: T.
      samples: number S of sampled neurons per layer (Monte-Carlo error ~ 1/sqrt(S)).
      key: PRNG key (or an integer seed); the same key gives the same answer.
      repeats: independent solves with ``samples // repeats`` neurons each, run alongside to
        estimate ``loss_stderr`` (their spread / sqrt(repeats)). That estimate has a relative
        error of about 1/sqrt(2 (repeats - 1)) (41% at 4 repeats, 27% at 8): use
        :func:`band` for a band with a stated coverage.
      probes: random tangent probes per neuron for the remainder of the response functions
        (depth >= 2; their leading term is averaged exactly). Default: the fewest with
        ``samples * probes >= (T+1) P``, so that the probes are orthogonal and recover a
        Jacobian shared by all neurons exactly. Probe noise enters the kernels G squared (a
        positive bias); the exactly averaged leading term (the control variate in the comment
        above :func:`_derivatives`) keeps it well below the Monte-Carlo error: four times more
        probes change tanh kernels by 0.06-0.3 of that error (tested), ReLU kernels by up to
        ~0.9 of it at any number of probes (neurons near the kink switch: a re-draw within
        the Monte-Carlo noise, unbiased over keys, tested against networks).
      responses: False drops A and B (the gradient-independence approximation; Euler update
        only at depth >= 2).
      update: ``"euler"`` (default, the gradient-flow form ``Delta(t+1) = Delta(t) - (eta/P)
        K(t) Delta(t)``) or ``"exact"``: the infinite-width output of discrete gradient descent,
        ``Delta(t) = y - f(t)`` with ``f(t) = <z^L(t) phi(h^L(t))> / gamma0`` centred at t = 0,
        to compare with networks trained by discrete steps (at gamma0 = 0 both are exact).
      check: re-estimate the kernels from fresh samples (below). tol: its tolerance, in units
        of the expected Monte-Carlo difference (default ``RESIDUAL_TOL``).
      progress: print progress (the pass then runs in ten jitted chunks); default: only when
        the solve is predicted to take more than about half a minute on a CPU.

    Returns a :class:`NonlinearSolution`. ``residuals`` holds one self-consistency measure.
    The kernels Phi^l, G^l are re-estimated from ``samples`` fresh neurons per layer, driven by
    independent Gaussian sources with the returned covariances and by the returned responses
    and errors (one alternating-sampling sweep); for each kernel the Frobenius difference from
    the returned one is divided by its expected size at a solution, sqrt(2 E|K^ - K|^2), with
    E|K^ - K|^2 = (E|f|^4 - |K|^2) / S measured on the fresh fields (see :func:`_estimate`).
    The residual is the largest such ratio: about 1 at a solution, whatever S. Its spread
    comes from the few dominant eigenmodes of the kernels (over 7 settings x 3 keys at P = 10,
    T = 50, depth 1-3, tanh and ReLU it ranged over 0.68-2.04), so the default tol is
    ``RESIDUAL_TOL = 4``; a kernel that is off by a few times its Monte-Carlo error, or
    responses inconsistent with the kernels, exceeds it. ``converged`` is True when every
    returned array is finite and the residual is below ``tol``. Non-finite results warn with
    their cause and give ``residuals = [inf]``.
    """
    Kx, y, depth, gamma0, eta, steps, samples, repeats, probes, key = _mc_validate(
        Kx, y, depth, activation, gamma0, eta, steps, samples, repeats, probes, key)
    _checks.choice(update, "update", ("euler", "exact"))
    responses = _checks.flag(responses, "responses")
    if update == "exact" and not responses and depth >= 2:
        raise ValueError(_NO_EXACT_WITHOUT_RESPONSES)
    responses = responses and depth >= 2
    check = _checks.flag(check, "check")
    T1, P = steps + 1, Kx.shape[0]
    (state, noise), (r_state, r_noise), (K_main, K_rep) = _mc_setup(
        Kx, y, key, depth=depth, steps=steps, samples=samples, repeats=repeats, probes=probes,
        responses=responses)
    if progress is not None:
        progress = _checks.flag(progress, "progress")
    else:                  # ~1e10 multiply-adds per second on two CPU cores
        rows = samples * (1 + (4 * K_main if responses else 0)) * 2
        progress = rows * (T1 * P) ** 2 * depth > 3e11
    g0, et = jnp.asarray(gamma0, Kx.dtype), jnp.asarray(eta, Kx.dtype)
    if update == "exact" and gamma0 == 0:
        update = "euler"          # the lazy network is linear in its weights: Euler is exact
    run = dict(activation=activation, responses=responses, update=update)
    records, t0, start = [], 0, time.perf_counter()
    for n in _chunks(T1, progress):
        tt = jnp.asarray(t0)
        state, rec = _mc_chunk(state, noise, Kx, y, g0, et, tt, chunk=n, **run)
        r_state, _ = _mc_chunk_batched(r_state, r_noise, Kx, y, g0, et, tt, chunk=n, **run)
        records.append(rec)
        t0 += n
        if progress:
            jax.block_until_ready(r_state["delta"])
            print(f"Monte-Carlo DMFT (depth {depth}, S={samples}): step {t0}/{T1}, "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
    out = _mc_collect(state, r_state, records, repeats=repeats)
    delta, Phi, G = out["delta"], out["Phi"], out["G"]
    residuals = []
    if check and bool(_all_finite((delta, Phi, G))):
        (Phi_new, Phi_var), (G_new, G_var) = _mc_resample(
            Kx, delta, Phi, G, out["A"], out["B"], g0, et, jax.random.fold_in(key, 7),
            activation=activation, samples=samples)
        residuals = [max(_mc_residual(Phi, Phi_new, Phi_var), _mc_residual(G, G_new, G_var))]
    tol = RESIDUAL_TOL if tol is None else _checks.nonnegative(tol, "tol")
    kernel_err = {k: np.asarray(v, np.float64) for k, v in out["kernel_err"].items()}
    return _finish(delta, out["loss_stderr"], out["ntk"], Phi, G, out["h"], out["z"],
                   residuals=residuals, tol=tol, kernel_err=kernel_err,
                   method="causal-monte-carlo",
                   params=dict(depth=depth, activation=activation, gamma0=gamma0, eta=eta,
                               steps=steps, samples=samples, repeats=repeats,
                               probes=K_main if responses else 0, responses=responses,
                               update=update))


# Leading-order perturbation theory on Monte-Carlo samples needs the kernels at gamma0 = 0 and
# half their second derivative in gamma0, on the solve's fixed samples. On those samples the
# kernels are smooth functions of gamma0, computed by the compiled pass of nonlinear() (gamma0 is
# one of its traced arguments), so the second derivative is taken by a central difference,
#
#     (1/2) K''(0) = (K(h) + K(-h) - 2 K(0)) / (2 h^2) + O(h^2),      h = SECOND_ORDER_STEP,
#
# which also drops the odd, pure-noise first-order term. Against the exact nested forward-mode
# derivative it differs by 4e-4 to 5e-4 (relative Frobenius, ntk, Phi and G of a depth-2 tanh
# solve, S = 1000, P = 10, T = 50, float32; truncation-dominated: 1.7e-3 at h = 0.1), far below
# the Monte-Carlo error of the kernels (a few per cent). It costs three passes of the solver
# that nonlinear() has usually compiled already, where the nested derivative cost four
# tangent streams and a compilation of its own (~15 s and ~12 s on one CPU core at that size).
SECOND_ORDER_STEP = 0.05


def _mc_kernels_at(state, noise, r_state, r_noise, Kx, y, gamma0, eta, *, activation, responses):
    """NTK, Phi and G (stacked over layers) of the pooled solve and of the repeats (leading axis)
    at ``gamma0``, Euler update, on the given samples."""
    T1 = state["ntk"].shape[0]
    run = dict(activation=activation, responses=responses, chunk=T1)
    g0, t0 = jnp.asarray(gamma0, Kx.dtype), jnp.asarray(0)
    st, _ = _mc_chunk(state, noise, Kx, y, g0, eta, t0, **run)
    rs, _ = _mc_chunk_batched(r_state, r_noise, Kx, y, g0, eta, t0, **run)
    return ((st["ntk"], jnp.stack(st["Phi"]), jnp.stack(st["G"])),
            (rs["ntk"], jnp.stack(rs["Phi"], 1), jnp.stack(rs["G"], 1)))


@_jit
def _half_second_difference(plus, minus, zero, h):
    return jax.tree_util.tree_map(lambda p, m, z: (p + m - 2 * z) / (2 * h * h), plus, minus, zero)


# The kernels at gamma0 = 0 and their second derivative in gamma0 do not depend on gamma0, which
# enters only through the truncation Phi_0 + gamma0^2 Phi_2: a sweep over gamma0 on the same
# samples (Chapter 4: four values) differentiates the solver once. The last few results are kept, keyed by everything they
# depend on (the inputs' bytes, the key, the settings).
_SECOND_ORDER: dict = {}
_SECOND_ORDER_KEEP = 4


def _second_order_cached(Kx, y, key, *, depth, activation, eta, steps, samples, repeats, probes,
                         responses):
    """``((ntk_0, Phi_0, G_0), (ntk_2, Phi_2, G_2))`` of the pooled solve and of the repeats
    (leading axis), and the pooled solve's number of probes; cached (see above)."""
    cache_key = (_digest(Kx, y, key), depth, activation, float(eta), steps, samples, repeats,
                 probes, responses)
    if cache_key in _SECOND_ORDER:
        _SECOND_ORDER[cache_key] = _SECOND_ORDER.pop(cache_key)      # most recently used last
        return _SECOND_ORDER[cache_key]
    (state, noise), (r_state, r_noise), (K_main, _) = _mc_setup(
        Kx, y, key, depth=depth, steps=steps, samples=samples, repeats=repeats, probes=probes,
        responses=responses)
    et = jnp.asarray(eta, Kx.dtype)
    at = lambda g: _mc_kernels_at(state, noise, r_state, r_noise, Kx, y, g, et,
                                  activation=activation, responses=responses)
    h = SECOND_ORDER_STEP
    zero = at(0.0)
    second = _half_second_difference(at(h), at(-h), zero, jnp.asarray(h, Kx.dtype))
    out = ((zero[0], second[0]), (zero[1], second[1]), K_main)
    _SECOND_ORDER[cache_key] = out
    while len(_SECOND_ORDER) > _SECOND_ORDER_KEEP:
        _SECOND_ORDER.pop(next(iter(_SECOND_ORDER)))
    return out


def _perturbative_mc(Kx, y, *, depth, activation, gamma0, eta, steps, samples, key, repeats=8,
                     probes=None):
    """Leading-order perturbation theory for a nonlinear network, on Monte-Carlo samples."""
    Kx, y, depth, gamma0, eta, steps, samples, repeats, probes, key = _mc_validate(
        Kx, y, depth, activation, gamma0, eta, steps, samples, repeats, probes, key)
    responses = depth >= 2
    main, reps, K_main = _second_order_cached(Kx, y, key, depth=depth, activation=activation,
                                              eta=eta, steps=steps, samples=samples,
                                              repeats=repeats, probes=probes,
                                              responses=responses)
    truncate = lambda b, s2: tuple(b_ + gamma0 ** 2 * s_ for b_, s_ in zip(b, s2))
    ntk, Phi, G = truncate(*main)
    r_ntk, r_Phi, r_G = truncate(*reps)

    et = jnp.asarray(eta, Kx.dtype)
    delta = _euler_errors_jit(y, ntk, et)
    T1, S = steps + 1, samples
    empty = jnp.zeros((depth, T1, 0, Kx.shape[0]), Kx.dtype)   # no sampled fields to report
    return _finish(delta, _stderr(_euler_errors_batched(y, r_ntk, et), repeats), ntk, list(Phi),
                   list(G),
                   empty, empty, residuals=[], tol=0.0, method="perturbative-monte-carlo",
                   kernel_err=_repeat_errors(ntk, Phi, G, r_ntk, r_Phi, r_G),
                   what="perturbative solve",
                   params=dict(depth=depth, activation=activation, gamma0=gamma0, eta=eta,
                               steps=steps, samples=S, repeats=repeats,
                               probes=K_main if responses else 0))
