"""The propagator of deep linear networks: leading-order N Cov of the order parameters.

Every neuron of layer l carries the fields x = (h, g, h', g'): the forward fields h(t, mu), the
backward fields g(t) and their conjugates h' = -i h_hat, g' = -i g_hat, which pair with the
sources u and r (<F h'> = <dF/du>, <F g'> = <dF/dr>). For a linear network every field is linear
in the Gaussian sources, so one neuron's fields are (formally) Gaussian with the covariance C of
:func:`_layer_covariance`. Averaging the initial weight matrices out of the network's dynamics
leaves N independent copies of this single-site problem per layer, coupled only through
averages over the layers' neurons: the second moments Y_l = (1/N) sum_i x_i x_i^T, which hold
every order parameter (Phi = <h h>, G = <g g>, the responses A' = <h g'>, B' = <h' g>, the
conjugate kernels <h' h'>, <g' g'> and the output F = <g^L h^L>). The network's weight is
exp(N V(Y_1, ..., Y_L)) times the layers' own single-site measures, with the coupling
(:func:`_coupling`)

    V = sum_l [ 1/2 Phi^{l-1} . <h' h'>_l + 1/2 G^{l+1} . <g' g'>_l          (the sources)
              + A'_{l-1} . B'_l                                            (the responses)
              + gamma0 (eta / P) (Phi^{l-1} Delta) . B'_l + gamma0 (eta / P) (G^{l+1} Delta) . <g' h>_l ]
                                                                  (the weight updates, s < t)

with Delta a function of Y (the exact discrete update Delta = y - (F - F(0)) / gamma0, or the
Euler recursion with K(t) = sum_l G^{l+1}(t, t) Phi^l(t, t)). At large N the Y_l are Gaussian
around their infinite-width values C_l (the DMFT) with

    N Cov[Y] = (K^{-1} - H)^{-1} = (I - K H)^{-1} K,

K the covariance of one neuron's products x_a x_b (Isserlis: K Z = C (Z + Z^T) C per layer) and
H the Hessian of V. Writing it as (I - K H)^{-1} K, not (I - D)^{-1} K (I - D)^{-T}, matters:
the latter counts the bilinear coupling A' . B' of neighbouring layers twice (it reproduces the
two-layer network, where no such coupling exists, but not a deep one: measured on the first
step of a depth-2 network, whose variance is known in closed form). For an output o(Y) with
gradient w, N Var[o] = (K w) . z with z = (I - H K)^{-1} w, and z = w + H K z is solved by
iteration: H K is nilpotent (causality), so the iteration terminates (about 2 t + 4 L sweeps for
an output at time t). Each sweep costs two products of (n, n) matrices per layer (n =
2 (T + 1) (P + 1)) and one Hessian-vector product of V: no Hessian is formed, nothing is
inverted.
"""
from __future__ import annotations

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np


def _layer_covariance(state, Phi, G, Hr, Gu, l):
    """The covariance C (n, n) of one neuron's fields x = (h, g, h', g') of layer l, from the
    causal solve: h = u + A g, g = Gr r + Gu u with u ~ N(0, Phi^{l-1}), r ~ N(0, G^{l+1}), so

        <h h> = Phi, <g g> = G, <h g> = X^T + A G, <h h'> = dh/du = I + A Gu, <h g'> = dh/dr = Hr,
        <g h'> = dg/du = Gu, <g g'> = dg/dr = Gr, and the conjugates' own moments vanish.
    """
    A, Gr, X = state["A"][l], state["Gr"][l], state["X"][l]
    Ph, Gl, TP, T1 = Phi[l], G[l], Phi.shape[-1], G.shape[-1]
    dt = Ph.dtype
    Chg = X.T + A @ Gl
    Hu = jnp.eye(TP, dtype=dt) + A @ Gu[l]
    return jnp.block([[Ph, Chg, Hu, Hr[l]],
                      [Chg.T, Gl, Gu[l], Gr],
                      [Hu.T, Gu[l].T, jnp.zeros((TP, TP), dt), jnp.zeros((TP, T1), dt)],
                      [Hr[l].T, Gr.T, jnp.zeros((T1, TP), dt), jnp.zeros((T1, T1), dt)]])


