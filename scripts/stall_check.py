#!/usr/bin/env python
"""Execute the chapters many times in a row and count stalled cells (issue 10, part 8).

Each execution goes through scripts/nbexec.py, whose watchdog spots a *stall*: a cell during
which the kernel sits idle (its CPU time does not advance for `--idle` seconds) although the
client still waits for the cell's reply -- the signature of a message lost between client
and kernel; a merely slow cell keeps the kernel busy. On a stall a second connection pokes
the kernel (`kernel_info_request`; a fresh connection wakes a shell socket whose wake-up was
lost, ipykernel #1554): if the cell then completes the run is recorded as `stall-recovered`,
otherwise the kernel is killed and the run recorded as `stall`.

Every execution is one row of a CSV (default benchmarks/results/stall_check.csv, appended
to) and every cell one row of a second CSV (`*_cells.csv`), so the per-cell timeout of the
book build can be sized from the slowest real cell. A summary (min / median / max seconds
per chapter, stalls) is printed at the end.

    nice -n 10 .venv/bin/python scripts/stall_check.py --rounds 20
    # the same with another ipykernel for the kernel only (the client side is unchanged):
    pip install --no-deps --target /tmp/ipk7 ipykernel==7.4.0
    nice -n 10 .venv/bin/python scripts/stall_check.py --rounds 3 --kernel-path /tmp/ipk7
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import pathlib
import statistics
import sys

import nbformat

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from nbexec import Watchdog, execute  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def kernel_version(kernel_path: str | None) -> str:
    """The ipykernel version the kernel will import (from --kernel-path if given)."""
    import importlib.metadata as md

    if kernel_path:
        for d in md.distributions(path=[kernel_path]):
            if d.metadata["Name"].lower() == "ipykernel":
                return d.version
    return md.version("ipykernel")


def stress_notebook(n: int) -> pathlib.Path:
    """A notebook of n short cells with the traffic of a chapter: prints from the main and a
    background thread, writes straight to file descriptor 2 (as XLA's C++ logging does),
    a little linear algebra, and every tenth cell a matplotlib figure."""
    import tempfile

    setup = ("import os, threading, time\nimport numpy as np\nimport matplotlib\n"
             "matplotlib.use('module://matplotlib_inline.backend_inline')\n"
             "import matplotlib.pyplot as plt\n"
             "def chatter(i):\n    for j in range(20):\n        print(f'thread {i}.{j}')\n"
             "        time.sleep(0.001)\n")
    cells = [nbformat.v4.new_code_cell(setup)]
    for i in range(n):
        src = (f"t = threading.Thread(target=chatter, args=({i},)); t.start()\n"
               f"os.write(2, b'fd-2 line {i}\\n')\n"
               f"x = np.random.default_rng({i}).normal(size=(200, 200))\n"
               f"for _ in range(5):\n    x = np.tanh(x @ x.T / 200)\n"
               f"print({i}, float(x.trace()))\nt.join()\n")
        if i % 10 == 0:
            src += "plt.figure(figsize=(2, 2)); plt.plot(x[0]); plt.show()\n"
        cells.append(nbformat.v4.new_code_cell(src + "x.sum()"))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    path = pathlib.Path(tempfile.mkdtemp(prefix="stall_stress_")) / f"stress_{n}.ipynb"
    nbformat.write(nb, path)
    return path


def summarise(rows: list[dict], log) -> None:
    by_nb: dict[str, list[dict]] = {}
    for r in rows:
        by_nb.setdefault(f"{r['notebook']} [ipykernel {r['ipykernel']}]", []).append(r)
    log(f"{'notebook [kernel]':52s} {'runs':>4s} {'ok':>3s} {'stalls':>6s} {'min':>7s} {'median':>7s} "
        f"{'max':>7s}  slowest cell (s)")
    for name, rs in sorted(by_nb.items()):
        ok = [float(r["seconds"]) for r in rs if r["status"] == "ok"]
        stalls = sum(r["status"].startswith("stall") or r["status"] == "timeout" for r in rs)
        worst = max(float(r["slowest_cell_seconds"]) for r in rs)
        stats = (min(ok), statistics.median(ok), max(ok)) if ok else (float("nan"),) * 3
        log(f"{name:52s} {len(rs):4d} {len(ok):3d} {stalls:6d} {stats[0]:7.1f} {stats[1]:7.1f} "
            f"{stats[2]:7.1f}  {worst:.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", type=pathlib.Path,
                    default=sorted((ROOT / "notebooks").glob("*.ipynb")))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--preset", default="ci")
    ap.add_argument("--cell-timeout", type=int, default=1800,
                    help="nbclient's per-cell timeout (s); the watchdog normally acts first")
    ap.add_argument("--idle", type=float, default=90.0,
                    help="seconds without kernel CPU progress during a cell that count as a stall")
    ap.add_argument("--kernel-path", help="prepend this folder to the kernel's PYTHONPATH "
                    "(e.g. another ipykernel installed with pip --target)")
    ap.add_argument("--csv", type=pathlib.Path,
                    default=ROOT / "benchmarks" / "results" / "stall_check.csv")
    ap.add_argument("--label", default="", help="free text stored with every row")
    ap.add_argument("--stress", type=int, default=0, metavar="N",
                    help="instead of the chapters, execute a generated notebook of N tiny cells "
                    "(many short round trips: a cheap way to provoke a lost message)")
    ap.add_argument("--summarise", action="store_true",
                    help="only print the summary of the runs already in --csv")
    args = ap.parse_args(argv)
    if args.summarise:
        with open(args.csv, newline="") as fh:
            summarise(list(csv.DictReader(fh)), print)
        return 0
    if args.stress:
        args.notebooks = [stress_notebook(args.stress)]

    os.environ.update(WIDENETS_PRESET=args.preset, JAX_PLATFORMS="cpu",
                      TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0",
                      PYTHONWARNINGS="ignore::DeprecationWarning")
    if args.kernel_path:
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(pathlib.Path(args.kernel_path).resolve())]
            + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    version = kernel_version(args.kernel_path)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    cells_csv = args.csv.with_name(args.csv.stem + "_cells.csv")

    def log(msg: str) -> None:
        print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", flush=True)

    fields = ["time", "label", "ipykernel", "round", "notebook", "status", "seconds",
              "kernel_cpu", "slowest_cell", "slowest_cell_seconds", "note"]
    if args.csv.exists() and args.csv.read_text().split("\n", 1)[0] != ",".join(fields):
        args.csv = args.csv.with_name(f"{args.csv.stem}_{dt.datetime.now():%Y%m%d_%H%M%S}.csv")
        cells_csv = args.csv.with_name(args.csv.stem + "_cells.csv")
        log(f"the CSV has other columns; writing to {args.csv}")
    new = not args.csv.exists()
    new_cells = not cells_csv.exists()
    watchdog = Watchdog(args.idle, log)
    watchdog.start()
    rows = []
    log(f"ipykernel {version} (kernel), preset {args.preset}, {args.rounds} rounds of "
        f"{len(args.notebooks)} notebooks -> {args.csv}")
    with open(args.csv, "a", newline="") as fh, open(cells_csv, "a", newline="") as fc:
        out = csv.DictWriter(fh, fieldnames=fields)
        out_cells = csv.writer(fc)
        if new:
            out.writeheader()
        if new_cells:
            out_cells.writerow(["time", "label", "ipykernel", "round", "notebook", "cell",
                                "seconds"])
        for rnd in range(1, args.rounds + 1):
            for path in args.notebooks:
                res = execute(path, timeout=args.cell_timeout, idle=args.idle,
                              watchdog=watchdog, log=log)
                now = dt.datetime.now().isoformat(timespec="seconds")
                slowest = max(res.cell_seconds, key=res.cell_seconds.get, default=-1)
                note = res.message.splitlines()[0][:300] if res.message else ""
                row = dict(time=now, label=args.label, ipykernel=version, round=rnd,
                           notebook=path.name, status=res.status, seconds=f"{res.seconds:.1f}",
                           kernel_cpu=f"{res.kernel_cpu:.1f}" if res.kernel_cpu else "",
                           slowest_cell=slowest,
                           slowest_cell_seconds=f"{res.cell_seconds.get(slowest, 0.0):.1f}",
                           note=note)
                out.writerow(row)
                fh.flush()
                for i, sec in sorted(res.cell_seconds.items()):
                    out_cells.writerow([now, args.label, version, rnd, path.name, i, f"{sec:.2f}"])
                fc.flush()
                rows.append(row)
                log(f"round {rnd:2d} {path.name:34s} {res.status:15s} {res.seconds:7.1f} s "
                    f"(slowest cell {slowest}: {res.cell_seconds.get(slowest, 0.0):.1f} s) {note}")
    watchdog.stop.set()
    summarise(rows, log)
    return 1 if any(r["status"] != "ok" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
