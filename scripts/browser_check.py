#!/usr/bin/env python
"""Open every page of the built book in headless Chromium and check what a reader sees.

The pages are served from `_build/html` by a local HTTP server and driven over the Chrome
DevTools protocol (a websocket; `websocket-client` is the only dependency, no driver, no
browser download). Host names other than 127.0.0.1 do not resolve inside the browser, so a
page that needs the network shows it. For every page:

* no JavaScript error: no uncaught exception, no `console.error`, no failed resource load,
  no request that leaves the machine (the book must be self-contained: MathJax is local);
* every equation typeset: each Sphinx `.math` element holds a MathJax `mjx-container`, no
  MathJax TeX error (`mjx-merror`), and no raw TeX (`\\(`, `\\[`, `$$`, `\\begin{`, `$..\\cmd..$`)
  left in the text outside code;
* every `<img>` loaded with a non-zero natural size;
* no error output: no `.output.traceback` / `.output.error`, no stderr or output text with
  `Traceback` or `...Error:`;
* chapter pages (notebooks/*): a Colab launch link and a static slider grid -- a cell tagged
  `static-grid` (HTML class `tag_static-grid`) with a figure in its output; chapters without
  that tag fall back to the cell after the live slider cell (tagged `live-panel`).

A full-page screenshot of each page goes to `<html>/_screenshots/<page>.png`, with an
`index.html` listing them and the findings (linked from the status page), and `report.json`.

    python scripts/browser_check.py                  # exit 0 when every page passes
    python scripts/browser_check.py --html _build/html --only notebooks/01_static_ntk.html
"""
from __future__ import annotations

import argparse
import base64
import functools
import html
import http.server
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Flags that keep Chromium off the (closed) network and free of first-run work.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
    "--disable-dev-shm-usage", "--window-size=1280,900",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)
SCREENSHOT_DIR = "_screenshots"
MAX_SHOT_HEIGHT = 16000          # px of the PNG; longer pages are scaled down to fit

CHECK_JS = r"""
(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const out = {};
  // MathJax: wait for the initial typesetting when the page loads it
  const usesMathJax = [...document.scripts].some(s => /mathjax/i.test(s.src || ''));
  out.mathjax = null;
  if (usesMathJax) {
    for (let i = 0; i < 300 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++)
      await sleep(100);
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      try { await MathJax.startup.promise; out.mathjax = MathJax.version; }
      catch (e) { out.mathjax = 'error: ' + e; }
    } else out.mathjax = 'not started';
  }
  // images: load lazy ones too, then wait for all
  const imgs = [...document.images];
  imgs.forEach(i => { if (i.loading === 'lazy') i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => {
    i.addEventListener('load', r); i.addEventListener('error', r); setTimeout(r, 15000); })));
  out.images = imgs.length;
  out.badImages = imgs.filter(i => !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0))
                      .map(i => (i.getAttribute('src') || '').slice(0, 100));
  // equations
  const maths = [...document.querySelectorAll('.math')];
  out.math = maths.length;
  out.mjx = document.querySelectorAll('mjx-container').length;
  out.untypeset = maths.filter(e => !e.querySelector('mjx-container'))
                       .map(e => e.textContent.trim().slice(0, 80));
  out.texErrors = [...document.querySelectorAll('mjx-merror')]
                       .map(e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 100));
  const skip = /^(SCRIPT|STYLE|PRE|CODE|TEXTAREA|NOSCRIPT|MJX-CONTAINER|MJX-ASSISTIVE-MML)$/;
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {acceptNode(n) {
    for (let p = n.parentElement; p; p = p.parentElement) {
      if (skip.test(p.tagName) || p.classList.contains('highlight')) return NodeFilter.FILTER_REJECT;
    }
    return NodeFilter.FILTER_ACCEPT; }});
  let text = '';
  while (walker.nextNode()) text += walker.currentNode.nodeValue + ' ';
  out.rawTex = [];
  for (const re of [/\\\(/g, /\\\[/g, /\$\$/g, /\\begin\{/g, /\$[^$\n]{0,120}\\[A-Za-z]+[^$\n]{0,120}\$/g]) {
    for (const m of text.matchAll(re)) {
      out.rawTex.push(text.slice(Math.max(0, m.index - 40), m.index + 60).replace(/\s+/g, ' '));
      if (out.rawTex.length > 10) break;
    }
  }
  // error output
  out.errorOutputs = [...document.querySelectorAll('.output.traceback, .output.error')]
                       .map(e => e.textContent.trim().slice(0, 160));
  out.errorText = [...document.querySelectorAll('.cell_output, .output')]
      .filter(e => /Traceback \(most recent call last\)|\b\w*Error: /.test(e.textContent))
      .map(e => e.textContent.trim().slice(0, 160));
  // chapter furniture
  out.colab = [...document.querySelectorAll('a[href^="https://colab.research.google.com/"]')]
                .map(a => a.href);
  const cells = [...document.querySelectorAll('div.cell')];
  const figures = c => c ? [...c.querySelectorAll('.cell_output img')]
                           .filter(i => i.naturalWidth > 0 && i.naturalHeight > 0).length : 0;
  const tagged = cells.filter(c => c.classList.contains('tag_static-grid'));
  if (tagged.length) {
    out.grid = {marker: 'tag_static-grid', cells: tagged.length,
                withFigure: tagged.filter(c => figures(c) > 0).length};
  } else {
    const src = c => ((c.querySelector('.cell_input') || {}).textContent || '');
    const live = cells.map((c, i) => [c, i]).filter(([c]) => c.classList.contains('tag_live-panel')
                                                     || /widgets\.\w+_panel\(/.test(src(c)));
    out.grid = {marker: 'cell after the live panel', cells: live.length,
                withFigure: live.filter(([c, i]) => figures(cells[i + 1]) > 0).length};
  }
  out.height = Math.ceil(Math.max(document.documentElement.scrollHeight, document.body.scrollHeight));
  out.title = document.title;
  return out;
})()
"""


