"""The propagator of a deep linear network trained on one example, by Gaussian conditioning.

A width-N deep linear network trained by gradient descent touches each initial weight matrix
W^m (layer m -> layer m + 1) only through matrix-vector products: the forward pass applies it to
h^m(t), the backward pass applies its transpose to g^{m+1}(t), and the updates are rank one in
vectors already computed. A Gaussian matrix queried this way can be revealed one query at a
time (the Golub-Kahan / Bartlett construction): with Q an orthonormal basis of the directions
it has been applied to on the right and Pb on the left, a new query q splits into its part in
span(Q) (already known), and q_perp = rho q_hat outside it, for which

    W q_hat / sqrt(N) = Pb (Pb^T W q_hat / sqrt(N))   known from the earlier transposed queries
                      + (I - Pb Pb^T) zeta           zeta_i ~ N(0, 1/N) on the known directions
                      + (chi_{N - k} / sqrt(N)) e     a new direction, orthogonal to all of them

independently of everything before (and likewise for transposed queries). Every vector of a
layer is stored by its coordinates in that layer's orthonormal directions, scaled so that
coordinate dot products are the kernels (h . h' / N). After T steps each layer holds at most
2 (T + 1) + 1 directions, and the whole finite-width network is a deterministic function of
the revealed noise xi = (zeta, chi / sqrt(N) - 1): O(L T^2) independent variables instead of
L N^2 weights, with N Var[zeta_i] = 1 and N Var[chi / sqrt(N)] = 1/2.

At xi = 0 this is the infinite-width network (the DMFT, to round-off), and to leading order in
1/N the outputs o (the errors Delta(t), the NTK K(t), every layer's kernels) move linearly in
xi, so

    N Var[o] = sum_i (d o / d zeta_i)^2 + (1/2) sum_j (d o / d chi_j)^2

from one reverse-mode pass per output through the causal simulation: no action, no Hessian,
nothing inverted. The trajectory of a layer is numerically low-rank (the new component of a
query falls roughly geometrically with t), so a query whose new part is below round-off adds
no direction: the arrays are sized by the number of directions actually created (found by a
first pass at infinite width), not by T.

Valid for one example (P = 1) with the exact discrete update. With several examples the P
queries of the first steps are parallel at infinite width and split only at O(1/sqrt(N)),
where revealing W on the normalised new direction is not differentiable (measured: a 2e-4
relative change of N Var when the examples are queried in the other order); those go to the
action route of :mod:`widenets.fluctuations.deep`. The same failure could in principle follow a
dropped (below round-off) query whose direction is filled at O(1) later, so every run checks
that once a matrix has dropped a query it creates no new direction of that kind again.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks


def _orth(B, v):
    """(coefficients, remainder) of v against the rows of B (orthonormal or zero), twice."""
    c = B @ v
    v = v - c @ B
    c2 = B @ v
    return c + c2, v - c2 @ B


TOL = 1e-12


def _tol(dt):
    """A query whose part outside the revealed directions is below this fraction of its norm
    adds no direction (float64; 1e-5 in float32): the new part of a layer's queries falls
    roughly geometrically with t (at the benchmark's setting from 0.1 to 2e-9 over the first
    8 steps, then exactly 0), and what is dropped below it is round-off or of that size."""
    return TOL if dt == jnp.float64 else 1e-5


# a dropped query's direction filled later by a new part above this fraction of the query is
# an error the linearisation could miss (module docstring): the run falls back to the action
_LATE = 1e-6


def _noise(L, T1, K, dt):
    """Zero noise: zeta and chi of the right (forward) and left (backward) queries of every
    matrix at every step, and chi of the readout and of the first layer's source."""
    M = L - 1
    z = lambda *s: jnp.zeros(s, dt)
    return dict(zq=z(T1, M, K), cq=z(T1, M), zp=z(T1, M, K), cp=z(T1, M), cw=z(), cu=z())


