#!/usr/bin/env python
"""Every chapter's live panel, driven in a real browser: JupyterLab and headless Chromium.

For each chapter with a live panel (the cell tagged `live-panel`), a notebook of only the cells
the panel needs (tagged `panel-setup`, then the panel's) is opened in JupyterLab -- the server
`make lab` starts, here on 127.0.0.1 with a token and a free port -- in headless Chromium,
driven over the Chrome DevTools protocol (scripts/browser_check.py's client). Its cells are run
from JupyterLab's own "Run All", then every control of the panel is moved as a reader moves it:
each slider's handle dragged with the mouse along its track, a toggle button clicked. After
each move it waits for the redraw and checks

* the figure changed (a new image) and the status line says what was drawn (not "computing…");
* the values the browser shows (the sliders' readouts) are the kernel's;
* what the panel shows is what its static drawing function gives for those values: the draw
  is called again in the same kernel (over the kernel's websocket) and its summary compared
  with the panel's status line;
* no error or stderr output in the notebook, no JavaScript error in the browser;

and at the end that every kernel and the server are shut down. Each redraw's time (mouse
released -> new figure shown) is recorded; a table is printed.

    python scripts/panel_check.py --preset ci --no-prepare    # what make test runs (~3 min)
    python scripts/panel_check.py --preset cpu --moves 3      # the redraw table at cpu
    python scripts/panel_check.py --chapters 03 05b --keep /tmp/panels   # keep screenshots

Exit status 0 when every panel passes.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from browser_check import find_chromium, launch  # noqa: E402

SETUP_TAG, PANEL_TAG = "panel-setup", "live-panel"
# JupyterLab's own settings for the test: no news or update checks (the network is closed),
# every cell in the page (no windowing: the panel is the last cell)
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def chapters_with_panels(prefixes=None) -> list[pathlib.Path]:
    out = []
    for p in sorted((ROOT / "notebooks").glob("*.ipynb")):
        if prefixes and not any(p.name.startswith(c) for c in prefixes):
            continue
        nb = json.loads(p.read_text())
        if any(PANEL_TAG in c["metadata"].get("tags", []) for c in nb["cells"]):
            out.append(p)
    return out


def panel_notebook(path: pathlib.Path) -> dict:
    """The chapter's `panel-setup` cells and its `live-panel` cell, outputs cleared."""
    nb = json.loads(path.read_text())
    cells = []
    for c in nb["cells"]:
        tags = c["metadata"].get("tags", [])
        if c["cell_type"] == "code" and (SETUP_TAG in tags or PANEL_TAG in tags):
            cells.append(dict(c, outputs=[], execution_count=None))
        if PANEL_TAG in tags:
            break
    if not cells or PANEL_TAG not in cells[-1]["metadata"].get("tags", []):
        raise ValueError(f"{path.name}: no cell tagged {PANEL_TAG!r}")
    nb["cells"] = cells
    return nb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def execute(port: int, token: str, kernel_id: str, code: str,
            timeout: float = 600.0) -> tuple[str, str]:
    """Run ``code`` in a Jupyter server's kernel over its websocket (a session of its own, no
    history); return (stdout + tracebacks, reply status)."""
    import websocket
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{port}/api/kernels/{kernel_id}/channels?token={token}",
        timeout=timeout, suppress_origin=True)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "check",
                       "session": uuid.uuid4().hex, "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}))
        out, status, idle = [], None, False
        deadline = time.monotonic() + timeout
        while not (status and idle) and time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "error":
                out.append("\n".join(msg["content"]["traceback"]))
            elif kind == "execute_reply":
                status = msg["content"]["status"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        return "".join(out), status or "timeout"
    finally:
        ws.close()


class Lab:
    """JupyterLab (this environment's, as `make lab` runs it) on a folder, with a token."""

    def __init__(self, folder: pathlib.Path, preset: str, prepare: bool = True):
        self.port, self.token = free_port(), uuid.uuid4().hex
        settings = folder / ".lab-settings"
        for name, value in LAB_SETTINGS.items():
            (settings / name).parent.mkdir(parents=True, exist_ok=True)
            (settings / name).write_text(json.dumps(value))
        cmd = [str(pathlib.Path(sys.executable).with_name("jupyter")), "lab", "--no-browser",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               f"--notebook-dir={folder}", "--expose-app-in-browser",
               "--LabApp.news_url=None", f"--LabApp.user_settings_dir={settings}",
               f"--LabApp.workspaces_dir={folder / '.lab-workspaces'}",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if os.getuid() == 0:
            cmd.append("--allow-root")
        env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
        env.update(WIDENETS_PRESET=preset, TF_CPP_MIN_LOG_LEVEL="3",
                   WIDENETS_PANEL_PREPARE="1" if prepare else "0")
        self.log = open(folder / ".lab.log", "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.get("/api/status", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not start: {(folder / '.lab.log').read_text()[-2000:]}")
            time.sleep(0.3)

    def get(self, path, method="GET", data=None, timeout=30.0):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     data=data, headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
            return r.status, (json.loads(body) if body[:1] in (b"{", b"[") else body)

    def execute(self, kernel_id: str, code: str, timeout: float = 600.0) -> tuple[str, str]:
        return execute(self.port, self.token, kernel_id, code, timeout)

    def shutdown(self) -> bool:
        """Shut the kernels and the server down; True when the server process has ended."""
        try:
            for k in self.get("/api/kernels")[1]:
                self.get(f"/api/kernels/{k['id']}", method="DELETE")
            self.get("/api/shutdown", method="POST", data=b"")
            self.proc.wait(timeout=30)
        except Exception:
            pass
        ended = self.proc.poll() is not None
        if not ended:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=10)
        self.log.close()
        return ended


# -- in the page ---------------------------------------------------------------------------------
JS_HELPERS = r"""
window.__nb = () => {      // the notebook in the main area (shell.currentWidget needs focus)
  const app = window.jupyterapp;
  return app ? [...app.shell.widgets('main')].find(w => w.content && w.sessionContext) : null;
};
window.__kernel = () => {
  const nb = window.__nb(), s = nb && nb.sessionContext.session;
  return s ? s.kernel : null;
};
window.__panel = () => {
  const cells = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')];
  const last = cells[cells.length - 1];
  return last ? last.querySelector('.jp-OutputArea-output .widget-vbox') : null;
};
window.__state = () => {
  const p = window.__panel();
  const kernel = window.__kernel();
  const bad = [...document.querySelectorAll('.jp-OutputArea-output')]
      .filter(o => /stderr|error/.test(o.getAttribute('data-mime-type') || ''))
      .map(o => o.innerText.slice(0, 400));
  if (!p) return {panel: false, bad, kernel: kernel ? kernel.status : null};
  const img = p.querySelector('.widget-output img');
  const status = p.querySelector(':scope > .widget-html');
  const controls = [...p.querySelectorAll(':scope > .widget-slider, :scope > .widget-toggle-buttons')]
      .map(c => ({label: (c.querySelector('.widget-label') || {}).innerText || '',
                  kind: c.classList.contains('widget-toggle-buttons') ? 'toggle' : 'slider',
                  readout: c.classList.contains('widget-toggle-buttons')
                      ? ((c.querySelector('.mod-active') || {}).innerText || '')
                      : ((c.querySelector('.widget-readout') || {}).innerText || '')}));
  return {panel: true, bad, kernel: kernel ? kernel.status : null,
          kernelId: kernel ? kernel.id : null, img: img ? img.src : null,
          imgWidth: img ? img.naturalWidth : 0,
          status: status ? status.innerText : '', controls};
};
window.__geometry = (i) => {      // where to press and where to drag/click, for control i
  const p = window.__panel();
  const c = [...p.querySelectorAll(':scope > .widget-slider, :scope > .widget-toggle-buttons')][i];
  c.scrollIntoView({block: 'center'});
  const r = e => { const b = e.getBoundingClientRect();
                   return {x: b.left + b.width / 2, y: b.top + b.height / 2, left: b.left, width: b.width}; };
  if (c.classList.contains('widget-toggle-buttons')) {
    const buttons = [...c.querySelectorAll('button')];
    const k = buttons.findIndex(b => b.classList.contains('mod-active'));
    return {kind: 'toggle', targets: buttons.map(r), active: k, n: buttons.length};
  }
  const h = c.querySelector('.noUi-handle'), base = c.querySelector('.noUi-base');
  return {kind: 'slider', handle: r(h), base: r(base),
          now: parseFloat(h.getAttribute('aria-valuenow')), min: parseFloat(h.getAttribute('aria-valuemin')),
          max: parseFloat(h.getAttribute('aria-valuemax'))};
};
true
"""

# in the kernel, after a redraw: the panel's values, its status line, and the static draw's
# summary for the same values
KERNEL_PROBE = r"""
import json as _json
import matplotlib.pyplot as _plt
_p = [v for v in Out.values() if type(v).__name__ == "Panel"][-1]
_v = _p.values()
_fig, _ax = _plt.subplots(1, _p.ncols, figsize=_p.figsize)
import warnings as _warnings
with _warnings.catch_warnings():
    _warnings.simplefilter("ignore")        # the panel shows them; here only the numbers count
    _r = _p.draw(_ax, **_v)
_plt.close(_fig)
print("PANEL_PROBE " + _json.dumps({"values": {_p.controls[k].description: v for k, v in _v.items()},
                                    "static": _p.describe(_v, _r), "seconds": _p.seconds}))
"""


class Page:
    def __init__(self, dt):
        self.dt = dt

    def eval(self, js: str, timeout: float = 120.0):
        r = self.dt.send("Runtime.evaluate", {"expression": js, "awaitPromise": True,
                                              "returnByValue": True}, timeout=timeout + 10)
        if "exceptionDetails" in r:
            raise RuntimeError(f"in the page: {r['exceptionDetails'].get('exception', r['exceptionDetails'])}")
        return r["result"].get("value")

    def wait(self, predicate_js: str, timeout: float, what: str) -> float:
        """Poll ``predicate_js`` (an expression over ``s = __state()``) in the page every 50 ms
        until it holds or an error output appears; return the seconds waited."""
        t0 = time.perf_counter()
        res = self.eval(f"""(async () => {{
            const t0 = performance.now();
            while (performance.now() - t0 < {timeout * 1000}) {{
              const s = window.__state ? window.__state() : {{bad: []}};
              if (s.bad && s.bad.length) return {{ok: false, bad: s.bad}};
              if (/could not draw/.test(s.status || '')) return {{ok: false, bad: [s.status]}};
              if ({predicate_js}) return {{ok: true}};
              await new Promise(r => setTimeout(r, 50));
            }}
            return {{ok: false, timeout: true}}; }})()""", timeout=timeout)
        if not res["ok"]:
            if res.get("bad"):
                raise AssertionError(f"{what}: an error in the notebook or the panel:\n"
                                     + "\n".join(res["bad"]))
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        return time.perf_counter() - t0

    def mouse(self, kind: str, x: float, y: float, buttons: int = 1):
        self.dt.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                                  "buttons": buttons, "clickCount": 1})