def _coupling(Kx, y, gamma0, eta, L, T1, update):
    """The coupling V(Y) of the layers' second moments Y (L, n, n) and the outputs
    (Delta (T1, P), K (T1, P, P)) as functions of Y (see the module docstring)."""
    P = Kx.shape[0]
    TP, c, dt = T1 * P, eta / P, Kx.dtype
    n = 2 * (TP + T1)
    h, g = slice(0, TP), slice(TP, TP + T1)
    hp, gp = slice(TP + T1, 2 * TP + T1), slice(2 * TP + T1, n)
    t_of = jnp.arange(TP) // P
    hg_before = (jnp.arange(T1)[None, :] < t_of[:, None]).astype(dt)       # ((t, mu), s): s < t
    gh_before = (t_of[None, :] < jnp.arange(T1)[:, None]).astype(dt)       # (t, (s, nu)): s < t
    Phi0, ones = jnp.tile(Kx, (T1, T1)), jnp.ones((T1, T1), dt)
    eqt = jnp.arange(T1)

    def ntk(Y):
        K = Y[0][g, g][eqt, eqt][:, None, None] * Kx[None]
        for l in range(L):
            g_up = 1.0 if l == L - 1 else Y[l + 1][g, g][eqt, eqt][:, None, None]
            K = K + g_up * Y[l][h, h].reshape(T1, P, T1, P)[eqt, :, eqt, :]
        return K

    def delta(Y):
        if update == "exact":
            F = Y[L - 1][g, h].reshape(T1, T1, P)[eqt, eqt]                 # <g(t) h(t, mu)>
            return y[None, :] - (F - F[0]) / gamma0
        return jax.lax.scan(lambda d, Kt: (d - c * Kt @ d, d), y, ntk(Y))[1]

    def V(Y):
        d = delta(Y).reshape(-1)
        v = 0.0
        for l in range(L):
            Phi_dn = Phi0 if l == 0 else Y[l - 1][h, h]
            G_up = ones if l == L - 1 else Y[l + 1][g, g]
            v = v + 0.5 * jnp.sum(Phi_dn * Y[l][hp, hp]) + 0.5 * jnp.sum(G_up * Y[l][gp, gp])
            if l > 0:
                v = v + jnp.sum(Y[l - 1][h, gp] * Y[l][hp, g])             # A'_{l-1} . B'_l
            a = gamma0 * c * (Phi_dn * d[None, :]).reshape(TP, T1, P).sum(-1) * hg_before
            b = gamma0 * c * jnp.repeat(G_up, P, axis=1) * d[None, :] * gh_before
            v = v + jnp.sum(a * Y[l][hp, g]) + jnp.sum(b * Y[l][gp, h])
        return v

    return V, delta, ntk


