"""`make lab` (issue 22): JupyterLab starts on notebooks/ with this environment's kernel, the
widget manager and the preset the reader asked for.

The test runs `make lab` itself (with LABFLAGS for a free port, a token and no browser), talks to
the server over its REST API and to a kernel over the Jupyter messaging protocol (websocket),
and shuts both down. The panels are driven in a real browser by another test.
"""
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOKEN = uuid.uuid4().hex

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port, path, method="GET", data=None, timeout=10.0):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=data,
                                 headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
        return r.status, (json.loads(body) if body[:1] in (b"{", b"[") else body.decode())


@pytest.fixture(scope="module")
def lab():
    port = _free_port()
    flags = (f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} "
             f"--ServerApp.port_retries=0 --IdentityProvider.token={TOKEN}")
    env = dict(os.environ, WIDENETS_PRESET="ci", LABFLAGS=flags)
    proc = subprocess.Popen(["make", "--no-print-directory", "-C", str(ROOT), "lab"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                if _get(port, "/api/status", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                out = proc.stdout.read() if proc.poll() is not None else "(still running)"
                pytest.fail(f"make lab did not serve on port {port}:\n{out[-3000:]}")
            time.sleep(0.5)
        yield port
    finally:
        try:
            _get(port, "/api/shutdown", method="POST", data=b"")
            proc.wait(timeout=30)
        except Exception:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=10)
        assert proc.poll() is not None, "the server was not shut down"


def test_lab_serves_the_chapters_with_the_widget_manager(lab):
    status, page = _get(lab, "/lab")
    assert status == 200 and "JupyterLab" in page
    _, contents = _get(lab, "/api/contents")
    names = {item["name"] for item in contents["content"]}
    chapters = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert chapters and chapters <= names, (chapters, names)
    _, ext = _get(lab, "/lab/api/extensions")
    found = {e["name"] for e in (ext["installed"] if isinstance(ext, dict) else ext)}
    # (the widget manager that draws ipywidgets; its name comes normalised or not)
    assert found & {"@jupyter-widgets/jupyterlab-manager", "jupyter-widgets-jupyterlab-manager"}, found
    _, specs = _get(lab, "/api/kernelspecs")
    assert specs["default"] in specs["kernelspecs"]


def _execute(port, kernel_id, code, timeout=120.0):
    """Run ``code`` in the kernel over its websocket; return (stdout, reply status)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from panel_check import execute
    return execute(port, TOKEN, kernel_id, code, timeout)


def test_lab_kernel_is_this_environment_with_the_preset(lab):
    _, kernel = _get(lab, "/api/kernels", method="POST", data=b"{}")
    try:
        out, status = _execute(lab, kernel["id"], "import sys, widenets as wn\n"
                               "print(sys.prefix, wn.presets.name(), wn.__file__)")
        assert status == "ok", out
        prefix, preset, module = out.split()
        assert pathlib.Path(prefix).resolve() == pathlib.Path(sys.prefix).resolve()
        assert preset == "ci"
        assert pathlib.Path(module).resolve().is_relative_to(ROOT / "src")
    finally:
        _get(lab, f"/api/kernels/{kernel['id']}", method="DELETE")
