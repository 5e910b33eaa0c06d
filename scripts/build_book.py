#!/usr/bin/env python
"""Build the book like `jupyter-book build . -W -n --keep-going`, with its chapters executed
by scripts/chapters.py instead of by myst-nb.

`make book` runs it with no argument: the chapters that are not already executed for the
current preset (default `cpu`, `WIDENETS_PRESET` to change it) are executed, two at a time,
with progress lines, no per-cell timeout and the stall watchdog (scripts/chapters.py,
scripts/nbexec.py), and cached in `_build/chapters/<preset>/`; a chapter that fails is named
with its cell and error, and the build stops before rendering. Then the executed copies are
rendered: they are put into a fresh jupyter-cache (`<path-output>/.jupyter_cache_executed`)
and Sphinx runs in myst-nb's `cache` mode with execution forbidden, so a chapter missing from
the folder, or edited since it was executed, fails the build instead of being executed by
myst-nb. Sphinx's own incremental build re-reads only the chapters whose executed copy changed
(their source file is touched) and the status page, whose table says which chapters this build
executed and which it reused. `make test` executes every chapter itself
(tests/test_chapters.py) and renders those copies with `--executed DIR`.

    python scripts/build_book.py                              # what make book runs
    python scripts/build_book.py --executed _build/chapters/ci   # what make test runs
    python scripts/build_book.py --execute off                # render without executing
"""
from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from chapters import (CHAPTERS, clock, execute_chapters, record, summary,  # noqa: E402
                      toc_notebooks)


# stderr outputs of the executed chapters: myst-nb removes them from the page with a warning
# (output_stderr: remove-warn), which fails the strict build; named again at the end of a failure
STDERR: list[str] = []


def fill_cache(executed: pathlib.Path, cache_path: pathlib.Path) -> int:
    """Put the executed copy of every notebook of the TOC into a fresh jupyter-cache.

    Each copy's outputs are merged into the committed notebook (so the cache key, a hash of
    the code cells and their metadata, is the committed notebook's); a copy whose code differs
    from the committed notebook is refused."""
    import shutil

    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    if cache_path.exists():
        shutil.rmtree(cache_path)
    cache = get_cache(str(cache_path))
    problems, n = [], 0
    for src in toc_notebooks():
        done = executed / src.name
        if not done.exists():
            problems.append(f"{src.relative_to(ROOT)} was not executed by the tests "
                            f"(no {done}; did its test in tests/test_chapters.py fail?)")
            continue
        nb = nbformat.read(src, as_version=4)
        ran = nbformat.read(done, as_version=4)
        if [c.source for c in nb.cells] != [c.source for c in ran.cells]:
            problems.append(f"{src.relative_to(ROOT)} changed after it was executed: rerun make test")
            continue
        for i, (cell, run) in enumerate(zip(nb.cells, ran.cells)):
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = run.outputs, run.execution_count
                STDERR.extend(f"{src.stem} cell {i}: {o.get('text', '').strip()[:160]!r}"
                              for o in run.outputs if o.get("name") == "stderr")
        for key in ("language_info", "widgets"):
            if key in ran.metadata:
                nb.metadata[key] = ran.metadata[key]
        seconds = ran.metadata.get("widenets", {}).get("execution_seconds")
        cache.cache_notebook_bundle(CacheBundleIn(nb, str(src), data={"execution_seconds": seconds}),
                                    check_validity=False, overwrite=True)
        n += 1
    if problems:
        raise ValueError("\n  ".join(["not every chapter can be rendered:"] + problems))
    return n


def touch_changed(executed: pathlib.Path, out: pathlib.Path) -> list[str]:
    """Touch the source of every chapter whose executed copy differs from the one the last
    build of `out` rendered, so that Sphinx's incremental build re-reads it (it compares the
    sources' times with its own); return their names."""
    import hashlib
    import json
    import os

    seen_file = out / ".rendered.json"
    try:
        seen = json.loads(seen_file.read_text())
    except (OSError, ValueError):
        seen = {}
    now, changed = {}, []
    for src in toc_notebooks():
        done = executed / src.name
        now[src.name] = hashlib.sha256(done.read_bytes()).hexdigest() if done.exists() else None
        if seen.get(src.name) != now[src.name]:
            os.utime(src)
            changed.append(src.stem)
    out.mkdir(parents=True, exist_ok=True)
    seen_file.write_text(json.dumps(now, indent=1))
    return changed


def forbid_execution() -> None:
    """Make myst-nb's cache mode fail instead of executing a notebook missing from the cache."""
    import myst_nb.core.execute.cache as mystnb_cache

    def refuse(nb, cwd=None, **kwargs):
        raise RuntimeError("a notebook is not in the cache of executed notebooks: the book "
                           "build of make test never executes (see scripts/build_book.py)")

    mystnb_cache.single_nb_execution = refuse


