#!/usr/bin/env python
"""Where each chapter spends its time: per chapter and per cell, XLA compilation against the rest.

Executes the chapters one after another (each alone on the machine, as a reader's `make book`
would if it ran one chapter at a time) at a preset, through scripts/nbexec.py, with a listener
on JAX's compilation events (`jax.monitoring`: tracing to a jaxpr, lowering to MLIR, XLA's
backend compilation) installed in the kernel before the first cell. Each event is stamped with
the wall clock, so a cell's compile time is the sum of the events that ended while it ran.

    .venv/bin/python benchmarks/profile_chapters.py --preset ci
    .venv/bin/python benchmarks/profile_chapters.py --preset cpu --chapters 01 04
    .venv/bin/python benchmarks/profile_chapters.py --preset ci --cores 1   # pinned to one core

Prints, per chapter, its total time, compile time, number of compilations and its slowest
cells, then a summary table (markdown) against the budgets (60 s at `ci`, 150 s at `cpu`);
writes every cell as a JSON line to `benchmarks/results/chapters_<preset>.jsonl` and the
table to `benchmarks/results/chapters_<preset>.md`.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from chapters import toc_notebooks  # noqa: E402
from nbexec import execute  # noqa: E402

BUDGET = {"ci": 60.0, "cpu": 150.0, "gpu": None}

PRELUDE = """\
import os as _os, time as _time
import jax.monitoring as _mon
_widenets_compile_log = open({log!r}, "a", buffering=1)
def _widenets_on_event(event, duration, **_kw):
    if event.startswith("/jax/core/compile/"):
        _widenets_compile_log.write(f"{{_time.time()}} {{event.rsplit('/', 1)[-1]}} {{duration}}\\n")
_mon.register_event_duration_secs_listener(_widenets_on_event)
"""


def compile_events(log: pathlib.Path) -> list[tuple[float, str, float]]:
    out = []
    if log.exists():
        for line in log.read_text().splitlines():
            t, ev, d = line.split()
            out.append((float(t), ev, float(d)))
    return out


def profile(nb: pathlib.Path, preset: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        log = pathlib.Path(tmp) / "compiles.txt"
        t0 = time.time()
        res = execute(nb, timeout=None, idle=120, prelude=PRELUDE.format(log=str(log)),
                      log=lambda m: print("   ", m, flush=True))
        events = compile_events(log)
    if res.status != "ok":
        raise SystemExit(f"{nb.name} failed: {res.message}")
    cells = []
    for i, secs in sorted(res.cell_seconds.items()):
        start = res.cell_started[i]
        mine = [(ev, d) for t, ev, d in events if start <= t <= start + secs + 1e-3]
        cells.append({
            "chapter": nb.stem, "cell": i, "seconds": round(secs, 2),
            "cpu_seconds": round(res.cell_cpu.get(i, float("nan")), 2),
            "compile_seconds": round(sum(d for _, d in mine), 2),
            "backend_compile_seconds": round(sum(d for ev, d in mine
                                                 if ev == "backend_compile_duration"), 2),
            "compilations": sum(1 for ev, _ in mine if ev == "backend_compile_duration"),
            "first_line": next((ln for ln in res.nb.cells[i].source.splitlines() if ln.strip()),
                               "")[:70]})
    total = res.seconds
    return {"chapter": nb.stem, "preset": preset, "seconds": round(total, 1),
            "wall_with_startup": round(time.time() - t0, 1),
            "cpu_seconds": round(sum(c["cpu_seconds"] for c in cells), 1),
            "compile_seconds": round(sum(c["compile_seconds"] for c in cells), 1),
            "compilations": sum(c["compilations"] for c in cells), "cells": cells}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="ci", choices=["ci", "cpu", "gpu"])
    ap.add_argument("--chapters", nargs="*", help="file-name prefixes (e.g. 01 05b); default all")
    ap.add_argument("--cores", type=int, help="pin the kernels to this many cores")
    ap.add_argument("--top", type=int, default=6, help="slowest cells printed per chapter")
    args = ap.parse_args(argv)
    os.environ["WIDENETS_PRESET"] = args.preset
    # cold: every program compiled (JAX's on-disk cache is never used: see the Makefile)
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    os.environ.setdefault("JAX_PLATFORMS", "cpu") if args.preset != "gpu" else None
    if args.cores:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.cores]))
    nbs = [nb for nb in toc_notebooks()
           if not args.chapters or any(nb.stem.startswith(c) for c in args.chapters)]
    results_dir = ROOT / "benchmarks" / "results"
    results_dir.mkdir(exist_ok=True)
    rows = []
    with open(results_dir / f"chapters_{args.preset}.jsonl", "a") as f:
        for nb in nbs:
            print(f"{nb.stem} at {args.preset} ...", flush=True)
            r = profile(nb, args.preset)
            rows.append(r)
            for c in r["cells"]:
                f.write(json.dumps(dict(c, preset=args.preset, cores=args.cores,
                                        at=time.strftime("%Y-%m-%dT%H:%M:%S"))) + "\n")
            print(f"  {r['seconds']:.1f} s ({r['wall_with_startup']:.1f} s with the kernel's "
                  f"start; kernel CPU {r['cpu_seconds']:.1f} s), compilation "
                  f"{r['compile_seconds']:.1f} s in "
                  f"{r['compilations']} programs", flush=True)
            for c in sorted(r["cells"], key=lambda c: -c["seconds"])[:args.top]:
                print(f"    cell {c['cell']:3d} {c['seconds']:7.1f} s (CPU {c['cpu_seconds']:6.1f} s)"
                      f"  compile "
                      f"{c['compile_seconds']:6.1f} s ({c['compilations']:3d})  "
                      f"{c['first_line']}", flush=True)
    budget = BUDGET[args.preset]
    lines = [f"| chapter | {args.preset} (s) | kernel CPU (s) | compile (s) | programs | "
             f"slowest cell (s) | within {budget:.0f} s |" if budget else "",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        slow = max(r["cells"], key=lambda c: c["seconds"])
        ok = "yes" if budget and r["seconds"] <= budget else "no"
        lines.append(f"| {r['chapter']} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} | "
                     f"{r['compile_seconds']:.0f} | "
                     f"{r['compilations']} | cell {slow['cell']}: {slow['seconds']:.0f} "
                     f"(compile {slow['compile_seconds']:.0f}) | {ok} |")
    total = sum(r["seconds"] for r in rows)
    lines.append(f"| total | {total:.0f} | {sum(r['cpu_seconds'] for r in rows):.0f} | "
                 f"{sum(r['compile_seconds'] for r in rows):.0f} | "
                 f"{sum(r['compilations'] for r in rows)} | | |")
    table = "\n".join(lines)
    print(table)
    (results_dir / f"chapters_{args.preset}.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
