"""Repository checks on the chapters: committed without outputs, Colab cell in step, in the TOC."""
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_chapters():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_hidden_check_cells(path):
    nb = json.loads(path.read_text())
    checks = [c for c in nb["cells"] if c["cell_type"] == "code"
              and "remove-cell" in c.get("metadata", {}).get("tags", [])
              and "assert" in "".join(c["source"])]
    assert checks, f"{path.name} has no hidden (remove-cell) check cell with an assertion"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_in_the_table_of_contents(path):
    toc = (ROOT / "_toc.yml").read_text()
    assert f"notebooks/{path.stem}" in toc, f"{path.name} is missing from _toc.yml"


def test_colab_cells_match_the_repository_url():
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "colab_cell.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_a_static_slider_grid(path):
    """The rendered book cannot run the live sliders: each chapter shows a grid of slider values
    in a cell tagged `static-grid` (the browser check looks for its figure)."""
    nb = json.loads(path.read_text())
    grids = [c for c in nb["cells"] if c["cell_type"] == "code"
             and "static-grid" in c.get("metadata", {}).get("tags", [])]
    assert grids, f"{path.name}: tag the cell that draws the static slider grid `static-grid`"