def main(argv=None) -> int:
    import json
    import os
    import time

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--execute", choices=["force", "cache", "auto", "off"],
                    help="let myst-nb execute the notebooks in this mode (with "
                    "_config.yml's per-cell timeout) instead of scripts/chapters.py")
    ap.add_argument("--jobs", type=int, default=1, help="Sphinx processes (default 1)")
    ap.add_argument("--exec-jobs", type=int, default=int(os.environ.get("JOBS", "2")),
                    help="chapters executed at a time (default 2, or $JOBS)")
    ap.add_argument("--force", action="store_true",
                    help="execute every chapter, even those already executed")
    ap.add_argument("--path-output", type=pathlib.Path, default=ROOT / "_build",
                    help="build folder (default _build); HTML goes to its html/")
    ap.add_argument("--no-strict", action="store_true", help="no -W -n --keep-going")
    ap.add_argument("--executed", type=pathlib.Path, metavar="DIR",
                    help="render the executed notebooks in DIR (named like notebooks/*.ipynb); "
                    "never execute")
    args = ap.parse_args(argv)
    t0 = time.time()
    preset = os.environ.get("WIDENETS_PRESET") or "cpu"
    out_root = args.path_output.resolve()
    runs_file = out_root / "chapter_runs.json"
    runs_file.unlink(missing_ok=True)

    if args.executed is None and args.execute is None:            # make book
        os.environ["WIDENETS_PRESET"] = preset
        chapters, failures = execute_chapters(preset, jobs=args.exec_jobs, force=args.force)
        if failures:
            print(f"The book build failed: {len(failures)} chapter(s) did not execute: "
                  f"{', '.join(failures)} (the error of each is printed above, with its cell)."
                  " The chapters that did execute are kept and will be reused.",
                  file=sys.stderr)
            return 1
        executed = CHAPTERS / preset
        runs = summary(chapters, preset)
        runs["by"] = "book"
    elif args.executed is not None:                               # make test
        executed = args.executed.resolve()
        runs = {"preset": preset, "by": "test",
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "chapters": []}
        for i, src in enumerate(toc_notebooks(), 1):
            rec = record(executed / src.name)
            runs["chapters"].append({
                "chapter": src.relative_to(ROOT).with_suffix("").as_posix(), "number": i,
                "reused": False, "preset": rec.get("preset", preset),
                "executed_at": rec.get("executed_at"), "seconds": rec.get("execution_seconds"),
                "slowest": max(((int(k), v) for k, v in rec.get("cell_seconds", {}).items()),
                               key=lambda kv: kv[1], default=None)})
    else:
        executed, runs = None, None

    from jupyter_book.sphinx import build_sphinx

    from nbexec import quiet_output_widgets

    quiet_output_widgets()      # no lost execute_reply in the live-panel cells (scripts/nbexec.py)

    overrides: dict = {"external_toc_path": (ROOT / "_toc.yml").as_posix(),
                       "latex_individualpages": False}
    if not args.no_strict:
        overrides["nitpicky"] = True
    if args.execute is not None:
        overrides["nb_execution_mode"] = args.execute
    out = out_root / "html"
    if executed is not None:
        cache = out_root / ".jupyter_cache_executed"
        try:
            n = fill_cache(executed, cache)
        except ValueError as exc:
            print(f"The book build failed: {exc}", file=sys.stderr)
            return 1
        changed = touch_changed(executed, out)
        print(f"Rendering {n} executed chapters from {executed} (to re-read: "
              f"{', '.join(changed) if changed else 'none'})", flush=True)
        overrides.update(nb_execution_mode="cache", nb_execution_cache_path=str(cache))
        forbid_execution()
        runs_file.parent.mkdir(parents=True, exist_ok=True)
        runs_file.write_text(json.dumps(runs, indent=1))
    print(f"Building {ROOT} -> {out} (overrides: "
          f"{ {k: v for k, v in overrides.items() if k.startswith('nb_')} })", flush=True)
    result = build_sphinx(
        ROOT, out, use_external_toc=True, noconfig=True, path_config=ROOT / "_config.yml",
        confoverrides=overrides, builder="html", warningiserror=not args.no_strict,
        keep_going=not args.no_strict, jobs=args.jobs)
    if isinstance(result, BaseException):
        print(f"The book build failed: {type(result).__name__}: {result}", file=sys.stderr)
        return 1
    if result:
        print(f"The book build failed (status {result}); see the messages above.",
              file=sys.stderr)
        if STDERR:
            print("Cells that wrote to stderr (each is a warning of the strict build):\n  "
                  + "\n  ".join(STDERR), file=sys.stderr)
        return int(result)
    print(f"Book built in {clock(time.time() - t0)}: open {out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