def _simulate(kx, y, gamma0, eta, xi, *, L, T1, K, R, tol, kernels, forward_first=False):
    """The width-N network in its revealed coordinates (module docstring) as a function of the
    noise ``xi`` (``forward_first``: query the matrices in the other order within a step, a
    check); returns the outputs (Delta, K, and with ``kernels`` every layer's Phi^l(t, t)
    and G^l(t, t)), the numbers of directions and rows used, and the flags ``over`` (a capacity
    K or R was too small) and ``bad`` (a new direction after a dropped query)."""
    M, dt = L - 1, kx.dtype
    ar = jnp.arange(K)
    e = lambda i: (ar == i).astype(dt)
    z = lambda *s: jnp.zeros(s, dt)
    n = jnp.zeros(L, jnp.int32).at[0].add(1).at[L - 1].add(1)
    w0 = (1 + xi["cw"]) * e(0)                        # the readout: layer L - 1, direction 0
    u = jnp.sqrt(kx) * (1 + xi["cu"]) * e(0)          # W^0 x / sqrt(D): layer 0, direction 0
    # the state is the network itself, in coordinates: the readout w, the first layer's update
    # a (W^0(t) x / sqrt(D) = u + kx a), each matrix's update dW^m = W^m(t) - W^m(0) (K, K)
    # and what has been revealed of W^m(0)
    S0 = dict(w=w0, a=z(K), dW=z(M, K, K), Q=z(M, R, K), WQ=z(M, R, K), Pb=z(M, R, K),
              WtP=z(M, R, K), f0=z(), n=n, rq=jnp.zeros(M, jnp.int32),
              rp=jnp.zeros(M, jnp.int32), cutq=jnp.zeros(M, bool), cutp=jnp.zeros(M, bool),
              over=jnp.array(False), bad=jnp.array(False))

    def reveal(B, WB, Bo, WBo, v, znew, chi, n_out):
        """W (or W^T) applied to v, with B / WB the rows of the basis on this side and the
        matrix applied to them, Bo / WBo those of the other side: the product, the new basis
        row and its image, and whether v had a part outside span(B) above round-off."""
        c, vp = _orth(B, v)
        r2 = vp @ vp
        new = r2 > tol ** 2 * (v @ v)
        r = jnp.sqrt(jnp.where(new, r2, 1.0))
        vh = jnp.where(new, vp / r, 0.0)
        fresh = znew * (ar < n_out)
        fresh = fresh - (Bo @ fresh) @ Bo + (1 + chi) * e(n_out)
        out = c @ WB + (WBo @ vp) @ Bo + jnp.where(new, r, 0.0) * fresh
        return out, vh, (WBo @ vh) @ Bo + fresh, new, jnp.sqrt(r2 / (v @ v + 1e-300))

    def sweep(S, n, x, v, left):
        """One pass of queries through the M matrices, as a scan over them (one compiled body
        for all layers): ``left`` the backward pass g^m = W^m(t)^T g^{m+1} / sqrt(N) from the
        readout down, else the forward pass h^{m+1} = W^m(t) h^m / sqrt(N) from the first layer
        up; ``v`` the vector entering it. Each query reveals what it must of W^m(0) (updating
        that matrix's bases and flags in ``S``). Returns the vectors of the M layers it reaches
        (g^0..g^{M-1} or h^1..h^M, stacked in layer order) and the new direction counts."""
        if left:
            B, WB, Bo, WBo, rows, cut, zk, ck = "Pb WtP Q WQ rp cutp zp cp".split()
        else:
            B, WB, Bo, WBo, rows, cut, zk, ck = "Q WQ Pb WtP rq cutq zq cq".split()

        def one(carry, xs):
            v, n, over, bad = carry
            m, Bm, WBm, Bom, WBom, r, cutm, znew, chi, dWm = xs
            land = m if left else m + 1
            out, vh, col, new, rel = reveal(Bm, WBm, Bom, WBom, v, znew, chi, n[land])
            over = over | (new & ((r >= R) | (n[land] >= K)))
            # a substantial new direction after a dropped one (module docstring)
            bad = bad | (new & cutm & (rel > _LATE))
            v_next = out + (v @ dWm if left else dWm @ v)
            ys = (Bm.at[r].set(vh, mode="drop"),
                  WBm.at[r].set(jnp.where(new, col, 0.0), mode="drop"),
                  r + new, cutm | ~new, v_next)
            return (v_next, n.at[land].add(new), over, bad), ys

        xs = (jnp.arange(M), S[B], S[WB], S[Bo], S[WBo], S[rows], S[cut], x[zk], x[ck], S["dW"])
        (_, n, S["over"], S["bad"]), (S[B], S[WB], S[rows], S[cut], vs) = jax.lax.scan(
            one, (v, n, S["over"], S["bad"]), xs, reverse=left)
        return vs, n

    def step(S, xs):
        t, x = xs
        S = dict(S)
        n, w = S["n"], S["w"]

        def backward(n):                 # g^L = w, g^m = W^m(t)^T g^{m+1} / sqrt(N)
            g, n = sweep(S, n, x, w, left=True)
            return jnp.concatenate([g, w[None]]), n

        def forward(n):                  # h^1 = W^0(t) x / sqrt(D), h^{m+1} = W^m(t) h^m / sqrt(N)
            h0 = u + kx * S["a"]
            h, n = sweep(S, n, x, h0, left=False)
            return jnp.concatenate([h0[None], h]), n
        # (the order of the queries is arbitrary: the answer does not depend on it)
        if forward_first:
            h, n = forward(n)
            g, n = backward(n)
        else:
            g, n = backward(n)
            h, n = forward(n)
        f = h[L - 1] @ w / gamma0
        S["f0"] = jnp.where(t == 0, f, S["f0"])
        d = y - (f - S["f0"])
        # the gradient step with this error (learning rate eta gamma0^2 N, in coordinates)
        coef = gamma0 * eta * d
        S["w"] = w + coef * h[L - 1]
        S["a"] = S["a"] + coef * g[0]
        S["dW"] = S["dW"] + coef * g[1:, :, None] * h[:-1, None, :]
        S["n"] = n
        G = jnp.sum(g * g, axis=1)                   # G^l(t, t), layer l = 0..L-1
        Phi = jnp.sum(h * h, axis=1)                 # Phi^l(t, t)
        ntk = G[0] * kx + jnp.sum(G[1:] * Phi[:-1]) + Phi[L - 1]
        out = [d[None], ntk[None]] + ([Phi, G] if kernels else [])
        return S, jnp.concatenate(out)

    S, outs = jax.lax.scan(step, S0, (jnp.arange(T1), xi_steps(xi)))
    info = dict(n=S["n"], rq=S["rq"], rp=S["rp"], over=S["over"], bad=S["bad"])
    return outs, info