def _matches(readout: str, value) -> bool:
    """A readout the browser shows against the kernel's value (readouts are rounded)."""
    if isinstance(value, str):
        return readout.strip() == value
    try:
        shown = float(readout.replace("−", "-"))
    except ValueError:
        return False
    return abs(shown - value) <= 0.006 + 0.006 * abs(value)


def move_control(page: Page, i: int, move: int, button: int | None = None) -> str:
    """Drag slider i (or click toggle i: its button ``button``, default another one) to another
    value; return what was done."""
    g = page.eval(f"window.__geometry({i})")
    if g["kind"] == "toggle":
        k = (g["active"] + 1 + move) % g["n"] if button is None else button
        if k == g["active"]:
            k = (k + 1) % g["n"]
        b = g["targets"][k]
        page.mouse("mousePressed", b["x"], b["y"])
        page.mouse("mouseReleased", b["x"], b["y"], buttons=0)
        return f"button {k + 1} of {g['n']}"
    span = (g["max"] - g["min"]) or 1.0
    now = (g["now"] - g["min"]) / span
    # first move: to the far end (the largest width, depth, ...); later ones: a third of the way
    # from the other end, then back near the middle
    target = [1.0 if now < 0.5 else 0.0, 0.3 if now > 0.5 else 0.7, 0.5][move % 3]
    if abs(target - now) < 0.05:
        target = 0.0 if now > 0.5 else 1.0
    h, base = g["handle"], g["base"]
    x1 = base["left"] + target * base["width"]
    page.mouse("mouseMoved", h["x"], h["y"], buttons=0)
    page.mouse("mousePressed", h["x"], h["y"])
    for f in (0.25, 0.5, 0.75, 1.0):
        page.mouse("mouseMoved", h["x"] + f * (x1 - h["x"]), h["y"])
    page.mouse("mouseReleased", x1, h["y"], buttons=0)
    return f"dragged to {100 * target:.0f}% of the track"


