"""Benchmark: the finite-width propagator (widenets.fluctuations) against a dense linear response.

    python benchmarks/bench_fluctuations.py           # the settings below
    python benchmarks/bench_fluctuations.py --quick   # small sizes (a smoke test, seconds)

Settings (float64, one example with Kx = 1 and y = 1 unless stated, gamma0 = 1, exact discrete
gradient descent):

* two-layer linear, T = 30, 100, 300: ``propagator(depth=1, activation="linear")`` (forward mode
  through the causal recursion of the Wishart covariance of the sources) against the dense
  route written here: the order parameters q = (Phi(t, s), G(t, s), f(t)) at all pairs of times,
  the Jacobian of the dense DMFT map q -> Psi(q) (jacfwd), the linear response
  (I - dPsi)^{-1} by one dense solve, and N Cov = R kappa R^T with kappa the Isserlis covariance
  of the single-site products. This is the route of the authors' code (a dense Hessian of the
  action has the same size, (T+1)^4 entries per kernel); it is run where it fits in memory and
  its answer must equal ours to round-off.
* two-layer tanh, P = 1, T = 100, S = 4000: the Monte-Carlo propagator (influence function by
  reverse mode); target < 10 s.
* deep linear, depth 4, one example: ``propagator(depth=4)`` (for one example the Gaussian
  conditioning of :mod:`widenets.fluctuations.conditioning`) at T = 4..300 (targets: < 3 s at
  T = 30, < 60 s at T = 300), against the action route (``method="action"``, the terminating
  iteration of :mod:`widenets.fluctuations.deep`) up to T = 30 and the dense action Hessian of
  tests/_dense_reference.py (the whole Hessian of the coupling and one dense solve) at T = 4..10,
  where that fits; with the growth exponent over T >= 30.

Each measurement is printed as one JSON line and written to benchmarks/results/fluctuations.jsonl.
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
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import widenets as wn  # noqa: E402
from _timing import time_it  # noqa: E402

import sys  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from _dense_reference import dense_propagator as dense_deep  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _dense_pieces(q, Kx, y, gamma0, eta, T1):
    """The dense two-layer DMFT map at the order parameters ``q`` (Phi, G, f): the fields are
    h = u + A g and g = r + B h with u ~ N(0, Kx), r ~ N(0, 1) (constant in time); returns the
    new order parameters and the covariance C of one neuron's fields (h, g, h', g')."""
    P = Kx.shape[0]
    TP, c = T1 * P, eta / P
    t_of = jnp.arange(TP) // P
    before = (t_of[None, :] < t_of[:, None]).astype(Kx.dtype)
    before_g = (t_of[None, :] < jnp.arange(T1)[:, None]).astype(Kx.dtype)
    d = (y[None, :] - (q["f"] - q["f"][0]) / gamma0).reshape(-1)             # Delta(s, nu)
    Phi0, ones = jnp.tile(Kx, (T1, T1)), jnp.ones((T1, T1), Kx.dtype)
    A = gamma0 * c * (Phi0 * (d[None, :] * before)).reshape(TP, T1, P).sum(-1)
    B = gamma0 * c * jnp.repeat(ones, P, axis=1) * d[None, :] * before_g
    Gr = jnp.linalg.inv(jnp.eye(T1, dtype=Kx.dtype) - B @ A)
    Gu = Gr @ B
    Fh = jnp.concatenate([jnp.eye(TP, dtype=Kx.dtype) + A @ Gu, A @ Gr], 1)  # h = Fh (u, r)
    Fg = jnp.concatenate([Gu, Gr], 1)                                          # g = Fg (u, r)
    S = jax.scipy.linalg.block_diag(Phi0, ones)
    Phi, G, Chg = Fh @ S @ Fh.T, Fg @ S @ Fg.T, Fh @ S @ Fg.T
    f = Chg.reshape(T1, P, T1)[jnp.arange(T1), :, jnp.arange(T1)]
    Z, Hu, Hr = jnp.zeros, Fh[:, :TP], Fh[:, TP:]        # dh/du, dh/dr
    C = jnp.block([[Phi, Chg, Hu, Hr],
                   [Chg.T, G, Gu, Gr],
                   [Hu.T, Gu.T, Z((TP, TP)), Z((TP, T1))],
                   [Hr.T, Gr.T, Z((T1, TP)), Z((T1, T1))]])
    return dict(phi=Phi, g=G, f=f), C


