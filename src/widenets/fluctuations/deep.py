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
step of a depth-2 network, whose variance is known in closed form). For outputs o_a(Y) with
gradients w_a,

    N Cov[o_a, o_b] = w_a . K (I - H K)^{-1} w_b = sum_k w_a . K (H K)^k w_b,

a finite series: H K is nilpotent (causality; its index on an output at time t grows about
linearly in t and L). As K and H are symmetric, with u_j = (H K)^j w the terms pair up,
w_a . K (H K)^{2j} w_b = u_a . K u_b and w_a . K (H K)^{2j+1} w_b = (K u_a) . H (K u_b), so only
half the index is swept: each sweep is one K product (two products of (n, n) matrices per
layer, n = 2 (T + 1) (P + 1), using the zero block of C) and one Hessian-vector product of V on
the eight blocks of Y_l that V reads. Sweeps, to the last term above round-off plus three
(one example, eta = 0.05): depth 2: 13, 19-21, 25-32 at t = 5, 10, 20; depth 4: 24, 38-43,
53-73 (the more at gamma0 = 2 than at 0.5). No Hessian is formed, nothing is inverted. The cost
grows like T^4 to T^5 (depth 4, one example: 2 s at T = 30, 306 s at T = 100); for one example
:mod:`widenets.fluctuations.conditioning` computes the same numbers in seconds at T = 300.
"""
from __future__ import annotations

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks


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


_BLOCKS = ("hh", "gg", "pp", "qq", "hq", "pg", "qh", "gh")   # p = h', q = g'


def _blocks(P, T1):
    """The slices of h, g, h', g' in x, and :func:`_split` / :func:`_embed`: the coupling reads
    eight blocks of each Y_l (the rest of Y_l enters only through K)."""
    TP = T1 * P
    n = 2 * (TP + T1)
    sl = dict(h=slice(0, TP), g=slice(TP, TP + T1), p=slice(TP + T1, 2 * TP + T1),
              q=slice(2 * TP + T1, n))

    def split(Y):
        return {b: Y[:, sl[b[0]], sl[b[1]]] for b in _BLOCKS}

    def embed(B):
        L, dt = B["hh"].shape[0], B["hh"].dtype
        z = lambda a, b: jnp.zeros((L, a, b), dt)
        return jnp.concatenate([
            jnp.concatenate([B["hh"], z(TP, T1), z(TP, TP), B["hq"]], -1),
            jnp.concatenate([B["gh"], B["gg"], z(T1, TP), z(T1, T1)], -1),
            jnp.concatenate([z(TP, TP), B["pg"], B["pp"], z(TP, T1)], -1),
            jnp.concatenate([B["qh"], z(T1, T1), z(T1, TP), B["qq"]], -1)], -2)
    return split, embed


def _coupling(Kx, y, gamma0, eta, L, T1, update, blocks=False):
    """The coupling V and the outputs (Delta (T1, P), K (T1, P, P)) as functions of the layers'
    second moments Y (L, n, n) (see the module docstring), or, with ``blocks``, of the eight
    blocks of :func:`_blocks` that they read (a dict of arrays with a leading layer axis)."""
    P = Kx.shape[0]
    TP, c, dt = T1 * P, eta / P, Kx.dtype
    t_of = jnp.arange(TP) // P
    hg_before = (jnp.arange(T1)[None, :] < t_of[:, None]).astype(dt)       # ((t, mu), s): s < t
    gh_before = (t_of[None, :] < jnp.arange(T1)[:, None]).astype(dt)       # (t, (s, nu)): s < t
    Phi0, ones = jnp.tile(Kx, (T1, T1)), jnp.ones((T1, T1), dt)
    eqt = jnp.arange(T1)

    def ntk(B):
        g_diag = B["gg"][:, eqt, eqt]                                       # G^l(t, t)
        g_up = jnp.concatenate([g_diag[1:], jnp.ones((1, T1), dt)])         # G^{l+1}(t, t)
        h_diag = B["hh"].reshape(L, T1, P, T1, P)[:, eqt, :, eqt, :]        # (T1, L, P, P)
        return (g_diag[0][:, None, None] * Kx[None]
                + jnp.einsum("lt,tlmn->tmn", g_up, h_diag))

    def delta(B):
        if update == "exact":
            F = B["gh"][L - 1].reshape(T1, T1, P)[eqt, eqt]                 # <g(t) h(t, mu)>
            return y[None, :] - (F - F[0]) / gamma0
        return jax.lax.scan(lambda d, Kt: (d - c * Kt @ d, d), y, ntk(B))[1]

    def V(B):
        d = delta(B).reshape(-1)
        Phi_dn = jnp.concatenate([Phi0[None], B["hh"][:-1]])               # Phi^{l-1}
        G_up = jnp.concatenate([B["gg"][1:], ones[None]])                   # G^{l+1}
        a = gamma0 * c * (Phi_dn * d).reshape(L, TP, T1, P).sum(-1) * hg_before
        b = gamma0 * c * jnp.repeat(G_up, P, axis=2) * d * gh_before
        return (0.5 * jnp.sum(Phi_dn * B["pp"]) + 0.5 * jnp.sum(G_up * B["qq"])
                + jnp.sum(B["hq"][:-1] * B["pg"][1:])                        # A'_{l-1} . B'_l
                + jnp.sum(a * B["pg"]) + jnp.sum(b * B["qh"]))

    if blocks:
        return V, delta, ntk
    split = _blocks(P, T1)[0]
    return (lambda Y: V(split(Y))), (lambda Y: delta(split(Y))), (lambda Y: ntk(split(Y)))


def _isserlis(C, m, Z):
    """K Z = C (Z + Z^T) C per layer, using the zero block of C: the conjugate fields (the
    last n - m of x) have no second moments among themselves, C = [[Cpp, Cpc], [Ccp, 0]]; the
    result is symmetric, so its lower-left block is not computed (11 products of (n/2)-blocks
    instead of 16)."""
    S = Z + jnp.swapaxes(Z, -1, -2)
    Cpp, Cpc = C[..., :m, :m], C[..., :m, m:]
    Ccp = jnp.swapaxes(Cpc, -1, -2)
    Spp, Spc, Scp, Scc = S[..., :m, :m], S[..., :m, m:], S[..., m:, :m], S[..., m:, m:]
    Mpp, Mpc = Spp @ Cpp + Spc @ Ccp, Spp @ Cpc
    Mcp, Mcc = Scp @ Cpp + Scc @ Ccp, Scp @ Cpc
    Npp, Npc, Ncc = Cpp @ Mpp + Cpc @ Mcp, Cpp @ Mpc + Cpc @ Mcc, Ccp @ Mpc
    return jnp.concatenate([jnp.concatenate([Npp, Npc], -1),
                            jnp.concatenate([jnp.swapaxes(Npc, -1, -2), Ncc], -1)], -2)


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
    Kop = partial(_isserlis, C, T1 * (P + 1))
    V, delta, ntk = _coupling(Kx, y, gamma0, eta, L, T1, update)
    TP = T1 * P
    split, embed = _blocks(P, T1)
    Vb = _coupling(Kx, y, gamma0, eta, L, T1, update, blocks=True)[0]
    _, Hb = jax.linearize(jax.grad(Vb), split(C))
    Hop = lambda Z: embed(Hb(split(Z)))
    # the outputs' gradients: Delta_mu(t) and K_mu nu(t) for t >= first
    n_t = T1 - first
    wd = jax.jacrev(lambda Y: delta(Y)[first:])(C).reshape(n_t * P, *C.shape)
    wk = jax.jacrev(lambda Y: ntk(Y)[first:])(C).reshape(n_t * P * P, *C.shape)
    w = [wd, wk]
    eqt = jnp.arange(first, T1)
    if kernels:       # every layer's Phi^l_mu nu(t, t) and G^l(t, t)
        kern = lambda Y: jnp.concatenate([
            Y[:, :TP, :TP].reshape(L, T1, P, T1, P)[:, eqt, :, eqt, :].reshape(-1),
            Y[:, TP:TP + T1, TP:TP + T1][:, eqt, eqt].reshape(-1)])
        w.append(jax.jacrev(kern)(C).reshape(-1, *C.shape))
    w = jnp.concatenate(w)

    # N Cov[o_a, o_b] = w_a . K (I - H K)^{-1} w_b = sum_k w_a . K (H K)^k w_b, and with
    # u_j = (H K)^j w (K and H symmetric) the terms pair up: k = 2j is u_a . K u_b and
    # k = 2j + 1 is (K u_a) . H (K u_b). So j only runs to half the nilpotency index of H K
    # (which ends the series exactly): each sweep is one K and one H product per output, and
    # the outputs come in groups of P whose covariance is wanted (Delta_mu(t), mu = 1..P)
    n_out = w.shape[0]
    w = jnp.concatenate([w, jnp.zeros((-n_out % P,) + C.shape, C.dtype)])
    w = w.reshape(-1, P, *C.shape)
    dot = lambda A, B: jnp.einsum("a...,b...->ab", A, B)

    def solve(W):
        def body(s):
            U, acc, peak, quiet, k = s
            KU = jax.lax.map(Kop, U)
            HKU = jax.lax.map(Hop, KU)
            ta, tb = dot(U, KU), dot(KU, HKU)
            size = jnp.max(jnp.abs(ta)) + jnp.max(jnp.abs(tb))
            peak = jnp.maximum(peak, size)
            # the terms first grow (1e5 x the first at depth 4, gamma0 = 2), then fall to 0
            # faster than geometrically: stop after three sweeps below round-off of the largest
            quiet = jnp.where(size <= 1e-17 * peak, quiet + 1, 0)
            return HKU, acc + ta + tb, peak, quiet, k + 1

        def more(s):
            return (s[3] < 3) & (s[4] < max_iter) & jnp.any(s[0] != 0)
        zero = jnp.zeros((), C.dtype)
        _, acc, _, _, k = jax.lax.while_loop(
            more, body, (W, jnp.zeros((P, P), C.dtype), zero, 0, 0))
        return 0.5 * (acc + acc.T), k
    gram, iters = jax.lax.map(solve, w)
    iters = jnp.max(iters)
    cov = gram[:n_t]
    var = jnp.diagonal(gram[n_t:], axis1=1, axis2=2).reshape(-1)[:n_out - n_t * P]
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
    covs, ntks, phis, gs, unterminated = [], [], [], [], 0
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
            unterminated = max_iter
    # a diverging mean (eta above the stable rate) is reported by the caller, naming eta: the
    # sweeps of a system that overflows need not terminate, and that is not the cause
    loss = 0.5 * np.mean(np.square(np.asarray(mean_delta, np.float64)), -1)
    if unterminated and _checks.divergence(loss, np.asarray(mean_ntk[0]), float(eta), "",
                                           "") is None:
        warnings.warn(f"the deep linear propagator did not terminate in {unterminated} sweeps "
                      "(it must for a causal system): the result is not exact",
                      RuntimeWarning, stacklevel=3)
    # (the pieces are joined on the host: eager jnp ops would compile a program per shape)
    cat = lambda xs, axis=0: np.concatenate([np.asarray(x) for x in xs], axis=axis)
    out = (cat(covs), cat(ntks), np.asarray(mean_delta), np.asarray(mean_ntk))
    if not kernels:
        return out + (None,)
    T1, P = steps + 1, Kx.shape[0]
    eqt = np.arange(T1)
    Phi, G = np.asarray(Phi), np.asarray(G)
    means = (Phi.reshape(depth, T1, P, T1, P)[:, eqt, :, eqt, :].transpose(1, 0, 2, 3),
             G[:, eqt, eqt])
    return out + ((cat(phis, axis=1), cat(gs, axis=1)) + means,)