def check_chapter(page: Page, lab: Lab, name: str, moves: int, shots: pathlib.Path | None) -> dict:
    """Open the chapter's panel notebook, run it, move every control ``moves`` times."""
    rec: dict = {"chapter": name, "redraws": [], "problems": []}
    t0 = time.perf_counter()
    # the notebook open before (if any) saved, so that leaving it asks nothing (JupyterLab's
    # beforeunload prompt would hold the navigation)
    page.eval("(async () => { const nb = window.__nb && window.__nb();"
              " if (nb) await nb.context.save(); return true; })()")
    page.dt.send("Page.navigate", {"url": f"http://127.0.0.1:{lab.port}/lab/tree/{name}.ipynb"
                                          f"?reset&token={lab.token}"})
    page.dt.wait_event("Page.loadEventFired", 60)
    page.wait("window.jupyterapp", 60, f"{name}: JupyterLab did not load")
    page.eval(JS_HELPERS)
    page.wait("(k => k && k.connectionStatus === 'connected' && k.status === 'idle')"
              "(window.__kernel())", 120, f"{name}: JupyterLab did not open the notebook with a kernel")
    rec["open_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    page.eval("(async () => { jupyterapp.shell.activateById(window.__nb().id);"
              " await jupyterapp.commands.execute('notebook:run-all-cells'); return true; })()")
    page.wait("s.panel && s.img && !/computing/.test(s.status) && s.status.length > 0"
              " && s.kernel === 'idle'", 1800, f"{name}: the panel's first figure")
    rec["setup_and_first_draw_s"] = time.perf_counter() - t1
    state = page.eval("window.__state()")
    kernel = state["kernelId"]
    controls = state["controls"]
    rec["controls"] = [c["label"] for c in controls]
    first = {i: page.eval(f"window.__geometry({i})") for i in range(len(controls))}
    # every control moved ``moves`` times, in order; then each toggle clicked back to its first
    # button, so that its first option is also drawn with the sliders moved (Chapter 4's relu
    # button at depth 3 once failed, and only there)
    plan = [(i, c, (lambda i=i, m=m: move_control(page, i, m)))
            for m in range(moves) for i, c in enumerate(controls)]
    plan += [(i, c, (lambda i=i: move_control(page, i, 0, button=first[i]["active"])))
             for i, c in enumerate(controls) if first[i]["kind"] == "toggle"]
    for i, c, act in plan:
        # a reader looks at the figure before moving on: the panel prepares the settings
        # one move away meanwhile (wn.widgets.Panel); wait for that, and record it
        rec["prepare_s"] = rec.get("prepare_s", 0.0) + page.wait(
            "!/preparing/.test(s.status) && s.kernel === 'idle'", 900,
            f"{name}: the panel's preparation of nearby settings")
        before = page.eval("window.__state()")
        t = time.perf_counter()
        how = act()
        page.wait(f"s.img && s.img !== {json.dumps(before['img'])} && /\\(\\d+\\.\\d s\\)/.test(s.status)"
                  f" && s.status !== {json.dumps(before['status'])} && s.kernel === 'idle'",
                  600, f"{name}: redraw after moving {c['label']!r} ({how})")
        seconds = time.perf_counter() - t
        after = page.eval("window.__state()")
        out, status = lab.execute(kernel, KERNEL_PROBE)
        if status != "ok" or "PANEL_PROBE " not in out:
            raise AssertionError(f"{name}: the static draw failed in the kernel:\n{out[-3000:]}")
        probe = json.loads(out.split("PANEL_PROBE ", 1)[1].split("\n", 1)[0])
        row = {"control": c["label"], "how": how, "seconds": seconds,
               "kernel_seconds": probe["seconds"],
               "value": probe["values"].get(c["label"]), "status": after["status"]}
        rec["redraws"].append(row)
        # the browser shows the kernel's values, and the panel what the static draw gives
        for ctl in after["controls"]:
            v = probe["values"].get(ctl["label"])
            if v is None or not _matches(ctl["readout"], v):
                rec["problems"].append(f"{ctl['label']!r} shows {ctl['readout']!r} but the "
                                       f"kernel has {v!r}")
        if not after["status"].startswith(probe["static"]):
            rec["problems"].append(f"after moving {c['label']!r}: the panel shows "
                                   f"{after['status']!r}; the static draw for those values "
                                   f"gives {probe['static']!r}")
        if before["controls"][i]["readout"] == after["controls"][i]["readout"]:
            rec["problems"].append(f"{c['label']!r} did not move ({how})")
    if shots is not None:
        page.eval("window.__panel().scrollIntoView({block: 'start'})")
        shot = page.dt.send("Page.captureScreenshot", {"format": "png"})
        (shots / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))
    lab.get(f"/api/kernels/{kernel}", method="DELETE")
    rec["total_s"] = time.perf_counter() - t0
    return rec


def browser_errors(events: list[dict]) -> list[str]:
    bad = []
    for e in events:
        m, p = e["method"], e.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            bad.append(f"uncaught: {(d.get('exception') or {}).get('description') or d.get('text')}"[:300])
        elif m == "Runtime.consoleAPICalled" and p.get("type") == "error":
            bad.append("console.error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                    for a in p.get("args", []))[:300])
        elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
            bad.append(f"log: {p['entry'].get('text', '')} {p['entry'].get('url', '')}"[:300])
    return bad


def run(preset: str, prefixes=None, moves: int = 1, keep: pathlib.Path | None = None,
        prepare: bool = True) -> list[dict]:
    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError("Chromium is not installed (apt-get install chromium)")
    folder = pathlib.Path(tempfile.mkdtemp(prefix="widenets-panels-"))
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        chapters = chapters_with_panels(prefixes)
        for path in chapters:
            (folder / path.name).write_text(json.dumps(panel_notebook(path), indent=1))
        lab = Lab(folder, preset, prepare)
        profile = folder / ".chromium"
        profile.mkdir()
        proc, dt = launch(chromium, profile)
        page = Page(dt)
        server_ended = False
        try:
            for m in ("Runtime.enable", "Page.enable", "Log.enable"):
                dt.send(m)
            for path in chapters:
                dt.events.clear()
                try:
                    rec = check_chapter(page, lab, path.stem, moves, keep)
                except (AssertionError, RuntimeError, TimeoutError) as err:
                    rec = {"chapter": path.stem, "redraws": [], "problems": [str(err)]}
                    for k in lab.get("/api/kernels")[1]:
                        lab.get(f"/api/kernels/{k['id']}", method="DELETE")
                dt.drain(0.5)
                rec["problems"] += browser_errors(dt.events)
                results.append(rec)
                print(summary_line(rec), flush=True)
            left = lab.get("/api/kernels")[1]
            if left:
                results[-1]["problems"].append(f"{len(left)} kernel(s) still running at the end")
        finally:
            dt.close()
            proc.kill()
            proc.wait(timeout=30)
            server_ended = lab.shutdown()
        if not server_ended:
            results.append({"chapter": "(server)", "redraws": [],
                            "problems": ["JupyterLab did not shut down when asked"]})
    finally:
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for f in (folder / ".lab.log",):
                if f.exists():
                    shutil.copy(f, keep / "lab.log")
        shutil.rmtree(folder, ignore_errors=True)
    return results


def summary_line(rec: dict) -> str:
    times = [r["seconds"] for r in rec["redraws"]]
    if not times:
        return f"{rec['chapter']}: FAILED: {'; '.join(rec['problems'])[:2000]}"
    status = "ok" if not rec["problems"] else "PROBLEMS: " + "; ".join(rec["problems"])
    return (f"{rec['chapter']}: {len(times)} redraws, median {statistics.median(times):.2f} s, "
            f"slowest {max(times):.2f} s; {status}")


def table(results: list[dict], preset: str) -> str:
    lines = [f"Live panels in JupyterLab + headless Chromium, preset {preset} (redraw: mouse "
             f"released -> new figure on the page)",
             f"{'chapter':24s} {'open+setup+first':>16s} {'preparing':>9s} {'median':>7s} "
             f"{'slowest':>8s}  each move: control = value (s)"]
    for r in results:
        if not r["redraws"]:
            lines.append(f"{r['chapter']:24s} failed")
            continue
        times = [x["seconds"] for x in r["redraws"]]
        each = "; ".join(f"{x['control']} = {x['value']:.3g} ({x['seconds']:.1f})"
                         if isinstance(x["value"], float) else
                         f"{x['control']} = {x['value']} ({x['seconds']:.1f})" for x in r["redraws"])
        lines.append(f"{r['chapter']:24s} {r.get('open_s', 0) + r.get('setup_and_first_draw_s', 0):16.1f} "
                     f"{r.get('prepare_s', 0):9.1f} {statistics.median(times):7.2f} {max(times):8.2f}  {each}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=os.environ.get("WIDENETS_PRESET") or "ci")
    ap.add_argument("--chapters", nargs="*", help="chapter name prefixes (default: every panel)")
    ap.add_argument("--moves", type=int, default=1, help="moves of each control (default 1)")
    ap.add_argument("--keep", type=pathlib.Path, help="save screenshots and the server log here")
    ap.add_argument("--json", type=pathlib.Path, help="write the results here")
    ap.add_argument("--no-prepare", action="store_true",
                    help="panels do not prepare nearby settings (quicker; redraws that change a "
                    "shape then compile)")
    args = ap.parse_args(argv)
    results = run(args.preset, args.chapters, args.moves, args.keep, not args.no_prepare)
    print(table(results, args.preset))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if any(r["problems"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