def dense_propagator(Kx, y, gamma0, eta, steps):
    """N Var[Delta(t)] by the dense linear response (see the module docstring)."""
    T1, P = steps + 1, Kx.shape[0]
    TP = T1 * P
    # start from the causal solver's answer (iterating the dense map from zero overflows at
    # T >= 25) and polish it with two dense sweeps
    sol = wn.dmft.deep_linear(Kx, y, depth=1, gamma0=gamma0, eta=eta, steps=steps,
                              update="exact")
    q = dict(phi=jnp.asarray(sol.phi).reshape(TP, TP), g=jnp.asarray(sol.g[0]),
             f=gamma0 * (y[None, :] - jnp.asarray(sol.delta)))
    for _ in range(2):
        q = _dense_pieces(q, Kx, y, gamma0, eta, T1)[0]
    C = _dense_pieces(q, Kx, y, gamma0, eta, T1)[1]
    flat, unravel = ravel_pytree(q)
    dPsi = jax.jacfwd(lambda v: ravel_pytree(_dense_pieces(unravel(v), Kx, y, gamma0, eta,
                                                           T1)[0])[0])(flat)
    R = jnp.linalg.inv(jnp.eye(flat.size) - dPsi)             # d q / d eps, dense
    # Delta(t) = y - (f(t) - f(0)) / gamma0: its response to the noise eps
    idx = unravel(jnp.arange(flat.size))
    rows = -(R[idx["f"][:, 0]] - R[idx["f"][0, 0]][None, :]) / gamma0      # (T1, n), P = 1
    n = C.shape[0]

    def var(row):
        ct = unravel(row)
        M = jnp.zeros((n, n)).at[:TP, :TP].set(ct["phi"]).at[TP:TP + T1, TP:TP + T1].set(ct["g"])
        M = M.at[TP + jnp.arange(T1), jnp.arange(TP)].add(ct["f"][:, 0])   # f = <g(t) h(t)>
        M = (M + M.T) / 2
        W = M @ C
        return 2 * jnp.sum(W * W.T)
    return jax.vmap(var)(rows)


def record(out, **kw):
    print(json.dumps(kw), flush=True)
    out.append(kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    out = []
    Kx, y = jnp.ones((1, 1)), jnp.ones(1)
    gamma0, eta = 1.0, 0.1
    Ts = [10, 20] if args.quick else [30, 60, 100, 300]
    dense_max = 20 if args.quick else 60
    for T in Ts:
        run = lambda: wn.fluctuations.propagator(Kx, y, depth=1, activation="linear",
                                                 gamma0=gamma0, eta=eta, steps=T).delta
        t0 = time.perf_counter()
        ours = run()
        first = time.perf_counter() - t0
        t_ours, ours = time_it(run, 3)
        row = dict(case="two-layer linear", T=T, ours_s=round(t_ours, 4),
                   ours_first_call_s=round(first, 2))
        if T <= dense_max:
            t_dense, dense = time_it(lambda: dense_propagator(Kx, y, gamma0, eta, T), 1)
            row.update(dense_s=round(t_dense, 3), ratio=round(t_dense / t_ours, 1),
                       max_abs_diff=float(np.max(np.abs(np.asarray(dense) - ours[:, 0]))),
                       peak=float(ours.max()))
        record(out, **row)
    # two-layer tanh by Monte Carlo
    T, S = (30, 1000) if args.quick else (100, 4000)
    run = lambda: wn.fluctuations.propagator(Kx, y, depth=1, activation="tanh", gamma0=gamma0,
                                             eta=eta, steps=T, samples=S,
                                             key=jax.random.PRNGKey(0)).delta
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    t_mc, res = time_it(run, 3)
    record(out, case="two-layer tanh Monte Carlo", T=T, samples=S, ours_s=round(t_mc, 3),
           ours_first_call_s=round(first, 2), target_s=10, peak=float(res.max()))
    # deep linear, depth 4, one example: ours (the Gaussian-conditioning route, the default for
    # P = 1) against the action route of the previous release (the terminating iteration) and,
    # where it fits, the dense action Hessian
    depth, eta_d = 4, 0.05
    T_dense = [4, 6] if args.quick else [4, 6, 8, 10]
    T_action = [4, 6] if args.quick else [4, 6, 8, 10, 30]
    T_ours = [4, 6] if args.quick else [4, 6, 8, 10, 30, 100, 300]
    our_times = {}
    for T in T_ours:
        prop = lambda method=None: wn.fluctuations.propagator(
            Kx, y, depth=depth, activation="linear", gamma0=gamma0, eta=eta_d, steps=T,
            method=method)
        t0 = time.perf_counter()
        prop()
        first = time.perf_counter() - t0
        t_ours, ours = time_it(lambda: prop().delta, 3)
        our_times[T] = t_ours
        row = dict(case="deep linear, depth 4", T=T, ours_s=round(t_ours, 3),
                   ours_first_call_s=round(first, 2), peak=float(ours.max()))
        if T in T_action:
            prop("action")                                                # compile
            t_act, act = time_it(lambda: prop("action").delta, 1)
            row.update(action_s=round(t_act, 3), ratio_action=round(t_act / t_ours, 1),
                       max_rel_diff_action=float(np.max(np.abs(act - ours)) / np.max(act)))
        if T in T_dense:
            run_d = lambda: dense_deep(Kx, y, gamma0, eta_d, depth, T)[0]
            run_d()                                                        # compile
            t_dense, dense = time_it(run_d, 1)
            row.update(dense_s=round(t_dense, 3), ratio=round(t_dense / t_ours, 1),
                       max_abs_diff=float(np.max(np.abs(dense - np.asarray(ours)))))
        if T == 30:
            row["target_s"] = 3
        if T == 300:
            row["target_s"] = 60
        record(out, **row)
    big = sorted(t for t in our_times if t >= 30)
    if len(big) >= 2:
        Ts = np.array(big)
        slope = np.polyfit(np.log(Ts + 1), np.log([our_times[t] for t in Ts]), 1)[0]
        record(out, case="deep linear propagator, depth 4: growth", exponent=round(float(slope), 2),
               note="time ~ (T+1)^exponent over T >= 30 (outputs ~ T, each a reverse pass of "
                    "~T steps over arrays sized by the directions the run creates, ~20 here)")
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "fluctuations.jsonl", "w") as fh:
        for r in out:
            fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