@partial(jax.jit, static_argnames=("L", "steps", "update", "max_iter", "first", "kernels"))
def _deep_linear_solve(Kx, y, gamma0, eta, *, L, steps, update, max_iter, first=0,
                       kernels=False):
    """N Cov[Delta(t)] (T1 - first, P, P) and N Var[K(t)] for t = first..steps, with the horizon
    ``steps`` (the propagator up to t does not depend on the horizon, so the outputs of late
    times need the whole problem and those of early times a smaller one), the infinite-width
    errors and NTK, and the largest number of sweeps."""
    from ..dmft import _causal_solve
    T1, P = steps + 1, Kx.shape[0]
    mean_delta, mean_ntk, Phi, G, Hr, Gu, state = _causal_solve(
        Kx, y, gamma0, eta, depth=L, steps=steps, update=update, return_state=True)
    C = jnp.stack([_layer_covariance(state, Phi, G, Hr, Gu, l) for l in range(L)])
    V, delta, ntk = _coupling(Kx, y, gamma0, eta, L, T1, update)
    Kop = lambda Z: C @ (Z + jnp.swapaxes(Z, -1, -2)) @ C
    _, Hop = jax.linearize(jax.grad(V), C)
    # the outputs' gradients: Delta_mu(t) and K_mu nu(t) for t >= first
    n_t = T1 - first
    wd = jax.jacrev(lambda Y: delta(Y)[first:])(C).reshape(n_t * P, *C.shape)
    wk = jax.jacrev(lambda Y: ntk(Y)[first:])(C).reshape(n_t * P * P, *C.shape)
    w = [wd, wk]
    TP, eqt = T1 * P, jnp.arange(first, T1)
    if kernels:       # every layer's Phi^l_mu nu(t, t) and G^l(t, t)
        kern = lambda Y: jnp.concatenate([
            Y[:, :TP, :TP].reshape(L, T1, P, T1, P)[:, eqt, :, eqt, :].reshape(-1),
            Y[:, TP:TP + T1, TP:TP + T1][:, eqt, eqt].reshape(-1)])
        w.append(jax.jacrev(kern)(C).reshape(-1, *C.shape))
    w = jnp.concatenate(w)

    def solve(w1):    # z <- w + H K z until it no longer changes (H K is nilpotent)
        scale = jnp.max(jnp.abs(w1)) + 1e-300

        def body(s):
            z, _, k = s
            z_new = w1 + Hop(Kop(z))
            return z_new, jnp.max(jnp.abs(z_new - z)) / jnp.maximum(jnp.max(jnp.abs(z_new)),
                                                                   scale), k + 1
        # exact termination (H K nilpotent) shows as no change at all; in the rich regime the
        # partial sums first grow (1e5 x |w| at depth 4, gamma0 = 2) and the last terms are
        # round-off, so stop at a change of 1e-14 of the largest entry
        z, _, k = jax.lax.while_loop(lambda s: (s[1] > 1e-14) & (s[2] < max_iter), body,
                                     (w1, jnp.asarray(1.0, C.dtype), 0))
        return z, k
    z, iters = jax.lax.map(solve, w)
    iters = jnp.max(iters)
    Kw = jax.vmap(Kop)(w)
    zd, Kwd = z[:n_t * P].reshape(n_t, P, -1), Kw[:n_t * P].reshape(n_t, P, -1)
    cov = jnp.einsum("tma,tna->tmn", zd, Kwd)
    var = jnp.sum(z[n_t * P:] * Kw[n_t * P:], axis=(1, 2, 3))
    var_ntk = var[:n_t * P * P].reshape(n_t, P, P)
    extra = None
    if kernels:
        rest = var[n_t * P * P:]
        # (the eqt-indexing above puts time first: (n_t, L, P, P) and (n_t, L) -> layer first)
        extra = (jnp.moveaxis(rest[:L * n_t * P * P].reshape(n_t, L, P, P), 0, 1),
                 rest[L * n_t * P * P:].reshape(L, n_t), Phi, G)
    return cov, var_ntk, mean_delta, mean_ntk, iters, extra


def deep_linear_propagator(Kx, y, gamma0, eta, depth, steps, update, buckets=None,
                           kernels=False):
    """(cov (T1, P, P), var_ntk (T1, P, P), mean_delta, mean_ntk) of a depth-L linear network;
    inputs already validated and cast. The times are split into ``buckets`` (default: about
    one per 10 steps, at most 4), each solved with its own horizon: the cost of an output at
    time t grows like t^4 (the sweeps ~ t, the matrices ~ t^3)."""
    buckets = min(4, max(1, (steps + 1) // 10)) if buckets is None else buckets
    edges = np.unique(np.round(np.linspace(0, steps + 1, buckets + 1)).astype(int))
    covs, ntks, phis, gs = [], [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        horizon = int(hi) - 1
        max_iter = 10 * (horizon + 1) + 20 * depth + 100
        cov, var_ntk, mean_delta, mean_ntk, iters, extra = _deep_linear_solve(
            Kx, y, gamma0, eta, L=depth, steps=horizon, update=update, max_iter=max_iter,
            first=int(lo), kernels=kernels)
        covs.append(cov)
        ntks.append(var_ntk)
        if kernels:
            phis.append(extra[0])
            gs.append(extra[1])
            Phi, G = extra[2], extra[3]
        if int(iters) >= max_iter:
            warnings.warn(f"the deep linear propagator did not terminate in {max_iter} sweeps "
                          "(it must for a causal system): the result is not exact",
                          RuntimeWarning, stacklevel=3)
    out = (jnp.concatenate(covs), jnp.concatenate(ntks), mean_delta, mean_ntk)
    if not kernels:
        return out + (None,)
    T1, P = steps + 1, Kx.shape[0]
    eqt = jnp.arange(T1)
    means = (Phi.reshape(depth, T1, P, T1, P)[:, eqt, :, eqt, :].transpose(1, 0, 2, 3),
             G[:, eqt, eqt])
    return out + ((jnp.concatenate(phis, axis=1), jnp.concatenate(gs, axis=1)) + means,)
