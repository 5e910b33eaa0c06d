"""How long each chapter's live panel takes to redraw when a slider moves (issue 22, item 3).

For every chapter with a panel, the cells up to and including the panel's are executed in a
fresh kernel (nbclient, at ``--preset``); then, in the same kernel, each slider of the panel is
set to other values one at a time, and the time from the change to the end of the redraw is
measured there (ipywidgets runs the callback synchronously when a value is set in the kernel,
so this is the kernel's share of a redraw in the browser: the browser adds the transfer of one
PNG). The first draw, made when the panel is built, includes compilation; it is reported
apart. Prints a table per panel (median and slowest redraw, and every slider's times).

    .venv/bin/python benchmarks/panel_redraws.py --preset cpu            # every panel, ~10 min
    .venv/bin/python benchmarks/panel_redraws.py --preset ci --chapters 03 06

Target (issue 22): median <= 2 s and slowest <= 5 s per panel at cpu on an idle 2-core CPU.
scripts/panel_check.py measures the same in a real browser (JupyterLab + headless Chromium), with
the panels' preparation of nearby settings; this one, in the kernel alone, runs without it.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

ROOT = pathlib.Path(__file__).resolve().parents[1]

# in the kernel, after the panel's cell: the panel is the newest wn.widgets.Panel (the cell's value)
PROBE = r'''
import json as _json, time as _time
import ipywidgets as _ipw
from ipywidgets.widgets.widget import _instances as _all_widgets
_cands = [v for v in list(Out.values())[::-1] if type(v).__name__ == "Panel"]
_panel = _cands[0]
_rows = []
for _w in _panel.controls.values():
    _start = _w.value
    if hasattr(_w, "options") and _w.options:
        _opts = [o[1] if isinstance(o, tuple) else o for o in _w.options]
        _vals = [v for v in (_opts[0], _opts[-1], _opts[len(_opts) // 2]) if v != _start]
    else:
        _lo, _hi = _w.min, _w.max
        if hasattr(_w, "base"):                         # a FloatLogSlider: min/max are exponents
            _lo, _hi = _w.base ** _lo, _w.base ** _hi
        _vals = [v for v in (_lo, _hi, (_lo * _hi) ** 0.5 if hasattr(_w, "base")
                             else type(_start)((_lo + _hi) / 2)) if v != _start]
    for _v in list(dict.fromkeys(_vals))[:2] + [_start]:
        _t = _time.perf_counter()
        _w.value = _v
        _rows.append((_w.description, repr(_v), _time.perf_counter() - _t))
print("PANEL_TIMES " + _json.dumps(_rows))
'''


def _panel_cell(nb) -> int:
    for i, c in enumerate(nb.cells):
        if c.cell_type == "code" and "live-panel" in c.metadata.get("tags", []):
            return i
    return -1


def run(path: str, preset: str) -> dict:
    import nbformat
    from nbclient import NotebookClient
    os.environ["WIDENETS_PRESET"] = preset
    os.environ["WIDENETS_PANEL_PREPARE"] = "0"     # the kernel alone: no preparation between cells
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    nb = nbformat.read(path, as_version=4)
    k = _panel_cell(nb)
    if k < 0:
        return {"chapter": pathlib.Path(path).stem, "panel": None}
    nb.cells = nb.cells[:k + 1] + [nbformat.v4.new_code_cell(PROBE)]
    client = NotebookClient(nb, timeout=1800, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}})
    t0 = time.perf_counter()
    first = float("nan")
    try:
        with client.setup_kernel():
            for i, cell in enumerate(nb.cells):
                t = time.perf_counter()
                client.execute_cell(cell, i)
                if i == k:
                    first = time.perf_counter() - t
    except Exception as err:      # report the chapter, go on with the others
        return {"chapter": pathlib.Path(path).stem, "panel": k, "error": repr(err)[-500:]}
    out = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("name") == "stdout")
    if "PANEL_TIMES " not in out:
        return {"chapter": pathlib.Path(path).stem, "panel": k, "error": str(nb.cells[-1].outputs)[-500:]}
    rows = json.loads(out.split("PANEL_TIMES ", 1)[1])
    return {"chapter": pathlib.Path(path).stem, "panel": k, "first": first, "rows": rows,
            "total": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--chapters", nargs="*", help="chapter prefixes (default: all)")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    paths = sorted(str(p) for p in (ROOT / "notebooks").glob("*.ipynb")
                   if not args.chapters or any(p.name.startswith(c) for c in args.chapters))
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run, paths, [args.preset] * len(paths)))
    print(f"\npreset {args.preset}; redraw = setting one slider in the kernel until the figure is "
          f"drawn")
    print(f"{'chapter':26s} {'first draw':>10s} {'median':>7s} {'slowest':>8s}  slider: times (s)")
    for r in results:
        if r["panel"] is None:
            continue
        if "error" in r:
            print(f"{r['chapter']:26s} failed: {r['error']}")
            continue
        times = [t for _, _, t in r["rows"]]
        by = {}
        for name, _, t in r["rows"]:
            by.setdefault(name, []).append(f"{t:.2f}")
        print(f"{r['chapter']:26s} {r['first']:10.1f} {statistics.median(times):7.2f} "
              f"{max(times):8.2f}  " + "; ".join(f"{n}: {', '.join(v)}" for n, v in by.items()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
