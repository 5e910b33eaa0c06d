"""Benchmark: the Monte-Carlo DMFT (one causal pass) against alternating sampling.

    python benchmarks/bench_nonlinear.py           # the issue's two settings, then scaling
    python benchmarks/bench_nonlinear.py --quick   # small sizes (a smoke test, seconds)

Settings (float64, ``gamma0 = 1``, ``eta = 0.075``, Gaussian inputs with D = 2P, +-1 targets):

* two-layer ReLU, P=10, T=100, S=1000 (the authors' notebook: 93 s; target < 3 s);
* deep tanh with the response functions A, B: P=10, T=100, L=3, S=1000 (the authors' approach
  is out of reach on a CPU; target < 2 minutes).

The baseline, written here from the field equations in plain numpy, is the textbook
*alternating sampling* scheme of Bordelon & Pehlevan (2022): hold all order parameters of the
previous sweep (the error Delta, the kernels Phi, G and the responses A, B at all pairs of
times), evolve the sampled fields through all times with them (a loop over t, vectorised over
samples), average into new order parameters, recompute Delta, damp (0.5) and repeat until Delta
changes by less than 1e-8. It uses *the same random numbers* as ``widenets.dmft.nonlinear``
(sources, projections and probes). For two-layer networks (no response functions) both must
then agree to round-off. For deep ones the baseline estimates A and B with plain probes, while
the package averages their leading term exactly and probes only the remainder (a control
variate, see the comment above ``dmft._derivatives``): the two then differ by the probe noise
that the control variate removes (~4e-3 in Delta at S = 100, less at larger S). The script
reports the times (ours: median of repeats after a warm-up, compilation separately), the ratio,
the number of sweeps and the agreement, then how our time grows with T, P and S.
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

ACT = {"relu": (lambda h: np.maximum(h, 0), lambda h: (h > 0) * 1.0, lambda h: 0 * h),
       "tanh": (np.tanh, lambda h: 1 / np.cosh(h) ** 2,
                lambda h: -2 * np.tanh(h) / np.cosh(h) ** 2)}


def baseline(Kx, y, noise, *, depth, activation, gamma0, eta, steps, tol=1e-8, damping=0.5,
             max_sweeps=500):
    """Damped alternating sampling (numpy, float64) on the given noise; returns (delta, sweeps)."""
    phi, dphi, d2phi = ACT[activation]
    Kx, y = np.asarray(Kx), np.asarray(y)
    nz = {k: np.asarray(v) for k, v in noise.items()}
    L, P, T1 = depth, len(y), steps + 1
    S, TP = nz["u1"].shape[0], T1 * P
    nA = L - 1
    SK = nz["vA"].shape[1] if nA else S
    K = SK // S
    c, rS = eta / P, np.sqrt(S)
    t_of = np.arange(TP) // P
    strict, causal = t_of[:, None] > t_of[None, :], t_of[:, None] >= t_of[None, :]
    rep = lambda x: np.repeat(x, K, axis=0)
    rows = lambda M, t: M[t * P:(t + 1) * P]
    z = lambda *s: np.zeros(s)
    # order parameters of the previous sweep: start from the lazy values (no learning)
    old = dict(delta=np.tile(y, (T1, 1)), Phi=[z(TP, TP) for _ in range(L)],
               G=[z(TP, TP) for _ in range(L)], A=[z(TP, TP) for _ in range(nA)],
               B=[z(TP, TP) for _ in range(nA)])
    for sweep in range(1, max_sweeps + 1):
        F, Gh = [z(S, TP) for _ in range(L)], [z(S, TP) for _ in range(L)]
        dFA, dGA, dFB, dGB = ([z(SK, TP) for _ in range(nA)] for _ in range(4))
        dflat_all = old["delta"].reshape(-1)
        for t in range(T1):
            cols = slice(t * P, (t + 1) * P)
            dflat = dflat_all * (t_of < t)
            ph, dph, d2ph, hs, dhA, dhB = [], [], [], [], {}, {}
            for l in range(L):                                  # forward fields, input up
                phi_dn = np.tile(Kx, (1, T1)) if l == 0 else rows(old["Phi"][l - 1], t)
                a_row = gamma0 * c * phi_dn * dflat[None, :]
                if l > 0:
                    a_row = a_row + rows(old["A"][l - 1], t)
                u = nz["u1"] if l == 0 else nz["Xu"][l - 1] @ ph[l - 1] / rS
                h = u + Gh[l] @ a_row.T
                F[l][:, cols] = phi(h)
                hs.append(h), ph.append(phi(h)), dph.append(dphi(h)), d2ph.append(d2phi(h))
                if l < L - 1:
                    dhA[l] = dGA[l] @ a_row.T
                    dFA[l][:, cols] = rep(dph[l]) * dhA[l]
                if l > 0:
                    dhB[l] = nz["vB"][l - 1][:, cols] + dGB[l - 1] @ a_row.T
                    dFB[l - 1][:, cols] = rep(dph[l]) * dhB[l]
            gs = [None] * L
            for l in reversed(range(L)):                        # backward fields, readout down
                g_up = np.ones((P, TP)) if l == L - 1 else rows(old["G"][l + 1], t)
                b_row = gamma0 * c * g_up * dflat[None, :]
                if l < L - 1:
                    b_row = b_row + rows(old["B"][l], t)
                r = (np.broadcast_to(nz["w"][:, None], (S, P)) if l == L - 1
                     else nz["Xr"][l] @ gs[l + 1] / rS)
                zt = r + F[l] @ b_row.T
                gs[l] = dph[l] * zt
                Gh[l][:, cols] = gs[l]
                if l < L - 1:
                    dz = nz["vA"][l][:, cols] + dFA[l] @ b_row.T
                    dGA[l][:, cols] = rep(dph[l]) * dz + rep(d2ph[l] * zt) * dhA[l]
                if l > 0:
                    dz = dFB[l - 1] @ b_row.T
                    dGB[l - 1][:, cols] = rep(dph[l]) * dz + rep(d2ph[l] * zt) * dhB[l]
        new = dict(Phi=[f.T @ f / S for f in F], G=[g.T @ g / S for g in Gh],
                   A=[(a.T @ v) / SK * strict for a, v in zip(dFA, nz["vA"])],
                   B=[(b.T @ v) / SK * causal for b, v in zip(dGB, nz["vB"])])
        diag = lambda M: M.reshape(T1, P, T1, P)[np.arange(T1), :, np.arange(T1), :]
        ntk = diag(new["G"][0]) * Kx + diag(new["Phi"][L - 1])
        for l in range(L - 1):
            ntk = ntk + diag(new["G"][l + 1]) * diag(new["Phi"][l])
        d, delta = y.copy(), np.empty((T1, P))
        for t in range(T1):
            delta[t] = d
            d = d - c * ntk[t] @ d
        change = np.max(np.abs(delta - old["delta"]))
        new["delta"] = delta
        old = {k: ([damping * n + (1 - damping) * o for n, o in zip(new[k], old[k])]
                   if isinstance(new[k], list) else damping * new[k] + (1 - damping) * old[k])
               for k in new}
        if change < tol or not np.isfinite(change):
            break
    return delta, sweep


def setting(P, T, S, *, depth, activation, gamma0=1.0, eta=0.075, repeats=3,
            run_baseline=True):
    task = wn.data.gaussian_task(jax.random.PRNGKey(0), P, 2 * P)
    Kx = np.asarray(wn.data.input_kernel(task.X), np.float64)
    y = np.asarray(task.y, np.float64)
    key = jax.random.PRNGKey(1)
    kw = dict(depth=depth, activation=activation, gamma0=gamma0, eta=eta, steps=T, samples=S,
              key=key, progress=False)
    t0 = time.perf_counter()
    jax.block_until_ready(dmft.nonlinear(Kx, y, **kw).loss)
    first = time.perf_counter() - t0
    full, sol = time_it(lambda: dmft.nonlinear(Kx, y, **kw).loss, repeats)
    # the pooled solve alone (without the repeats that estimate loss_stderr)
    (state, noise), _, (probes, _) = dmft._mc_setup(
        jax.numpy.asarray(Kx), jax.numpy.asarray(y), key, depth=depth, steps=T, samples=S,
        repeats=8, probes=None, responses=depth >= 2)
    one = lambda: dmft._mc_chunk(state, noise, jax.numpy.asarray(Kx), jax.numpy.asarray(y),
                                 gamma0, eta,
                                 jax.numpy.asarray(0), activation=activation, chunk=T + 1,
                                 responses=depth >= 2)[0]["delta"]
    jax.block_until_ready(one())
    ours, delta = time_it(one, repeats)
    row = dict(P=P, T=T, S=S, depth=depth, activation=activation, probes=probes, gamma0=gamma0,
               eta=eta, ours_one_pass_s=ours, ours_with_stderr_repeats_s=full,
               first_call_s=first)
    if run_baseline:
        t0 = time.perf_counter()
        d_b, sweeps = baseline(Kx, y, noise, depth=depth, activation=activation, gamma0=gamma0,
                               eta=eta, steps=T)
        tb = time.perf_counter() - t0
        row.update(baseline_s=tb, baseline_sweeps=sweeps, ratio=tb / ours,
                   ratio_with_repeats=tb / full,
                   max_diff_delta=float(np.max(np.abs(d_b - np.asarray(delta)[:T + 1]))))
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    two = dict(depth=1, activation="relu")
    deep = dict(depth=3, activation="tanh")
    if args.quick:
        rows = [setting(5, 20, 200, **two), setting(5, 10, 100, **deep)]
    else:
        rows = [setting(10, 100, 1000, **two), setting(10, 100, 1000, **deep)]
    for r in rows:
        print(json.dumps(r), flush=True)
    if not args.quick:
        print("# scaling of the one-pass solver (no baseline)", flush=True)
        for P, T, S, kw in [(10, 200, 1000, two), (10, 400, 1000, two), (40, 100, 1000, two),
                            (10, 100, 16000, two),
                            (10, 50, 1000, deep), (10, 200, 1000, deep), (5, 100, 1000, deep),
                            (20, 100, 1000, deep), (10, 100, 2000, deep),
                            (10, 100, 4000, deep)]:
            rows.append(setting(P, T, S, run_baseline=False, repeats=1, **kw))
            print(json.dumps(rows[-1]), flush=True)
    out = pathlib.Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "nonlinear.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
