"""Execute one notebook with nbclient, with a watchdog that fails a stalled cell fast.

Used by scripts/build_book.py (`make book`: the chapters not in its cache, two at a time),
tests/test_chapters.py (each chapter executed once per `make test`; the book build then
renders those executed copies), benchmarks/profile_chapters.py (per-cell times and XLA
compilation) and scripts/stall_check.py (many executions in a row).

Slow is not stuck: `make book` runs with no per-cell timeout (`timeout=None`), so that a busy
machine makes the build slower, never failed; the watchdog below tells a lost message (the
kernel idle while the client waits) from long work (the kernel busy). With `heartbeat` set, a
cell that runs longer says so every `heartbeat` seconds through `log`.

A *stall* is a cell during which the kernel sits idle -- its CPU time, with its children's,
does not advance for `idle` seconds -- although the client is still waiting for the cell's
reply: the signature of a message lost between client and kernel (issue 10, part 8; seen
with ipykernel 7.4.0, see requirements.txt). A cell that is merely slow keeps the kernel
busy and is left alone until the per-cell `timeout`. On a stall the watchdog

1. looks at the client's own sockets (in the client's event loop): a reply already waiting
   on the shell socket means the client missed the socket's (edge-triggered) wake-up;
2. sends `kernel_info_request` on the client's own shell connection: the kernel's answer is
   new traffic on both ends, which wakes a shell socket on either side whose wake-up was
   lost (ipykernel #1554 describes the kernel side), so the waiting reply is read;
3. if the cell still waits after `poke_wait` seconds, asks again on a fresh connection, and
   then kills the kernel, so the execution ends in minutes with a message naming the cell.

A stall the poke recovers is reported as `stall-recovered` (the execution goes on and
succeeds; tests/test_chapters.py warns loudly); one it does not as `stall` (failure).

Every stall seen here (ipykernel 6.31.0, three in ~40 chapter executions) was in a chapter's
live-panel cell (`wn.widgets.*_panel(...)`), the one cell that opens an ipywidgets Output
widget. For such a widget nbclient's OutputWidget sends `comm_msg` updates to the kernel on
the shell socket from the coroutine that reads iopub, while the coroutine waiting for the
cell's `execute_reply` polls that same socket; a send in that window can consume the
socket's edge-triggered wake-up, and the reply then sits unread (the client-side twin of
ipykernel #1554). `quiet_output_widgets()` turns nbclient's Output-widget support off: what
a panel draws at start-up goes to its cell's own outputs (the panel cells are tagged
`remove-output`), and nothing is sent on the shell socket while a cell runs.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import threading
import time
from typing import Callable

import nbformat
import psutil
import zmq
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
    message: str            # the failing cell (index, first line) and its error, "" when ok
    cell_seconds: dict      # cell index -> seconds
    stalls: list
    kernel_cpu: float | None
    cell_started: dict = dataclasses.field(default_factory=dict)   # cell index -> time.time()
    cell_cpu: dict = dataclasses.field(default_factory=dict)   # cell index -> kernel CPU seconds
    failed_cell: int | None = None      # the cell that raised, timed out or stalled


class Watchdog(threading.Thread):
    """Watches the kernel's CPU time while a cell runs; acts after `idle` s without progress."""

    def __init__(self, idle: float, log: Callable[[str], None], poke_wait: float = 60.0,
                 heartbeat: float | None = None):
        super().__init__(daemon=True)
        self.idle, self.log, self.poke_wait = idle, log, poke_wait
        self.heartbeat = heartbeat          # seconds between "still running" lines, or None
        self.describe: Callable[[int], str] = lambda index: f"cell {index}"
        self.client: NotebookClient | None = None
        self.loop: asyncio.AbstractEventLoop | None = None     # the client's event loop
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

    def _in_client_loop(self, fn, timeout: float = 10.0):
        """Run fn() in the client's event loop (its sockets belong to that thread)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def call():
            try:
                fut.set_result(fn())
            except Exception as exc:        # noqa: BLE001
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(call)
        return fut.result(timeout)

    def _client_sockets(self) -> str:
        kc = self.client.kc

        def events():
            return {name: int(ch.socket.get(zmq.EVENTS)) & zmq.POLLIN
                    for name, ch in (("shell", kc.shell_channel), ("iopub", kc.iopub_channel))}
        try:
            ev = self._in_client_loop(events)
        except Exception as exc:            # noqa: BLE001
            return f"client sockets not readable ({exc!r})"
        waiting = [name for name, v in ev.items() if v]
        return ("a message is waiting unread on the client's " + " and ".join(waiting)
                + " socket: the client missed its wake-up") if waiting else \
            "nothing waiting on the client's shell and iopub sockets"

    def _poke_same_connection(self) -> None:
        try:
            self._in_client_loop(self.client.kc.kernel_info)
            self.log("    sent kernel_info_request on the client's own shell connection")
        except Exception as exc:            # noqa: BLE001
            self.log(f"    could not send kernel_info_request: {exc!r}")

    def _poke_fresh_connection(self) -> None:
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

    def _wait_for(self, index: int, seconds: float) -> bool:
        """True when the cell `index` completes within `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.stop.is_set():
            with self.lock:
                if self.cell_index != index:
                    return True
            time.sleep(0.5)
        with self.lock:
            return self.cell_index != index

    def run(self) -> None:
        key, last_cpu, last_change = None, 0.0, time.monotonic()
        beats = 0
        while not self.stop.wait(2.0):
            with self.lock:
                index, started, client = self.cell_index, self.cell_started, self.client
            if index is None or client is None:
                key = None
                continue
            if self.heartbeat and key == (id(client), index, started):
                running = time.monotonic() - started
                if running >= (beats + 1) * self.heartbeat:
                    beats = int(running // self.heartbeat)
                    self.log(f"{self.describe(index)} still running after {running:.0f} s")
            cpu = self.kernel_cpu()
            now = time.monotonic()
            if cpu is None:
                continue
            if key != (id(client), index, started):        # a new cell: count afresh
                key, last_cpu, last_change = (id(client), index, started), cpu, now
                beats = 0
                continue
            if abs(cpu - last_cpu) > 0.05:
                last_cpu, last_change = cpu, now
                continue
            if now - last_change < self.idle:
                continue
            waited, idle = now - started, now - last_change
            self.log(f"  STALL: cell {index} has waited {waited:.0f} s for its reply and the "
                     f"kernel has been idle for {idle:.0f} s")
            self.log(f"    {self._client_sockets()}")
            self._poke_same_connection()
            recovered = self._wait_for(index, self.poke_wait)
            if not recovered:
                self._poke_fresh_connection()
                recovered = self._wait_for(index, 20)
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


def quiet_output_widgets() -> None:
    """nbclient: no OutputWidget objects, so no shell sends while a cell runs (see above)."""
    NotebookClient.on_comm_open_jupyter_widget = lambda self, msg: None


def _first_line(src: str) -> str:
    lines = [ln for ln in src.splitlines() if ln.strip()]
    return lines[0][:100] if lines else ""


def execute(path, *, timeout: int | None, idle: float, watchdog: Watchdog | None = None,
            log: Callable[[str], None] = print, cwd=None, prelude: str | None = None,
            heartbeat: float | None = None, name: str | None = None,
            on_cell_done: Callable[[int, float, str], None] | None = None) -> Execution:
    """Execute the notebook at `path` (in its folder, or `cwd`); never raises on cell errors.

    `timeout`: seconds per cell, or None for none (the watchdog still catches a lost message).
    `prelude`: code run in the kernel before the first cell (not kept in the returned notebook;
    benchmarks/profile_chapters.py uses it to listen to XLA compilations).
    `heartbeat`: seconds between "still running" lines for a long cell (see Watchdog).
    `name`: how messages name the notebook (default: its file name).
    `on_cell_done(index, seconds, first_line)`: called after every code cell.
    """
    import pathlib

    path = pathlib.Path(path)
    name = name or path.name
    own = watchdog is None
    if own:
        watchdog = Watchdog(idle, log, heartbeat=heartbeat)
        watchdog.start()
    nb = nbformat.read(path, as_version=4)
    shift = 0
    if prelude:
        nb.cells.insert(0, nbformat.v4.new_code_cell(prelude))
        shift = 1
    describe = lambda i: f"{name}, cell {i - shift} ({_first_line(nb.cells[i].source)!r})"
    watchdog.describe = describe
    cell_times: dict[int, float] = {}
    starts: dict[int, float] = {}
    walls: dict[int, float] = {}
    cpu: list[float | None] = [None]
    cpu_start: dict[int, float | None] = {}
    cell_cpu: dict[int, float] = {}
    current: list[int | None] = [None]

    def on_cell_execute(cell, cell_index, **_):
        cpu_start[cell_index] = watchdog.kernel_cpu()
        starts[cell_index] = time.monotonic()
        walls[cell_index] = time.time()
        current[0] = cell_index
        watchdog.loop = asyncio.get_running_loop()
        with watchdog.lock:
            watchdog.cell_index, watchdog.cell_started = cell_index, starts[cell_index]

    def on_cell_executed(cell, cell_index, **_):
        cell_times[cell_index] = time.monotonic() - starts[cell_index]
        with watchdog.lock:
            watchdog.cell_index = None
        cpu[0] = watchdog.kernel_cpu()          # the kernel's CPU seconds so far
        if cpu[0] is not None and cpu_start.get(cell_index) is not None:
            cell_cpu[cell_index] = cpu[0] - cpu_start[cell_index]
        if on_cell_done is not None and cell_index >= shift:
            on_cell_done(cell_index - shift, cell_times[cell_index], _first_line(cell.source))

    quiet_output_widgets()
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", allow_errors=False,
        resources={"metadata": {"path": str(cwd or path.parent)}},
        on_cell_execute=on_cell_execute, on_cell_executed=on_cell_executed)
    with watchdog.lock:
        watchdog.client, watchdog.stalls = client, []
    # The kernel gets this process's environment less MPLBACKEND: tests/conftest.py sets Agg
    # for the unit tests, and a kernel started with it would draw no figure at all.
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    # No progress lines (widenets._progress): they are stderr, which the strict book build turns
    # into a warning, and they appear only where a loop runs slower than ~5 s -- CI's make book
    # failed on two of them at f61e1fc while this machine printed none.
    env["WIDENETS_PROGRESS"] = "0"
    # nor the live panels' preparation of nearby settings (wn.widgets.Panel): no one moves a
    # slider in a batch run, and it would keep the kernel busy into the next cells
    env["WIDENETS_PANEL_PREPARE"] = "0"
    t0 = time.monotonic()
    status, message = "ok", ""
    try:
        client.execute(env=env)
    except CellTimeoutError as exc:
        status, message = "timeout", str(exc).strip()
    except DeadKernelError as exc:
        status, message = "dead-kernel", str(exc).strip()
    except CellExecutionError as exc:
        status = "error"
        message = (f"{exc.ename}: {exc.evalue}".strip() + "\n\n" + str(exc).strip()
                   if getattr(exc, "ename", None) else str(exc).strip())
    finally:
        with watchdog.lock:
            watchdog.cell_index, watchdog.client = None, None
        if own:
            watchdog.stop.set()
    seconds = time.monotonic() - t0
    stalls = list(watchdog.stalls)
    failed = current[0] if status != "ok" else None
    if stalls:
        s = stalls[-1]
        if not s.recovered or status == "ok":
            status = "stall-recovered" if s.recovered else "stall"
            failed = s.cell if not s.recovered else None
        message = (f"{describe(s.cell)} waited {s.waited:.0f} s for its reply while the "
                   f"kernel sat idle for {s.idle:.0f} s: a message between client and kernel "
                   f"was lost (issue 10, part 8; rerun scripts/stall_check.py). "
                   + ("It completed after the watchdog poked the connection. "
                      if s.recovered else "The kernel was killed. ") + message)
    elif failed is not None:
        message = f"{describe(failed)} failed ({status}): {message}"
    if shift:
        del nb.cells[0]
        stalls = [dataclasses.replace(st, cell=st.cell - shift) for st in stalls]
    unshift = lambda d: {i - shift: v for i, v in d.items() if i >= shift}
    return Execution(nb=nb, status=status, seconds=seconds, message=message,
                     cell_seconds=unshift(cell_times), stalls=stalls, kernel_cpu=cpu[0],
                     cell_started=unshift(walls), cell_cpu=unshift(cell_cpu),
                     failed_cell=None if failed is None else failed - shift)
