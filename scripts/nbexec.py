"""Execute one notebook with nbclient, with a watchdog that fails a stalled cell fast.

Used by tests/test_chapters.py (each chapter executed once per `make test`; the book build
then renders those executed copies) and by scripts/stall_check.py (many executions in a row).

A *stall* is a cell during which the kernel sits idle -- its CPU time, with its children's,
does not advance for `idle` seconds -- although the client is still waiting for the cell's
reply: the signature of a message lost between client and kernel (issue 10, part 8; seen
with ipykernel 7.4.0, see requirements.txt). A cell that is merely slow keeps the kernel
busy and is left alone until the per-cell `timeout`. On a stall the watchdog opens a second
connection to the kernel and asks for `kernel_info` (a fresh connection wakes a shell socket
whose wake-up was lost, ipykernel #1554), waits a little, and if the cell is still waiting
kills the kernel, so the execution ends in seconds with a message naming notebook and cell.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Callable

import nbformat
import psutil
from jupyter_client import BlockingKernelClient
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError


@dataclasses.dataclass
class Stall:
    cell: int               # index in nb.cells
    waited: float           # seconds the cell had been running
    idle: float             # seconds the kernel had been idle
    recovered: bool         # the cell completed after the poke


@dataclasses.dataclass
class Execution:
    nb: nbformat.NotebookNode
    status: str             # ok | error | timeout | stall | stall-recovered | dead-kernel
    seconds: float
    message: str            # first lines of the error, "" when ok
    cell_seconds: dict      # cell index -> seconds
    stalls: list
    kernel_cpu: float | None


class Watchdog(threading.Thread):
    """Watches the kernel's CPU time while a cell runs; acts after `idle` s without progress."""

    def __init__(self, idle: float, log: Callable[[str], None], poke_wait: float = 20.0):
        super().__init__(daemon=True)
        self.idle, self.log, self.poke_wait = idle, log, poke_wait
        self.client: NotebookClient | None = None
        self.cell_index: int | None = None
        self.cell_started = 0.0
        self.stalls: list[Stall] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def kernel_cpu(self) -> float | None:
        try:
            proc = psutil.Process(self.client.km.provisioner.process.pid)
            total = sum(proc.cpu_times()[:4])
            for child in proc.children(recursive=True):
                total += sum(child.cpu_times()[:2])
            return total
        except Exception:       # noqa: BLE001  (no kernel yet, or it is gone)
            return None

    def _poke(self) -> None:
        try:
            kc = BlockingKernelClient(connection_file=self.client.km.connection_file)
            kc.load_connection_file()
            kc.start_channels()
            try:
                kc.kernel_info(reply=True, timeout=10)
                self.log("    the kernel answers kernel_info on a fresh connection")
            except Exception as exc:        # noqa: BLE001
                self.log(f"    no kernel_info reply on a fresh connection ({type(exc).__name__})")
            kc.stop_channels()
        except Exception as exc:            # noqa: BLE001
            self.log(f"    could not open a second connection: {exc!r}")

    def run(self) -> None:
        key, last_cpu, last_change = None, 0.0, time.monotonic()
        while not self.stop.wait(2.0):
            with self.lock:
                index, started, client = self.cell_index, self.cell_started, self.client
            if index is None or client is None:
                key = None
                continue
            cpu = self.kernel_cpu()
            now = time.monotonic()
            if cpu is None:
                continue
            if key != (id(client), index, started):        # a new cell: count afresh
                key, last_cpu, last_change = (id(client), index, started), cpu, now
                continue
            if abs(cpu - last_cpu) > 0.05:
                last_cpu, last_change = cpu, now
                continue
            if now - last_change < self.idle:
                continue
            waited, idle = now - started, now - last_change
            self.log(f"  STALL: cell {index} has waited {waited:.0f} s for its reply and the "
                     f"kernel has been idle for {idle:.0f} s")
            self._poke()
            deadline = time.monotonic() + self.poke_wait
            while time.monotonic() < deadline and not self.stop.is_set():
                time.sleep(0.5)
                with self.lock:
                    if self.cell_index != index:
                        break
            with self.lock:
                recovered = self.cell_index != index
            self.stalls.append(Stall(index, waited, idle, recovered))
            if recovered:
                self.log(f"    cell {index} completed after the poke")
            else:
                self.log(f"    cell {index} is still waiting: killing the kernel")
                try:
                    client.km.provisioner.process.kill()
                except Exception as exc:    # noqa: BLE001
                    self.log(f"    kill failed: {exc!r}")
            key = None


def _first_line(src: str) -> str:
    lines = [ln for ln in src.splitlines() if ln.strip()]
    return lines[0][:100] if lines else ""


def execute(path, *, timeout: int, idle: float, watchdog: Watchdog | None = None,
            log: Callable[[str], None] = print, cwd=None) -> Execution:
    """Execute the notebook at `path` (in its folder, or `cwd`); never raises on cell errors."""
    import pathlib

    path = pathlib.Path(path)
    own = watchdog is None
    if own:
        watchdog = Watchdog(idle, log)
        watchdog.start()
    nb = nbformat.read(path, as_version=4)
    cell_times: dict[int, float] = {}
    starts: dict[int, float] = {}
    cpu: list[float | None] = [None]

    def on_cell_execute(cell, cell_index, **_):
        starts[cell_index] = time.monotonic()
        with watchdog.lock:
            watchdog.cell_index, watchdog.cell_started = cell_index, starts[cell_index]

    def on_cell_executed(cell, cell_index, **_):
        cell_times[cell_index] = time.monotonic() - starts[cell_index]
        with watchdog.lock:
            watchdog.cell_index = None
        cpu[0] = watchdog.kernel_cpu()          # the kernel's CPU seconds so far

    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", allow_errors=False,
        resources={"metadata": {"path": str(cwd or path.parent)}},
        on_cell_execute=on_cell_execute, on_cell_executed=on_cell_executed)
    with watchdog.lock:
        watchdog.client, watchdog.stalls = client, []
    # The kernel gets this process's environment less MPLBACKEND: tests/conftest.py sets Agg
    # for the unit tests, and a kernel started with it would draw no figure at all.
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    t0 = time.monotonic()
    status, message = "ok", ""
    try:
        client.execute(env=env)
    except CellTimeoutError as exc:
        status, message = "timeout", str(exc).strip()
    except DeadKernelError as exc:
        status, message = "dead-kernel", str(exc).strip()
    except CellExecutionError as exc:
        status, message = "error", str(exc).strip()
    finally:
        with watchdog.lock:
            watchdog.cell_index, watchdog.client = None, None
        if own:
            watchdog.stop.set()
    seconds = time.monotonic() - t0
    stalls = list(watchdog.stalls)
    if stalls:
        s = stalls[-1]
        status = "stall-recovered" if s.recovered else "stall"
        src = _first_line(nb.cells[s.cell].source)
        message = (f"cell {s.cell} ({src!r}) waited {s.waited:.0f} s for its reply while the "
                   f"kernel sat idle for {s.idle:.0f} s: a message between client and kernel "
                   f"was lost (issue 10, part 8; rerun scripts/stall_check.py). "
                   + ("It completed after a second connection poked the kernel. "
                      if s.recovered else "The kernel was killed. ") + message)
    return Execution(nb=nb, status=status, seconds=seconds, message=message,
                     cell_seconds=cell_times, stalls=stalls, kernel_cpu=cpu[0])
