#!/usr/bin/env python
"""Execute the book's chapters for `make book`: cached, two at a time, with progress lines.

Each chapter is executed by scripts/nbexec.py (no per-cell timeout: on a busy machine a cell
is slower, not failed; the watchdog still catches a lost kernel message) and its executed copy
kept in `_build/chapters/<preset>/`, stamped with a *key*: a hash of the notebook file, of
every file of `src/widenets/`, of `requirements.txt` and `pyproject.toml`, and of the preset.
A chapter whose copy carries the current key is reused; editing one chapter re-executes only
it, and a change to the package, the pinned stack or the preset re-executes them all.

Chapters run `--jobs` at a time (default 2), longest first (by their last recorded time),
each kernel pinned to a core of its own when there are enough cores: XLA's thread pools then
do not fight over the cores (a process of many small operations waits at every operation while
another runs large products). Every chapter prints a line when it starts and ends, every cell
slower than `--slow` seconds a line when it ends, and a long cell a line every minute:

    [cpu  2:13] chapter 3/7 03_deep_linear_dmft: cell 14 'sol = wn.dmft.deep_linear(...' 21.4 s

A failed chapter is reported by name, cell and error, and the run goes on with the others (their
copies are cached), then fails. `make test` writes its executed copies with the same key
(tests/test_chapters.py), so `WIDENETS_PRESET=ci make book` after `make test` reuses them.

    python scripts/chapters.py --preset ci            # execute what is stale, print a summary
    python scripts/chapters.py --preset cpu --force   # execute every chapter
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime as dt
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "_build" / "chapters"
# what every chapter's results depend on, besides the notebook itself and the preset
DEPENDENCIES = ("src/widenets", "requirements.txt", "pyproject.toml")
# JAX's persistent compilation cache stays off in the chapters' kernels (see the Makefile): with
# JAX 0.5.3 on the CPU, a program read back from it returned wrong numbers
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
STALL_IDLE = float(os.environ.get("WIDENETS_STALL_IDLE", "90"))
HEARTBEAT = 60.0


def toc_notebooks() -> list[pathlib.Path]:
    """The notebooks of `_toc.yml`, in the book's order."""
    import yaml

    def files(node):
        if isinstance(node, dict):
            if "file" in node:
                yield node["file"]
            for v in node.values():
                yield from files(v)
        elif isinstance(node, list):
            for v in node:
                yield from files(v)

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [ROOT / (f + ".ipynb") for f in files(toc) if (ROOT / (f + ".ipynb")).exists()]


def _dependency_files() -> list[pathlib.Path]:
    out = []
    for dep in DEPENDENCIES:
        p = ROOT / dep
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts
                          and not f.name.endswith((".pyc", ".pyo")))
        elif p.exists():
            out.append(p)
    return out


