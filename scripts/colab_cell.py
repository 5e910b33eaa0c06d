"""Keep every notebook's first code cell (the Colab set-up) in step with _config.yml.

The repository address lives in one place, ``repository.url`` in ``_config.yml`` (the book's
launch buttons read it there too); this script writes the Colab cell from it.

    python scripts/colab_cell.py --write   # rewrite the cell in notebooks/*.ipynb
    python scripts/colab_cell.py --check   # exit 1 if a notebook's cell is out of date
"""
from __future__ import annotations

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
MARKER = "# Colab set-up"


def repository_url() -> str:
    text = (ROOT / "_config.yml").read_text()
    m = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", text, flags=re.M)
    if not m:
        raise SystemExit("_config.yml has no repository.url")
    return m.group(1)


def cell_source(url: str | None = None) -> str:
    url = url or repository_url()
    reqs = ROOT / "pyproject.toml"
    jax = re.search(r'"jax>=([0-9.]+)', reqs.read_text()).group(1)
    nt = re.search(r'"neural-tangents>=([0-9.]+)', reqs.read_text()).group(1)
    return f'''{MARKER}: runs only on Google Colab. It installs the pinned JAX (CUDA build),
# neural-tangents and widenets from {url}, then prints the device.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "jax[cuda12]=={jax}", "neural-tangents=={nt}",
                    "widenets @ git+{url}"], check=True)
    import jax

    print("JAX", jax.__version__, "devices:", jax.devices())'''


def notebooks():
    return sorted((ROOT / "notebooks").glob("*.ipynb"))


def main(argv):
    import nbformat
    want = cell_source()
    stale = []
    for path in notebooks():
        nb = nbformat.read(path, as_version=4)
        first = next((c for c in nb.cells if c.cell_type == "code"), None)
        if first is None or not first.source.startswith(MARKER):
            stale.append(f"{path.name}: first code cell is not the Colab set-up cell")
            continue
        if first.source != want:
            if "--write" in argv:
                first.source = want
                nbformat.write(nb, path)
            else:
                stale.append(f"{path.name}: Colab cell differs from scripts/colab_cell.py")
    if stale:
        print("\n".join(stale))
        print("run: python scripts/colab_cell.py --write")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
