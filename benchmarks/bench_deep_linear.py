"""Benchmark: the deep linear DMFT solver against a straightforward dense baseline.

    python benchmarks/bench_deep_linear.py            # the two settings of issue 4 + scaling
    python benchmarks/bench_deep_linear.py --quick    # small sizes only (a smoke test)

The baseline, written here from the field equations, is the textbook approach: damped Picard
sweeps in which every layer forms the dense (TP) x (TP) operators a, b of the single-site
fields (g indexed by (t, mu) too), inverts ``I - a b`` and ``I - b a`` with dense inverses,
and updates the kernels, until the relative change falls below 1e-8. ``widenets.dmft.deep_linear``
instead solves the same equations exactly in one causal pass over time. Both run in float64 in
the same process; the script reports absolute times, the ratio, and the largest difference of
the solutions. Times are medians of repeats after a warm-up call (compilation excluded and
reported separately).
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


def baseline(Kx, y, *, depth, gamma0, eta, steps, tol=1e-8, damping=0.5, max_sweeps=500):
    """Dense Picard iteration with (TP) x (TP) inverses (numpy, float64). Returns (delta, phi, sweeps)."""
    Kx, y = np.asarray(Kx), np.asarray(y)
    P, L, T1 = len(y), depth, steps + 1
    n = T1 * P
    c = eta / P
    t_of = np.arange(n) // P
    strict = (t_of[None, :] < t_of[:, None]).astype(float)
    Phi0, ones = np.tile(Kx, (T1, T1)), np.ones((n, n))
    I = np.eye(n)
    Phi = [Phi0.copy() for _ in range(L)]          # lazy start
    G = [ones.copy() for _ in range(L)]
    Rh = [np.zeros((n, n)) for _ in range(L)]      # dh/dr (TP x TP)
    Rg = [np.zeros((n, n)) for _ in range(L)]      # dg/du
    delta = np.zeros((T1, P))
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        # error dynamics from the current kernels
        d = y.copy()
        for t in range(T1):
            delta[t] = d
            K = G[0][t * P:(t + 1) * P, t * P:(t + 1) * P] * Kx
            for l in range(L):
                gup = 1.0 if l == L - 1 else G[l + 1][t * P, t * P]
                K = K + gup * Phi[l][t * P:(t + 1) * P, t * P:(t + 1) * P]
            d = d - c * K @ d
        dflat = delta.reshape(-1)
        new = []
        for l in range(L):
            Phi_dn = Phi0 if l == 0 else Phi[l - 1]
            G_up = ones if l == L - 1 else G[l + 1]
            a = gamma0 * c * Phi_dn * dflat[None, :] * strict + (Rh[l - 1] if l > 0 else 0)
            b = gamma0 * c * G_up * dflat[None, :] * strict + (Rg[l + 1] if l < L - 1 else 0)
            M = np.linalg.inv(I - a @ b)
            Mp = np.linalg.inv(I - b @ a)
            new.append((M @ (Phi_dn + a @ G_up @ a.T) @ M.T,
                        Mp @ (G_up + b @ Phi_dn @ b.T) @ Mp.T, M @ a, Mp @ b))
        change = max(np.max(np.abs(nw[0] - Phi[l])) / np.max(np.abs(Phi[l]))
                     for l, nw in enumerate(new))
        for l, (ph, g, rh, rg) in enumerate(new):
            Phi[l] = damping * ph + (1 - damping) * Phi[l]
            G[l] = damping * g + (1 - damping) * G[l]
            Rh[l] = damping * rh + (1 - damping) * Rh[l]
            Rg[l] = damping * rg + (1 - damping) * Rg[l]
        if change < tol:
            break
    return delta, np.stack(Phi), sweeps


def setting(P, D, T, L, *, gamma0=1.0, eta=0.1, repeats=3, run_baseline=True):
    task = wn.data.gaussian_task(jax.random.PRNGKey(0), P, D)
    Kx = wn.data.input_kernel(task.X)
    solve = lambda: wn.dmft.deep_linear(Kx, task.y, depth=L, gamma0=gamma0, eta=eta, steps=T)
    t0 = time.perf_counter()
    sol = solve()
    first = time.perf_counter() - t0
    t_ours, sol = time_it(lambda: solve(), repeats)
    row = dict(P=P, D=D, T=T, L=L, gamma0=gamma0, eta=eta, ours_s=t_ours, ours_first_call_s=first,
               residual=float(sol.residuals[-1]), converged=bool(sol.converged))
    if run_baseline:
        t0 = time.perf_counter()
        d_b, phi_b, sweeps = baseline(Kx, task.y, depth=L, gamma0=gamma0, eta=eta, steps=T)
        t_base = time.perf_counter() - t0
        row.update(baseline_s=t_base, baseline_sweeps=sweeps, ratio=t_base / t_ours,
                   max_diff_delta=float(np.max(np.abs(d_b - np.asarray(sol.delta)))),
                   max_diff_phi=float(np.max(np.abs(phi_b - np.asarray(sol.phi).reshape(phi_b.shape)))))
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes only")
    args = ap.parse_args()
    rows = []
    targets = [(10, 20, 100, 3, 0.5), (20, 40, 100, 5, 5.0)]
    if args.quick:
        targets = [(5, 10, 30, 2, 0.5)]
    for P, D, T, L, target in targets:
        r = setting(P, D, T, L)
        r["target_s"] = target
        rows.append(r)
        print(json.dumps(r))
    if not args.quick:
        print("# scaling (ours only): time vs T at P=10, L=3, and vs P at T=100, L=3")
        for T in (50, 100, 200, 400):
            r = setting(10, 20, T, 3, run_baseline=False, repeats=1)
            rows.append(r)
            print(json.dumps(r))
        for P in (5, 10, 20, 40):
            r = setting(P, 2 * P, 100, 3, run_baseline=False, repeats=1)
            rows.append(r)
            print(json.dumps(r))
        print("# largest T*P solved within 60 s (P=10, L=3, doubling T)")
        T = 400
        while True:
            T *= 2
            r = setting(10, 20, T, 3, run_baseline=False, repeats=1)
            rows.append(r)
            print(json.dumps(r))
            if r["ours_s"] + r["ours_first_call_s"] > 60 or T >= 3200:
                break
    out = pathlib.Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "deep_linear.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