def dependencies_hash() -> str:
    """A hash of everything every chapter depends on besides itself and the preset."""
    h = hashlib.sha256()
    for f in _dependency_files():
        h.update(f.relative_to(ROOT).as_posix().encode() + b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def chapter_key(notebook: pathlib.Path, preset: str, deps: str | None = None) -> str:
    """The key an executed copy of `notebook` at `preset` is valid for (see the docstring)."""
    h = hashlib.sha256()
    h.update(notebook.read_bytes())
    h.update(b"\0" + preset.encode() + b"\0")
    h.update((deps or dependencies_hash()).encode())
    return h.hexdigest()


def stamp(nb, *, key: str, preset: str, seconds: float, cell_seconds: dict) -> None:
    """Record in an executed notebook what it was executed from, when, and how long it took."""
    nb.metadata["widenets"] = {
        "key": key, "preset": preset, "execution_seconds": round(seconds, 2),
        "executed_at": dt.datetime.now().isoformat(timespec="seconds"),
        "cell_seconds": {str(i): round(s, 2) for i, s in sorted(cell_seconds.items())}}


def record(path: pathlib.Path) -> dict:
    """The `widenets` metadata of an executed copy ({} if there is none)."""
    try:
        return json.loads(path.read_text()).get("metadata", {}).get("widenets", {})
    except (OSError, ValueError):
        return {}


def clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}" if m < 60 else f"{m // 60}:{m % 60:02d}:{s:02d}"


@dataclasses.dataclass
class Chapter:
    path: pathlib.Path
    number: int                 # 1-based position in the book
    key: str
    out: pathlib.Path
    reused: bool
    expected: float | None      # last recorded execution seconds, for the order of the runs


def plan(preset: str, out_dir: pathlib.Path, force: bool = False) -> list[Chapter]:
    deps = dependencies_hash()
    chapters = []
    for i, nb in enumerate(toc_notebooks(), 1):
        key = chapter_key(nb, preset, deps)
        out = out_dir / nb.name
        rec = record(out) if out.exists() else {}
        chapters.append(Chapter(nb, i, key, out, reused=not force and rec.get("key") == key,
                                expected=rec.get("execution_seconds")))
    return chapters


# ------------------------------------------------------------------------------ the child
def run_one(notebook: pathlib.Path, out: pathlib.Path, *, key: str, preset: str, label: str,
            started: float, slow: float) -> int:
    """Execute one chapter (in this process; its kernel inherits this process's CPU set)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from nbexec import execute

    prefix = lambda: f"[{preset} {clock(time.time() - started)}] {label}"
    say = lambda msg: print(f"{prefix()}: {msg}", flush=True)
    t0 = time.time()

    def done(index, seconds, first):
        if seconds >= slow:
            say(f"cell {index} {first[:60]!r} {seconds:.1f} s "
                f"(chapter at {clock(time.time() - t0)})")

    res = execute(notebook, timeout=None, idle=STALL_IDLE, heartbeat=HEARTBEAT, name=label,
                  log=lambda line: print(f"{prefix()}: {line.strip()}", flush=True),
                  on_cell_done=done)
    if res.status not in ("ok", "stall-recovered"):
        print(f"{prefix()}: FAILED after {clock(res.seconds)}\n{res.message}", file=sys.stderr,
              flush=True)
        return 1
    if res.status == "stall-recovered":
        say(f"WARNING: {res.message}")
    stamp(res.nb, key=key, preset=preset, seconds=res.seconds, cell_seconds=res.cell_seconds)
    import nbformat

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    nbformat.write(res.nb, tmp)
    tmp.replace(out)            # never a half-written copy with a valid key
    say(f"done in {clock(res.seconds)}")
    return 0


# ----------------------------------------------------------------------------- the parent
def execute_chapters(preset: str, *, out_dir: pathlib.Path | None = None, jobs: int = 2,
                     force: bool = False, slow: float = 10.0) -> tuple[list[Chapter], list[str]]:
    """Execute the stale chapters at `preset`; return the plan and the failures' names."""
    out_dir = out_dir or CHAPTERS / preset
    chapters = plan(preset, out_dir, force)
    n = len(chapters)
    todo = [c for c in chapters if not c.reused]
    started = time.time()
    for c in chapters:
        if c.reused:
            print(f"[{preset} {clock(0)}] chapter {c.number}/{n} {c.path.stem}: reused "
                  f"(unchanged since it was executed; {c.out.relative_to(ROOT)})", flush=True)
    if not todo:
        return chapters, []
    print(f"[{preset} {clock(0)}] executing {len(todo)} of {n} chapters at the {preset!r} preset,"
          f" {min(jobs, len(todo))} at a time", flush=True)
    # longest first (by their last recorded time; unknown ones first of all), so that two
    # workers finish together
    todo.sort(key=lambda c: -(c.expected if c.expected is not None else 1e9))
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = []
    slots = list(range(max(1, jobs)))
    lock = threading.Lock()
    failures: list[str] = []

    def run(c: Chapter) -> None:
        with lock:
            slot = slots.pop(0)
        label = f"chapter {c.number}/{n} {c.path.stem}"
        cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", str(c.path),
               "--out", str(c.out), "--key", c.key, "--preset", preset, "--label", label,
               "--started", repr(started), "--slow", str(slow)]
        pin = cpus[slot % len(cpus)] if jobs > 1 and len(cpus) >= jobs else None
        if pin is not None:
            cmd += ["--cpu", str(pin)]
        env = dict(os.environ, WIDENETS_PRESET=preset)
        print(f"[{preset} {clock(time.time() - started)}] {label}: started"
              + (f" (core {pin})" if pin is not None else ""), flush=True)
        rc = subprocess.run(cmd, env=env, cwd=ROOT).returncode
        with lock:
            slots.append(slot)
            if rc != 0:
                failures.append(label)

    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(run, todo))
    return chapters, failures


def summary(chapters: list[Chapter], preset: str) -> dict:
    """What the build's status page shows: for each chapter, executed now or reused, and when."""
    rows = []
    for c in chapters:
        rec = record(c.out)
        rows.append({"chapter": c.path.relative_to(ROOT).with_suffix("").as_posix(),
                     "number": c.number, "reused": c.reused, "preset": rec.get("preset", preset),
                     "executed_at": rec.get("executed_at"),
                     "seconds": rec.get("execution_seconds"), "ok": rec.get("key") == c.key,
                     "slowest": max(((int(i), s) for i, s in rec.get("cell_seconds", {}).items()),
                                    key=lambda kv: kv[1], default=None)})
    return {"preset": preset, "built_at": dt.datetime.now().isoformat(timespec="seconds"),
            "chapters": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=os.environ.get("WIDENETS_PRESET") or "cpu",
                    choices=["ci", "cpu", "gpu"])
    ap.add_argument("--jobs", type=int, default=2, help="chapters executed at a time (2)")
    ap.add_argument("--force", action="store_true", help="execute every chapter")
    ap.add_argument("--slow", type=float, default=10.0,
                    help="print a line for every cell slower than this (seconds; 10)")
    ap.add_argument("--child", type=pathlib.Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=pathlib.Path, help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    ap.add_argument("--label", help=argparse.SUPPRESS)
    ap.add_argument("--started", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        if args.cpu is not None:        # the kernel inherits it
            os.sched_setaffinity(0, {args.cpu})
        return run_one(args.child, args.out, key=args.key, preset=args.preset, label=args.label,
                       started=args.started, slow=args.slow)
    t0 = time.time()
    chapters, failures = execute_chapters(args.preset, jobs=args.jobs, force=args.force,
                                          slow=args.slow)
    print(f"[{args.preset} {clock(time.time() - t0)}] "
          + (f"FAILED: {', '.join(failures)}" if failures else "every chapter is executed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