def xi_steps(xi):
    """The per-step slices of the noise (the scan's inputs)."""
    return {k: xi[k] for k in ("zq", "cq", "zp", "cp")}


@partial(jax.jit, static_argnames=("L", "T1", "K", "R", "kernels"))
def _forward(kx, y, gamma0, eta, *, L, T1, K, R, kernels):
    """The infinite-width run (xi = 0): outputs and the directions it created."""
    xi = _noise(L, T1, K, kx.dtype)
    return _simulate(kx, y, gamma0, eta, xi, L=L, T1=T1, K=K, R=R, tol=_tol(kx.dtype),
                     kernels=kernels)


@partial(jax.jit, static_argnames=("L", "T1", "K", "R", "kernels", "chunk", "forward_first"))
def _variances(kx, y, gamma0, eta, *, L, T1, K, R, kernels, chunk, forward_first=False):
    """N Var of every output (T1, n_out) from the vector-Jacobian products of the simulation,
    ``chunk`` outputs at a time, with the run's outputs and its flags."""
    xi0 = _noise(L, T1, K, kx.dtype)
    f = lambda xi: _simulate(kx, y, gamma0, eta, xi, L=L, T1=T1, K=K, R=R, tol=_tol(kx.dtype),
                             kernels=kernels, forward_first=forward_first)
    outs, vjp, info = jax.vjp(f, xi0, has_aux=True)
    n_out = outs.size
    weight = {k: (0.5 if k.startswith("c") else 1.0) for k in xi0}
    pad = -n_out % chunk

    def var_of(idx):
        def one(i):
            ct = jnp.zeros(n_out + pad, outs.dtype).at[i].set(1.0)[:n_out].reshape(outs.shape)
            (g,) = vjp(ct)
            return sum(weight[k] * jnp.sum(g[k] ** 2) for k in g)
        return jax.vmap(one)(idx)
    var = jax.lax.map(var_of, jnp.arange(n_out + pad).reshape(-1, chunk)).reshape(-1)[:n_out]
    return var.reshape(outs.shape), outs, info