def find_chromium() -> str | None:
    env = os.environ.get("CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.split("?")[0] == "/favicon.ico":
            self.send_response(204)
            self.end_headers()
            return
        super().do_GET()


def serve(root: pathlib.Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class DevTools:
    """A minimal Chrome DevTools protocol client on one page target."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=120, suppress_origin=True,
                                              enable_multithread=True)
        self.next_id = 0
        self.events: list[dict] = []

    def _recv(self, timeout: float) -> dict | None:
        import websocket

        self.ws.settimeout(max(timeout, 0.01))
        try:
            return json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            return None

    def send(self, method: str, params: dict | None = None, timeout: float = 120) -> dict:
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self._recv(deadline - time.monotonic())
            if msg is None:
                break
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
        raise TimeoutError(f"no answer to {method} in {timeout:.0f} s")

    def wait_event(self, method: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if any(e["method"] == method for e in self.events):
            return True
        while time.monotonic() < deadline:
            msg = self._recv(deadline - time.monotonic())
            if msg and "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return True
        return False

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = self._recv(deadline - time.monotonic())
            if msg and "method" in msg:
                self.events.append(msg)

    def close(self) -> None:
        self.ws.close()


def launch(chromium: str, profile: pathlib.Path) -> tuple[subprocess.Popen, DevTools]:
    proc = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not (port_file.is_file() and port_file.read_text().strip()):
        if proc.poll() is not None:
            raise RuntimeError(f"{chromium} exited ({proc.returncode}): "
                               f"{proc.stderr.read().decode(errors='replace')[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{chromium} did not open its DevTools port in 60 s")
        time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
    page = next(t for t in targets if t["type"] == "page")
    return proc, DevTools(page["webSocketDebuggerUrl"])


def page_findings(rel: str, res: dict, events: list[dict], base: str) -> list[str]:
    """What is wrong with one page, as sentences (empty when it passes)."""
    bad: list[str] = []
    requests: dict[str, str] = {}
    for e in events:
        m, p = e["method"], e.get("params", {})
        if m == "Network.requestWillBeSent":
            url = p["request"]["url"]
            requests[p["requestId"]] = url
            if not url.startswith((base, "data:", "blob:", "about:")):
                bad.append(f"requests {url[:120]} from the network (the book must be self-contained)")
        elif m == "Network.loadingFailed" and not p.get("canceled"):
            url = requests.get(p["requestId"], "?")
            if not url.endswith("favicon.ico"):
                bad.append(f"failed to load {url[:120]}: {p.get('errorText')}")
        elif m == "Network.responseReceived" and p["response"]["status"] >= 400:
            bad.append(f"HTTP {p['response']['status']} for {p['response']['url'][:120]}")
        elif m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            desc = (d.get("exception") or {}).get("description") or d.get("text")
            bad.append(f"uncaught JavaScript exception: {str(desc)[:300]}")
        elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
            bad.append(f"console.{p['type']}: {args[:300]}")
        elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
            entry = p["entry"]
            if "favicon.ico" not in entry.get("url", ""):
                bad.append(f"browser error ({entry.get('source')}): {entry['text'][:200]} "
                           f"{entry.get('url', '')[:120]}")
    if res.get("evalError") or "math" not in res:
        bad.append(f"the page check itself failed: {res.get('evalError', res)}")
        return bad
    if (res["math"] and res["mathjax"] in (None, "not started")
            or str(res["mathjax"]).startswith("error")):
        bad.append(f"{res['math']} equations but MathJax is {res['mathjax']}")
    if res["untypeset"]:
        bad.append(f"{len(res['untypeset'])} of {res['math']} equations not typeset, e.g. "
                   f"{res['untypeset'][:3]}")
    if res["texErrors"]:
        bad.append(f"MathJax TeX errors: {res['texErrors'][:5]}")
    if res["rawTex"]:
        bad.append(f"raw TeX in the text: {res['rawTex'][:5]}")
    if res["badImages"]:
        bad.append(f"{len(res['badImages'])} of {res['images']} images did not load: "
                   f"{res['badImages'][:5]}")
    if res["errorOutputs"]:
        bad.append(f"error output cells: {res['errorOutputs'][:3]}")
    if res["errorText"]:
        bad.append(f"outputs with a traceback or an error: {res['errorText'][:3]}")
    if rel.startswith("notebooks/"):
        if not res["colab"]:
            bad.append("no Colab launch button (link to colab.research.google.com)")
        elif not any(rel.replace(".html", ".ipynb") in u for u in res["colab"]):
            bad.append(f"the Colab link does not open this notebook: {res['colab']}")
        g = res["grid"]
        if g["withFigure"] < 1:
            bad.append("no static slider grid: tag the cell that draws it `static-grid` "
                       f"(found {g['cells']} candidate cell(s) by '{g['marker']}', "
                       f"{g['withFigure']} with a figure)")
        elif g["withFigure"] < g["cells"]:
            bad.append(f"{g['cells'] - g['withFigure']} of {g['cells']} static-grid cells "
                       f"({g['marker']}) show no figure")
    return list(dict.fromkeys(bad))


def is_redirect(page: pathlib.Path) -> bool:
    """index.html is a bare <meta http-equiv="Refresh"> to the first page: nothing to check."""
    head = page.read_text(errors="replace")[:600]
    return 'http-equiv="Refresh"' in head and "<body" not in head


def check_book(html_root: pathlib.Path, only: list[str] | None = None,
               chromium: str | None = None, log=print) -> dict:
    """Check every page; returns {page: {"problems": [...], "screenshot": path, ...}}."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("Chromium not found (apt-get install chromium)")
    pages = sorted(p.relative_to(html_root).as_posix() for p in html_root.rglob("*.html")
                   if not p.relative_to(html_root).parts[0].startswith("_")
                   and not is_redirect(p))
    if only:
        pages = [p for p in pages if p in only]
    shots = html_root / SCREENSHOT_DIR
    if shots.exists():
        shutil.rmtree(shots)
    shots.mkdir(parents=True)
    server, base = serve(html_root)
    profile = pathlib.Path(tempfile.mkdtemp(prefix="widenets-chromium-"))
    proc, cdp = launch(chromium, profile)
    results: dict[str, dict] = {}
    try:
        version = cdp.send("Browser.getVersion")["product"]
        log(f"{version}: checking {len(pages)} pages of {html_root} served at {base}")
        for domain in ("Page", "Runtime", "Log", "Network"):
            cdp.send(f"{domain}.enable")
        cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
        for rel in pages:
            t0 = time.monotonic()
            cdp.send("Page.navigate", {"url": "about:blank"})
            cdp.drain(0.2)
            cdp.events.clear()
            cdp.send("Page.navigate", {"url": base + rel})
            loaded = cdp.wait_event("Page.loadEventFired", 60)
            try:
                ev = cdp.send("Runtime.evaluate", {"expression": CHECK_JS, "awaitPromise": True,
                                                   "returnByValue": True}, timeout=120)
                res = ev.get("result", {}).get("value") or {
                    "evalError": str(ev.get("exceptionDetails", ev))[:300]}
            except (TimeoutError, RuntimeError) as exc:
                res = {"evalError": str(exc)}
            cdp.drain(0.5)
            problems = page_findings(rel, res, cdp.events, base)
            if not loaded:
                problems.insert(0, "the page did not finish loading in 60 s")
            shot = shots / (rel.removesuffix(".html") + ".png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            try:
                # full page: a viewport as tall as the page (captureBeyondViewport would lay the
                # sticky sidebars out half off-screen), scaled down to at most MAX_SHOT_HEIGHT px
                metrics = cdp.send("Page.getLayoutMetrics")
                height = max(int(metrics["cssContentSize"]["height"]), 1)
                scale = min(1.0, MAX_SHOT_HEIGHT / height)
                cdp.send("Emulation.setDeviceMetricsOverride", {
                    "width": 1280, "height": height, "deviceScaleFactor": scale, "mobile": False})
                cdp.drain(0.5)
                png = cdp.send("Page.captureScreenshot", {"format": "png"})
                cdp.send("Emulation.clearDeviceMetricsOverride")
                shot.write_bytes(base64.b64decode(png["data"]))
            except (TimeoutError, RuntimeError, KeyError) as exc:
                problems.append(f"no screenshot: {exc}")
            results[rel] = {"problems": problems, "screenshot": shot.relative_to(html_root).as_posix(),
                            "seconds": round(time.monotonic() - t0, 1),
                            **{k: res.get(k) for k in ("title", "math", "mjx", "images", "mathjax",
                                                       "grid", "colab")}}
            status = "ok" if not problems else f"{len(problems)} problem(s)"
            log(f"  {rel:40s} {status:14s} {res.get('math', 0) or 0:4d} equations, "
                f"{res.get('images', 0) or 0:3d} images, {results[rel]['seconds']:5.1f} s")
            for p in problems:
                log(f"      - {p}")
    finally:
        cdp.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    write_index(shots, results, version)
    return results


def write_index(shots: pathlib.Path, results: dict, browser: str) -> None:
    (shots / "report.json").write_text(json.dumps(results, indent=1))
    rows = []
    for rel, r in results.items():
        shot = pathlib.PurePosixPath(r["screenshot"]).relative_to(SCREENSHOT_DIR)
        verdict = "passes" if not r["problems"] else "<br>".join(html.escape(p) for p in r["problems"])
        rows.append(f"<tr><td><a href='../{html.escape(rel)}'>{html.escape(rel)}</a></td>"
                    f"<td><a href='{shot}'><img src='{shot}' width='160'></a></td>"
                    f"<td>{r['math'] or 0} equations, {r['images'] or 0} images</td>"
                    f"<td>{verdict}</td></tr>")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    (shots / "index.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>Browser check</title>"
        "<style>body{font-family:sans-serif}td{vertical-align:top;padding:4px 8px}"
        "img{border:1px solid #ccc}</style>"
        f"<h1>Browser check of the built book</h1><p>{html.escape(browser)}, {stamp}: "
        f"{sum(not r['problems'] for r in results.values())} of {len(results)} pages pass. "
        "<a href='../book/status.html'>Back to the status page</a></p>"
        f"<table><tr><th>page</th><th>screenshot</th><th>content</th><th>findings</th></tr>"
        + "".join(rows) + "</table>")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--html", type=pathlib.Path, default=ROOT / "_build" / "html")
    ap.add_argument("--only", nargs="*", help="check only these pages (paths under --html)")
    args = ap.parse_args(argv)
    if not (args.html / "index.html").is_file():
        print(f"no built book in {args.html}: build it first (make book)", file=sys.stderr)
        return 2
    chromium = find_chromium()
    if chromium is None:
        print("Chromium not found: apt-get install chromium", file=sys.stderr)
        return 2
    results = check_book(args.html, args.only, chromium)
    bad = {p: r["problems"] for p, r in results.items() if r["problems"]}
    print(f"{len(results) - len(bad)} of {len(results)} pages pass; screenshots in "
          f"{args.html / SCREENSHOT_DIR}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
