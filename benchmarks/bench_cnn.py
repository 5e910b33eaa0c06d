"""Benchmark: CNN ensembles (widenets.nets.train_cnn) and the probe NTK against baselines.

    python benchmarks/bench_cnn.py           # the settings below (minutes)
    python benchmarks/bench_cnn.py --quick   # small sizes (a smoke test, < 2 minutes)

Sizes can be changed on the command line (``--widths``, ``--n-train``, ``--steps``, ``--seeds``,
``--batch-size``, ``--probes``, ``--repeats``; see ``--help``). Float32 (the package's default),
depth-2 ReLU CNNs in muP with gamma0 = 1 on 8x8 digits, classes 0 vs 1 (``wn.data.images``).

1. Training throughput. ``train_cnn(..., n_seeds=S)`` (one jitted program, vmapped over the S
   seeds, ``lax.scan`` over time) against the baseline of a Python loop calling
   ``train_cnn(..., n_seeds=1)`` S times (the same work: S networks, same sizes), by full-batch
   GD and by minibatch SGD, at widths 32, 64, 128 and S = 8. Compilation is excluded from both
   by a warm-up call (reported separately as ``*_first_call_s``). Throughput is examples x steps
   per second, summed over the S networks (the examples of a step are the P training images for
   GD, the batch for SGD; SGD also evaluates the full training loss every step); ``ratio`` is the
   ensemble's throughput over the loop's (> 1: the ensemble is faster). The probe set is the
   first 4 training images (the kernels are recorded at the start and the end only).
   Same networks: seed s of the ensemble uses ``k_s = jax.random.split(key, S)[s]``, while
   ``train_cnn(n_seeds=1, key=k)`` uses ``jax.random.split(k, 1)[0]``, which is never ``k``: the
   loop cannot be handed the ensemble's keys through the public API. With JAX's partitionable
   Threefry (the default from JAX 0.5) ``split(key, 1)[0] == split(key, S)[0]``, so the loop's
   warm-up call (``key``) trains exactly the ensemble's seed 0, and the script checks that it
   does (``same_net_*``); the timed loop uses the keys ``split(key, S)[s]`` (other networks,
   the same work).
2. The probe NTK in the DMFT's units (``ntk_scale * J J^T``). Ours, ``cnn_init_kernels`` (the
   explicit Jacobian of the P probe outputs by ``jax.jacrev`` of the batched forward pass, then
   J J^T; it also returns the feature kernel), against neural-tangents'
   ``empirical_ntk_fn(f, trace_axes=(), vmap_axes=0)`` of the same function and weights with
   ``NTK_VECTOR_PRODUCTS`` and ``JACOBIAN_CONTRACTION`` (``STRUCTURED_DERIVATIVES`` and
   ``AUTO`` fail with this JAX), times ``ntk_scale``; they must agree to float32 round-off. A
   fourth row, written here only, is the explicit Jacobian taken per example (``vmap`` over the
   images of ``jacrev`` of one image's output): ``jacrev`` of the batched forward pass
   back-propagates every one of the P cotangents through all P images, O(P^2) image passes
   where O(P) suffice.
3. pNTK against the full NTK of a 10-logit variant of the same CNN (defined here: the readout is
   N x 10 instead of N, same multipliers and init std): the full empirical NTK (10P x 10P, nt's
   ``trace_axes=()``) against the pNTK of Mohamadi et al. (P x P, the NTK of the sum of the
   logits / sqrt(10)), both with ``JACOBIAN_CONTRACTION`` (and ``NTK_VECTOR_PRODUCTS`` at the
   smallest probe set; at larger ones only its compiled memory plan is reported). Checked:
   pNTK = sum_ab Theta_ab / 10 exactly (to round-off), and how far pNTK (x) I_10 is from the full
   NTK at initialisation (relative Frobenius distance).

Memory, for every kernel: ``analytic_bytes`` (the Jacobian and the kernel, itemsize 4), XLA's
compiled memory plan (``xla_bytes``: temporaries + outputs of the compiled program), and the
measured peak of one call (``peak_bytes``): on a device with ``memory_stats()`` the rise of
``peak_bytes_in_use`` above the bytes in use before the call; on a CPU (no memory stats) the
rise of the process's resident set during the call (Linux: freed heap returned with
``malloc_trim``, the high-water mark reset through ``/proc/self/clear_refs``, then VmHWM - VmRSS;
it sees only buffers that fault in fresh pages: large ones are mmapped, but buffers under glibc's
mmap threshold (which grows to 32 MiB) can reuse heap pages and read as ~0, so below some tens
of MiB trust XLA's plan).
Times are medians after a warm-up call; the first call (compilation included) is reported
separately.

Each measurement is printed as one JSON line and written to benchmarks/results/cnn.jsonl
(``cnn_quick.jsonl`` with ``--quick``; a ``_no_<part>`` suffix for each part left out with
``--skip``), with a summary table in ``cnn.txt`` (``cnn_quick.txt``).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import pathlib
import platform
import re
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")       # neural-tangents imports TensorFlow
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import widenets as wn  # noqa: E402
from _timing import time_it  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
ETA = 0.5
N_OUT = 10


# ----------------------------------------------------------------------------- memory
def _proc_kib(field):
    m = re.search(field + r":\s+(\d+)", pathlib.Path("/proc/self/status").read_text())
    return int(m.group(1))


def _trim():
    """Return the freed heap to the OS (glibc), so that reusing it shows in the resident set."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class PeakMemory:
    """Peak memory of the enclosed call above what was in use before it (``.bytes``; None
    where it cannot be measured). ``.how`` says how it was measured."""

    def __enter__(self):
        gc.collect()
        _trim()
        self.bytes, self.how = None, None
        stats = jax.devices()[0].memory_stats()
        if stats and "peak_bytes_in_use" in stats:
            self.how, self.base, self.peak0 = ("device peak_bytes_in_use", stats["bytes_in_use"],
                                               stats["peak_bytes_in_use"])
            return self
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")                             # reset VmHWM to the current VmRSS
            self.base = _proc_kib("VmRSS")
            self.how = "RSS high-water mark"
        except OSError:
            pass
        return self

    def __exit__(self, *exc):
        if self.how == "RSS high-water mark":
            self.bytes = 1024 * (_proc_kib("VmHWM") - self.base)
        elif self.how is not None:
            peak = jax.devices()[0].memory_stats()["peak_bytes_in_use"]
            # the peak counter cannot be reset: it only says something if this call raised it
            self.bytes = peak - self.base if peak > self.peak0 else None
        return False