def one_example_propagator(Kx, y, gamma0, eta, depth, steps, kernels=False,
                           forward_first=False):
    """(var_delta (T1,), var_ntk (T1,), phi (L, T1) or None, g (L, T1) or None, outputs, info)
    for one example (Kx, y of shape (1, 1) and (1,)), depth >= 2, the exact discrete update.
    Raises RuntimeError when the check of the module docstring fails (a dropped query followed
    by a new direction of the same kind)."""
    # (scalars made on the host: indexing a device array compiles a program per shape)
    dt = jnp.asarray(Kx).dtype
    kx, yy = (jnp.asarray(np.asarray(a, np.float64).reshape(-1)[0], dt) for a in (Kx, y))
    L, T1 = depth, steps + 1
    # a first pass at infinite width finds how many directions the run creates (the arrays are
    # then sized by that, not by T: each layer's trajectory is numerically low-rank)
    K, R, M = min(2 * T1 + 1, 64), min(T1, 32), L - 1
    what = f"this deep linear propagator (depth={L}, steps={T1 - 1})"
    argname = "depth (or steps)" if L > T1 else "steps (or depth)"
    while T1 > 48:              # (short runs skip this pass and its compilation: full size)
        _checks.fits(8.0 * 4 * (T1 * M * (2 * K + 2) + M * K * K + 4 * M * R * K), argname, what)
        _, info = _forward(kx, yy, gamma0, eta, L=L, T1=T1, K=K, R=R, kernels=kernels)
        if not bool(info["over"]):
            break
        K, R = min(2 * T1 + 1, 2 * K), min(T1, 2 * R)
    # (with a margin, rounded up to a multiple of 8 so that runs at other gamma0 or eta share
    # the compiled code)
    up = lambda k: 8 * (k // 8 + 1)
    if T1 > 48:
        K = min(2 * T1 + 1, up(int(np.max(np.asarray(info["n"]))) + 4))
        R = min(T1, up(int(max(np.max(np.asarray(info["rq"])),
                               np.max(np.asarray(info["rp"])))) + 4))
    else:
        K, R = 2 * T1 + 1, T1
    # memory: the scan keeps the state of every step for the reverse pass, and each of the
    # ``chunk`` outputs differentiated together needs a noise-sized and a state-sized array
    state = M * K * K + 4 * M * R * K + 4 * K
    noise = T1 * M * (2 * K + 2)
    n_out = T1 * (2 + (2 * L if kernels else 0))
    chunk = int(max(1, min(n_out, 2 ** 26 // (2 * (noise + state)))))
    _checks.fits(8.0 * (3 * T1 * state + 2 * chunk * (noise + state)), argname,
                 f"{what}, with {K} directions per layer,")
    while True:
        var, outs, info = _variances(kx, yy, gamma0, eta, L=L, T1=T1, K=K, R=R,
                                     kernels=kernels, chunk=chunk,
                                     forward_first=forward_first)
        if not bool(info["over"]):
            break
        K, R = min(2 * T1 + 1, 2 * K), min(T1, 2 * R)       # (round-off moved a threshold)
    if bool(info["bad"]):
        raise RuntimeError("a weight matrix created a new direction after dropping a query "
                           "below round-off")
    var, outs = np.asarray(var), np.asarray(outs)
    phi = g = None
    if kernels:
        phi, g = var[:, 2:2 + L].T, var[:, 2 + L:].T
    return var[:, 0], var[:, 1], phi, g, outs, info
