"""Benchmark: the two-layer Monte-Carlo DMFT against a straightforward alternating-sampling baseline.

    python benchmarks/bench_nonlinear.py           # P=10, D=20, T=100, S=1000, ReLU, gamma0=1
    python benchmarks/bench_nonlinear.py --quick   # small sizes (a smoke test)

The baseline, written here from the field equations, is the textbook alternating scheme:
with the samples fixed, hold the error Delta(t) of the previous sweep, evolve the sampled fields
through all times, average them into kernels, recompute the error, damp (0.5), and repeat until
the error changes by less than 1e-8. (Updating all times at once from the previous sweep's
fields, as a dense causal operator, diverged at T = 100 even with damping.) ``widenets.dmft.nonlinear`` solves the same equations for the
same samples in one causal pass. Both use float64 and the same random sources, so they must
agree to round-off; the script reports times (median of repeats after a warm-up), the ratio,
the agreement, and how our time grows with T, P and S. Deep networks (response functions A, B)
are not benchmarked yet (issue 5).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402

import widenets as wn  # noqa: E402
from _timing import time_it  # noqa: E402
from widenets import dmft  # noqa: E402


def sources(Kx, S, key):
    """The samples `dmft._two_layer_mc` draws for this key: u ~ N(0, Kx) (S, P), r ~ N(0, 1) (S,)."""
    jnp = jax.numpy
    ku, kr = jax.random.split(key)
    lam, V = jnp.linalg.eigh(jnp.asarray(Kx))           # same ops as the solver: same samples
    root = V * jnp.sqrt(jnp.clip(lam, 0.0))
    u = jax.random.normal(ku, (S, lam.shape[0]), jnp.float64) @ root.T
    r = jax.random.normal(kr, (S,), jnp.float64)
    return np.asarray(u), np.asarray(r)


def baseline(Kx, y, u, r, *, gamma0, eta, steps, tol=1e-8, damping=0.5, max_sweeps=2000):
    """Alternating sampling (numpy, float64; ReLU): with the error Delta(t) of the previous
    sweep held fixed, evolve the sampled fields through all times (a loop over t, vectorised
    over samples), average them into kernels, recompute Delta by the Euler recursion, damp,
    and repeat until Delta changes by less than ``tol``."""
    Kx, y = np.asarray(Kx), np.asarray(y)
    S, P = u.shape
    T1, c = steps + 1, eta / len(y)
    delta = np.tile(y, (T1, 1))
    for sweep in range(1, max_sweeps + 1):
        acc, z = np.zeros((S, P)), r.copy()
        K = np.empty((T1, P, P))
        for t in range(T1):
            h = u + gamma0 * c * acc @ Kx
            a = np.maximum(h, 0)
            g = (h > 0) * z[:, None]
            K[t] = a.T @ a / S + (g.T @ g / S) * Kx
            acc = acc + delta[t][None, :] * g
            z = z + gamma0 * c * a @ delta[t]
        new = np.empty_like(delta)
        d = y.copy()
        for t in range(T1):
            new[t] = d
            d = d - c * K[t] @ d
        change = np.max(np.abs(new - delta))
        delta = damping * new + (1 - damping) * delta
        if change < tol:
            break
    return new, sweep


def setting(P, T, S, *, gamma0=1.0, eta=0.075, repeats=3, run_baseline=True):
    task = wn.data.gaussian_task(jax.random.PRNGKey(0), P, 2 * P)
    Kx = np.asarray(wn.data.input_kernel(task.X), np.float64)
    y = np.asarray(task.y, np.float64)
    key = jax.random.PRNGKey(1)
    solve = lambda: dmft._two_layer_mc(Kx, y, gamma0, eta, key, activation="relu", steps=T,
                                       samples=jax.numpy.zeros(S))[0]
    t0 = time.perf_counter()
    jax.block_until_ready(solve())
    first = time.perf_counter() - t0
    ours, delta = time_it(solve, repeats)
    full, _ = time_it(lambda: dmft.nonlinear(Kx, y, depth=1, activation="relu", gamma0=gamma0,
                                             eta=eta, steps=T, samples=S, key=key).loss, repeats)
    row = dict(P=P, T=T, S=S, gamma0=gamma0, eta=eta, ours_one_pass_s=ours,
               ours_with_stderr_repeats_s=full, first_call_s=first)
    if run_baseline:
        u, r = sources(Kx, S, key)
        t0 = time.perf_counter()
        d_b, sweeps = baseline(Kx, y, u, r, gamma0=gamma0, eta=eta, steps=T)
        tb = time.perf_counter() - t0
        row.update(baseline_s=tb, baseline_sweeps=sweeps, ratio=tb / ours,
                   max_diff_delta=float(np.max(np.abs(d_b - np.asarray(delta)))))
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rows = [setting(5, 20, 200) if args.quick else setting(10, 100, 1000)]
    print(json.dumps(rows[0]))
    if not args.quick:
        print("# scaling of the one-pass solver (no baseline)")
        for P, T, S in [(10, 200, 1000), (10, 400, 1000), (20, 100, 1000), (40, 100, 1000),
                        (10, 100, 4000), (10, 100, 16000)]:
            rows.append(setting(P, T, S, run_baseline=False))
            print(json.dumps(rows[-1]))
    out = pathlib.Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "nonlinear.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
