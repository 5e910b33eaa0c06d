"""Progress of long compiled loops: a ``lax.scan`` over many steps reports, from inside the
compiled program, how far it has come, and the host prints it (with the time left) once the run
has taken more than a few seconds; short runs print nothing.

Inside the loop body call ``tick(t, total)`` (``t`` the traced step counter, ``total`` a Python
int); around the call of the compiled program use ``with reporting("train_mlp"):``. A compiled
program is reused across calls, so the callback it holds looks up the label of the run in
progress here rather than capturing it. Loops of fewer than :data:`MIN_STEPS` steps compile
without the hook (nothing changes for them); longer ones evaluate a ``lax.cond`` per step and
call back about :data:`TICKS` times in all.

Work done on the host in chunks (ensembles too large for one program, blocks of image pairs)
goes through :func:`track`, which prints the same kind of line.

``WIDENETS_PROGRESS=0`` in the environment turns the lines off (read at each line): the book's
own executions of the chapters (scripts/nbexec.py) set it, since a progress line is stderr in an
executed notebook, which the strict book build turns into a warning -- and whether a line is
printed depends on how fast the machine is (a CI machine slower than this one failed so).
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

import jax

MIN_STEPS = 1000      # loops shorter than this never report (they take seconds at most)
TICKS = 50            # callbacks per loop
AFTER_S = 5.0         # the first line is printed once a run has taken this long
EVERY_S = 10.0        # and then at most this often

_runs: list = []      # stack of the runs in progress (dicts)


def enabled() -> bool:
    """Whether progress lines are printed (not when ``WIDENETS_PROGRESS`` is 0, off or false)."""
    return os.environ.get("WIDENETS_PROGRESS", "1").strip().lower() not in ("0", "off", "false")


def tick(t, total: int) -> None:
    """Report step ``t`` of ``total`` (traced ``t``; a no-op when ``total < MIN_STEPS``)."""
    if total < MIN_STEPS:
        return
    every = max(1, total // TICKS)
    jax.lax.cond(t % every == 0, lambda: jax.debug.callback(_report, t, total),
                 lambda: None)


def _report(t, total) -> None:
    if not _runs:
        return
    run = _runs[-1]
    now, t, total = time.perf_counter(), int(t), int(total)
    if run["t0"] is None or t <= run["t0"]:     # the first tick (after compilation), or a
        run["t0"], run["at"] = t, now           # loop starting again: the rate is measured
        return                                  # from here
    elapsed = now - run["start"]
    if elapsed < AFTER_S or now - run["last"] < EVERY_S or not enabled():
        return
    run["last"] = now
    left = (now - run["at"]) * (total - t) / (t - run["t0"])
    print(f"{run['label']}: step {t:,} of {total:,} ({100 * t / total:.0f}%), "
          f"{_duration(elapsed)} so far, about {_duration(left)} left", file=sys.stderr,
          flush=True)
    run["printed"] = True


@contextmanager
def reporting(label: str):
    """Attribute the ticks of the compiled calls inside this block to ``label``."""
    _runs.append(dict(label=label, start=time.perf_counter(), last=-float("inf"),
                      printed=False, t0=None, at=None))
    try:
        yield
    finally:
        run = _runs.pop()
        if run["printed"]:
            print(f"{label}: done in {_duration(time.perf_counter() - run['start'])}",
                  file=sys.stderr, flush=True)


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def track(items, total: int, label: str, unit: str = "networks", size=lambda item: 1):
    """Iterate over ``items`` (chunks of work done on the host, one after another), printing
    how many of ``total`` ``unit`` are done and the time left once it has taken more than
    :data:`AFTER_S` seconds."""
    start = last = time.perf_counter()
    done, printed, first = 0, False, None
    for item in items:
        yield item
        done += size(item)
        now = time.perf_counter()
        if first is None:                   # the first chunk includes the compilation
            first = (now, done)
            continue
        if now - start >= AFTER_S and now - last >= EVERY_S and done < total and enabled():
            last = now
            left = (now - first[0]) * (total - done) / max(done - first[1], 1)
            print(f"{label}: {done:,} of {total:,} {unit} ({100 * done / total:.0f}%), "
                  f"{_duration(now - start)} so far, about {_duration(left)} left",
                  file=sys.stderr, flush=True)
            printed = True
    if printed:
        print(f"{label}: done in {_duration(time.perf_counter() - start)}", file=sys.stderr,
              flush=True)
