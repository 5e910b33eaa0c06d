"""Dense cross-check of the deep linear propagator (tests and benchmarks only).

The route of the authors' code, written here from the same action: form the whole Hessian H of
the inter-layer coupling V over every layer's second moments Y_l (jax.hessian), the whole
single-site covariance K (Isserlis, as a dense matrix), and solve N Cov[Y] = (I - K H)^{-1} K
densely. Its size, L (2 (T+1) (P+1))^2 variables, limits it to T of about 10.
"""
import jax
import jax.numpy as jnp
import numpy as np

from widenets.dmft import _causal_solve
from widenets.fluctuations import deep


def dense_propagator(Kx, y, gamma0, eta, depth, steps, update="exact"):
    """N Var[Delta_mu(t)] (T+1, P) and N Var[K_mu nu(t)] (T+1, P, P) by one dense solve."""
    Kx, y = jnp.asarray(Kx, jnp.float64), jnp.asarray(y, jnp.float64)
    L, T1, P = depth, steps + 1, Kx.shape[0]
    out = _causal_solve(Kx, y, jnp.asarray(gamma0), jnp.asarray(eta), depth=L, steps=steps,
                        update=update, return_state=True)
    Phi, G, Hr, Gu, state = out[2:]
    C = jnp.stack([deep._layer_covariance(state, Phi, G, Hr, Gu, l) for l in range(L)])
    n = C.shape[-1]
    V, delta, ntk = deep._coupling(Kx, y, gamma0, eta, L, T1, update)
    flat = lambda f: (lambda v: f(v.reshape(L, n, n)))
    H = jax.hessian(flat(V))(C.reshape(-1))
    K = jax.scipy.linalg.block_diag(*[
        (jnp.einsum("ac,bd->abcd", c, c) + jnp.einsum("ad,bc->abcd", c, c)).reshape(n * n, -1)
        for c in C])
    Sigma = jnp.linalg.solve(jnp.eye(L * n * n) - K @ H, K)
    Jd = jax.jacfwd(flat(delta))(C.reshape(-1)).reshape(T1 * P, -1)
    Jk = jax.jacfwd(flat(ntk))(C.reshape(-1)).reshape(T1 * P * P, -1)
    var_d = jnp.einsum("ia,ab,ib->i", Jd, Sigma, Jd).reshape(T1, P)
    var_k = jnp.einsum("ia,ab,ib->i", Jk, Sigma, Jk).reshape(T1, P, P)
    return np.asarray(var_d), np.asarray(var_k)