def measure(fn, repeats):
    """``(first_s, median_s, peak_bytes, how, out)``: the first call (compilation included), the
    median of ``repeats`` further calls (one when it takes over a second), the peak memory of
    the first of those."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    with PeakMemory() as mem:
        t, out = time_it(fn, 1)
    ts = [t] + [time_it(fn, 1)[0] for _ in range(repeats - 1 if t < 1.0 else 0)]
    return first, float(np.median(ts)), mem.bytes, mem.how, out


def compiled(f, *args):
    """``(call, compile_s, xla_bytes)``: f jitted and compiled ahead of time for ``args``; XLA's
    memory plan is the temporaries plus the outputs of the compiled program."""
    t0 = time.perf_counter()
    c = jax.jit(f).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    return (lambda: c(*args)), compile_s, _xla_bytes(c)


def _xla_bytes(c):
    try:
        ma = c.memory_analysis()
        return int(ma.temp_size_in_bytes + ma.output_size_in_bytes)
    except Exception:                                     # not every backend plans memory
        return None


def mib(b):
    return None if b is None else round(b / 2 ** 20, 1)


def record(out, **kw):
    print(json.dumps(kw), flush=True)
    out.append(kw)


# ----------------------------------------------------------------------------- 1. training
def bench_training(out, X, y, widths, S, steps, batch_sizes, repeats):
    key = jax.random.PRNGKey(0)
    keys = jax.random.split(key, S)
    # train_cnn(n_seeds=1, key=k) trains the network of split(k, 1)[0]: the ensemble's seed 0 iff
    # split(key, 1)[0] == split(key, S)[0] (JAX's partitionable Threefry)
    seed0_shared = bool(np.array_equal(jax.random.key_data(jax.random.split(key, 1)[0]),
                                       jax.random.key_data(keys[0])))
    P = X.shape[0]
    for N in widths:
        for B in batch_sizes:
            kw = dict(depth=2, width=N, activation="relu", gamma0=1.0, eta=ETA, steps=steps,
                      batch_size=B, X_probe=X[:4])
            ens = lambda: wn.nets.train_cnn(X, y, key=key, n_seeds=S, **kw)
            t0 = time.perf_counter()
            tr_e = ens()
            jax.block_until_ready(tr_e.loss)
            ens_first = time.perf_counter() - t0
            t0 = time.perf_counter()
            tr_0 = wn.nets.train_cnn(X, y, key=key, n_seeds=1, **kw)      # warm-up = seed 0
            jax.block_until_ready(tr_0.loss)
            loop_first = time.perf_counter() - t0

            def loop():
                return [wn.nets.train_cnn(X, y, key=k, n_seeds=1, **kw).loss for k in keys]

            t_ens, t_loop = [], []
            for _ in range(repeats):              # interleaved: both see the same machine load
                t_ens.append(time_it(lambda: ens().loss, 1)[0])
                t_loop.append(time_it(loop, 1)[0])
            t_ens, t_loop = float(np.median(t_ens)), float(np.median(t_loop))
            work = S * (P if B is None else B) * steps            # examples x steps, all nets
            row = dict(case="train_cnn ensemble vs per-seed loop",
                       mode="full-batch GD" if B is None else f"SGD, batch {B}", width=N,
                       n_train=P, steps=steps, seeds=S, n_params=wn.nets.cnn_n_params(
                           wn.nets.make_cnn(X.shape[1:], depth=2, width=N)),
                       ensemble_s=round(t_ens, 3), loop_s=round(t_loop, 3),
                       ensemble_first_call_s=round(ens_first, 2),
                       loop_first_call_s=round(loop_first, 2),
                       ensemble_ex_steps_per_s=round(work / t_ens, 1),
                       loop_ex_steps_per_s=round(work / t_loop, 1),
                       ensemble_s_per_net=round(t_ens / S, 4), loop_s_per_net=round(t_loop / S, 4),
                       ratio=round(t_loop / t_ens, 3),
                       final_loss_mean=round(float(np.mean(np.asarray(tr_e.loss)[:, -1])), 4))
            if seed0_shared:
                l0, le = np.asarray(tr_0.loss[0]), np.asarray(tr_e.loss[0])
                dp = max(float(np.max(np.abs(np.asarray(a[0]) - np.asarray(b[0]))))
                         for a, b in zip(tr_0.params, tr_e.params))
                row.update(same_net_max_loss_diff=float(np.max(np.abs(l0 - le))),
                           same_net_max_param_diff=dp,
                           same_net_param_scale=max(float(np.max(np.abs(np.asarray(b[0]))))
                                                    for b in tr_e.params))
            record(out, **row)
    return seed0_shared


# ----------------------------------------------------------------------------- 2. probe NTK
def _params(net, key):
    """The weights cnn_init_kernels(net, X, key) uses for its (only) seed."""
    return wn.nets.init_cnn_params(net, jax.random.split(jax.random.split(key, 1)[0])[0])


def _per_example_ntk(net):
    """Explicit Jacobian taken one image at a time (vmap over images of jacrev), J J^T."""
    scale = wn.nets.cnn_scalings(net).ntk_scale

    def ntk(params, X):
        one = lambda x: jax.jacrev(lambda p: wn.nets._cnn_apply(net, p, x[None])[0])(params)
        J = jax.vmap(one)(X)
        J = jnp.concatenate([j.reshape(X.shape[0], -1) for j in J], axis=1)
        return scale * J @ J.T
    return ntk


def _nt_fn(nt, f, impl):
    return nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=impl)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def bench_probe_ntk(out, nt, X, widths, probes, repeats):
    key = jax.random.PRNGKey(1)
    it = 4
    impls = dict(nt_vector_products=nt.NtkImplementation.NTK_VECTOR_PRODUCTS,
                 nt_jacobian_contraction=nt.NtkImplementation.JACOBIAN_CONTRACTION)
    for N in widths:
        net = wn.nets.make_cnn(X.shape[1:], depth=2, width=N)
        scale = wn.nets.cnn_scalings(net).ntk_scale
        params = _params(net, key)
        n = wn.nets.cnn_n_params(net)
        f = lambda p, x, net=net: wn.nets._cnn_apply(net, p, x)
        for P in probes:
            Xp = X[:P]
            base = dict(case="probe NTK", width=N, n_probe=P, n_params=n)
            # ours (the public function; its jitted program is the package's cache entry)
            first, t, peak, how, k_ours = measure(lambda: wn.nets.cnn_init_kernels(net, Xp, key),
                                                  repeats)
            k_ours = np.asarray(k_ours.ntk[0])
            xla = _xla_bytes(wn.nets._CNN_INIT_KERNELS[net].lower(
                jax.random.split(key, 1), Xp).compile())
            ours_t = t
            record(out, **base, method="ours: cnn_init_kernels", s=round(t, 4),
                   first_call_s=round(first, 2), ratio_to_ours=1.0,
                   analytic_mib=mib(it * (P * n + P * P)),
                   package_estimate_mib=mib(wn.nets._cnn_kernel_bytes(net, P)),
                   xla_mib=mib(xla), peak_mib=mib(peak), peak_how=how)
            rows = [("ours, per-example Jacobian (written here)", _per_example_ntk(net),
                     (params, Xp), 1.0, it * (P * n + P * P))]
            for name, impl in impls.items():
                rows.append((name, _nt_fn(nt, f, impl), (Xp, None, params), scale,
                             it * (P * n + P * P) if "jacobian" in name else it * P * P))
            for name, fn, args, s, analytic in rows:
                call, comp, xla = compiled(fn, *args)
                _, t, peak, how, k = measure(call, repeats)
                record(out, **base, method=name, s=round(t, 4), compile_s=round(comp, 2),
                       ratio_to_ours=round(ours_t / t, 2), analytic_mib=mib(analytic),
                       xla_mib=mib(xla), peak_mib=mib(peak), peak_how=how,
                       max_rel_diff_vs_ours=_rel(s * np.asarray(k), k_ours))


# ----------------------------------------------------------------------------- 3. pNTK vs full
def _logits(net):
    """The same CNN with an N x 10 readout: f(x) = multiplier * pool(phi(h^L)) @ W (P, 10)."""
    mult = wn.nets.cnn_scalings(net).multiplier[-1]

    def f(params, X):
        convs, W = params[:-1], params[-1]
        feats = wn.nets._cnn_forward(net, convs + [W[:, 0]], X)[1]   # its scalar f is unused
        return mult * feats @ W
    return f


def bench_pntk(out, nt, X, widths, probes, repeats, vp_max_probe):
    key = jax.random.PRNGKey(2)
    it = 4
    impls = dict(jacobian_contraction=nt.NtkImplementation.JACOBIAN_CONTRACTION,
                 vector_products=nt.NtkImplementation.NTK_VECTOR_PRODUCTS)
    for N in widths:
        net = wn.nets.make_cnn(X.shape[1:], depth=2, width=N)
        sc = wn.nets.cnn_scalings(net)
        k1, k2 = jax.random.split(key)
        params = wn.nets.init_cnn_params(net, k1)[:-1] + [
            sc.init_std[-1] * jax.random.normal(k2, (N, N_OUT))]
        n = sum(int(np.prod(p.shape)) for p in params)
        f10 = _logits(net)
        fsum = lambda p, x, f10=f10: jnp.sum(f10(p, x), axis=-1) / np.sqrt(N_OUT)
        for P in probes:
            base = dict(case="pNTK vs full NTK, 10 logits", width=N, n_probe=P, n_params=n)
            Xp = X[:P]
            got, rows = {}, {}
            for iname, impl in impls.items():
                for kind, f, analytic in (
                        ("full NTK", f10, it * (N_OUT * P * n + (N_OUT * P) ** 2)),
                        ("pNTK", fsum, it * (P * n + P * P))):
                    if iname == "vector_products":
                        analytic = it * (N_OUT * P) ** 2 if kind == "full NTK" else it * P * P
                    call, comp, xla = compiled(_nt_fn(nt, f, impl), Xp, None, params)
                    row = dict(base, kernel=kind, method="nt_" + iname,
                               shape=[N_OUT * P] * 2 if kind == "full NTK" else [P, P],
                               compile_s=round(comp, 2), analytic_mib=mib(analytic),
                               xla_mib=mib(xla))
                    if iname == "vector_products" and P > vp_max_probe:
                        row["note"] = "not run (XLA's plan only)"
                    else:
                        _, t, peak, how, k = measure(call, repeats)
                        got[(kind, iname)] = sc.ntk_scale * np.asarray(k, np.float64)
                        row.update(s=round(t, 4), peak_mib=mib(peak), peak_how=how)
                    record(out, **row)
                    rows[(kind, iname)] = row
                    del call
            jc = "jacobian_contraction"
            full, p = got[("full NTK", jc)], got[("pNTK", jc)]          # (P, P, 10, 10), (P, P)
            full2 = full.transpose(0, 2, 1, 3).reshape(N_OUT * P, N_OUT * P)
            rf, rp = rows[("full NTK", jc)], rows[("pNTK", jc)]
            chk = dict(base, kernel="checks",
                       pntk_vs_sum_of_full_blocks_max_rel_diff=_rel(full.sum((2, 3)) / N_OUT, p),
                       full_vs_pntk_kron_I_rel_frobenius=float(
                           np.linalg.norm(full2 - np.kron(p, np.eye(N_OUT)))
                           / np.linalg.norm(full2)),
                       time_ratio_full_over_pntk=round(rf["s"] / rp["s"], 1),
                       memory_ratio_full_over_pntk_analytic=round(
                           rf["analytic_mib"] / rp["analytic_mib"], 1),
                       memory_ratio_full_over_pntk_xla=round(rf["xla_mib"] / rp["xla_mib"], 1))
            if ("full NTK", "vector_products") in got:
                chk["full_vp_vs_jc_max_rel_diff"] = _rel(got[("full NTK", "vector_products")], full)
                chk["pntk_vp_vs_jc_max_rel_diff"] = _rel(got[("pNTK", "vector_products")], p)
            record(out, **chk)


# ----------------------------------------------------------------------------- table
def table(rows):
    lines = []
    tr = [r for r in rows if r["case"].startswith("train_cnn")]
    if tr:
        lines += ["Training throughput (examples x steps / s, all S networks), ensemble vs loop",
                  f"{'mode':<16}{'width':>6}{'ensemble':>11}{'loop':>11}{'ratio':>7}"
                  f"{'ens s':>8}{'loop s':>8}{'compile e/l s':>15}"]
        for r in tr:
            lines.append(f"{r['mode']:<16}{r['width']:>6}{r['ensemble_ex_steps_per_s']:>11.0f}"
                         f"{r['loop_ex_steps_per_s']:>11.0f}{r['ratio']:>7.2f}"
                         f"{r['ensemble_s']:>8.2f}{r['loop_s']:>8.2f}"
                         f"{r['ensemble_first_call_s'] - r['ensemble_s']:>8.1f}/"
                         f"{r['loop_first_call_s'] - r['loop_s'] / r['seeds']:.1f}")
    pr = [r for r in rows if r["case"] == "probe NTK"]
    if pr:
        lines += ["", "Probe NTK (ms; MiB: analytic J+K / XLA plan / measured peak)",
                  f"{'width':>5}{'P':>5}  {'method':<44}{'ms':>9}{'x ours':>8}"
                  f"{'analytic':>10}{'XLA':>9}{'peak':>9}{'rel diff':>10}"]
        for r in pr:
            lines.append(f"{r['width']:>5}{r['n_probe']:>5}  {r['method']:<44}"
                         f"{1e3 * r['s']:>9.1f}{r['ratio_to_ours']:>8.2f}"
                         f"{_f(r['analytic_mib']):>10}{_f(r['xla_mib']):>9}{_f(r['peak_mib']):>9}"
                         f"{r.get('max_rel_diff_vs_ours', 0):>10.1e}")
    pn = [r for r in rows if r["case"].startswith("pNTK")]
    if pn:
        lines += ["", "pNTK vs full NTK, 10 logits (ms; MiB: analytic J+K / XLA plan / peak)",
                  f"{'width':>5}{'P':>5}  {'kernel':<10}{'method':<28}{'ms':>9}"
                  f"{'analytic':>10}{'XLA':>9}{'peak':>9}"]
        for r in pn:
            if r["kernel"] == "checks":
                lines.append(f"{'':>12}checks: pNTK = sum_ab Theta_ab / 10 to "
                             f"{r['pntk_vs_sum_of_full_blocks_max_rel_diff']:.1e}; "
                             f"|Theta - pNTK x I| / |Theta| = "
                             f"{r['full_vs_pntk_kron_I_rel_frobenius']:.3f}; full/pNTK: time "
                             f"x{r['time_ratio_full_over_pntk']}, memory "
                             f"x{r['memory_ratio_full_over_pntk_analytic']} (XLA "
                             f"x{r['memory_ratio_full_over_pntk_xla']})")
                continue
            ms = f"{1e3 * r['s']:.1f}" if "s" in r else "-"
            lines.append(f"{r['width']:>5}{r['n_probe']:>5}  {r['kernel']:<10}{r['method']:<28}"
                         f"{ms:>9}{_f(r['analytic_mib']):>10}{_f(r['xla_mib']):>9}"
                         f"{_f(r.get('peak_mib')):>9}")
    return "\n".join(lines)


def _f(v):
    return "-" if v is None else f"{v:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (< 2 minutes)")
    ap.add_argument("--widths", type=int, nargs="+",
                    help="default 32 64 128 (quick: 32 64, training at 32 only)")
    ap.add_argument("--n-train", type=int, help="training images (default 64; quick 32)")
    ap.add_argument("--steps", type=int, help="training steps (default 10; quick 4)")
    ap.add_argument("--seeds", type=int, default=8, help="ensemble size S (default 8)")
    ap.add_argument("--batch-size", type=int, default=16, help="SGD minibatch (default 16)")
    ap.add_argument("--probes", type=int, nargs="+",
                    help="probe-set sizes for the NTKs (default 16 64; quick 16)")
    ap.add_argument("--repeats", type=int,
                    help="timed repeats (default: training 1, kernels 3 (1 when over a second))")
    ap.add_argument("--skip", nargs="*", default=[], choices=["train", "ntk", "pntk"])
    a = ap.parse_args()
    q = a.quick
    widths = a.widths or ([32, 64] if q else [32, 64, 128])
    train_widths = widths[:1] if q and not a.widths else widths
    n_train = a.n_train or (32 if q else 64)
    steps = a.steps or (4 if q else 10)
    probes = a.probes or ([16] if q else [16, 64])
    rep_train = a.repeats or 1
    rep_ntk = a.repeats or 3
    data = wn.data.images("digits", classes=(0, 1), n_train=max(n_train, max(probes)),
                          n_test=1, key=0)
    X, y = data.X, data.y
    out = []
    t_start = time.perf_counter()
    record(out, case="setup", jax=jax.__version__, backend=jax.default_backend(),
           device=str(jax.devices()[0]), cpus=os.cpu_count(), machine=platform.machine(),
           dtype=str(X.dtype), threefry_partitionable=bool(jax.config.jax_threefry_partitionable),
           quick=q)
    if "train" not in a.skip:
        bench_training(out, X[:n_train], y[:n_train], train_widths, a.seeds, steps,
                       [None, a.batch_size], rep_train)
    if "ntk" not in a.skip or "pntk" not in a.skip:
        nt = wn.kernels._nt()                 # neural-tangents, TensorFlow's start-up silenced
        record(out, case="setup", neural_tangents=nt.__version__)
        if "ntk" not in a.skip:
            bench_probe_ntk(out, nt, X, widths, probes, rep_ntk)
        if "pntk" not in a.skip:
            bench_pntk(out, nt, X, [64] if 64 in widths else widths[:1], probes, rep_ntk,
                       vp_max_probe=min(probes))
    record(out, case="total", s=round(time.perf_counter() - t_start, 1))
    txt = table(out)
    print("\n" + txt)
    RESULTS.mkdir(exist_ok=True)
    stem = ("cnn_quick" if q else "cnn") + "".join(f"_no_{k}" for k in sorted(set(a.skip)))
    with open(RESULTS / f"{stem}.jsonl", "w") as fh:
        for r in out:
            fh.write(json.dumps(r) + "\n")
    (RESULTS / f"{stem}.txt").write_text(txt + "\n")


if __name__ == "__main__":
    main()
