"""The built book, as a reader gets it (run by `make test` after the strict book build).

WIDENETS_BOOK names the build folder (make test: `_build`); without it these tests are
skipped, so that a plain `pytest tests` does not check a stale or missing build.

* the executed copies the build rendered (make test: `_build/chapters/ci/*.ipynb`, named by
  WIDENETS_EXECUTED) ran every code cell, the hidden check cells included, without an error,
  at the expected preset, and every cell that shows a figure has one;
* every HTML page passes scripts/browser_check.py in headless Chromium (JavaScript errors,
  equations typeset by the local MathJax, images, error outputs, each chapter's Colab button
  and static slider grid), and a screenshot of each page is saved under
  `_build/html/_screenshots/`, linked from the status page. Without Chromium the browser
  tests are skipped and `make test` prints a warning.
"""
import json
import os
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BUILD = pathlib.Path(os.environ["WIDENETS_BOOK"]) if os.environ.get("WIDENETS_BOOK") else None
HTML = BUILD / "html" if BUILD else None
# The executed notebooks the build rendered (put into the build's jupyter-cache by
# scripts/build_book.py): make test's (WIDENETS_EXECUTED), else make book's cache at the preset
# (myst-nb writes the unexecuted notebook to jupyter_execute/ in cache mode).
EXECUTED = (pathlib.Path(os.environ["WIDENETS_EXECUTED"]) if os.environ.get("WIDENETS_EXECUTED")
            else BUILD / "chapters" / (os.environ.get("WIDENETS_PRESET") or "cpu")
            if BUILD else None)

pytestmark = pytest.mark.skipif(
    BUILD is None, reason="set WIDENETS_BOOK=<build folder> (make test does) to check the build")

sys.path.insert(0, str(ROOT / "scripts"))


def _pages():
    if HTML is None or not HTML.is_dir():
        return []
    from browser_check import is_redirect

    return sorted(p.relative_to(HTML).as_posix() for p in HTML.rglob("*.html")
                  if not p.relative_to(HTML).parts[0].startswith("_") and not is_redirect(p))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_ran_every_cell_in_the_build(path):
    executed = EXECUTED / path.name
    assert executed.exists(), f"the build did not render {path.name} ({executed} is missing)"
    nb = json.loads(executed.read_text())
    code = [(i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
            and "".join(c["source"]).strip()]
    not_run = [i for i, c in code if c.get("execution_count") is None]
    assert not not_run, f"{path.name}: code cells {not_run} were not executed"
    errors = [(i, o.get("ename")) for i, c in code for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: error outputs in cells {errors}"
    checks = [i for i, c in code if "remove-cell" in c.get("metadata", {}).get("tags", [])
              and "assert" in "".join(c["source"])]
    assert checks, f"{path.name}: no hidden check cell was executed"
    # every cell that shows a figure produced one (a kernel with a non-inline matplotlib
    # backend, e.g. MPLBACKEND=Agg inherited from the test process, draws none)
    no_figure = [i for i, c in code if "plt.show()" in "".join(c["source"])
                 and not {"remove-output", "remove-cell"} & set(c.get("metadata", {}).get("tags", []))
                 and not any("image/png" in o.get("data", {}) for o in c.get("outputs", []))]
    assert not no_figure, f"{path.name}: cells {no_figure} call plt.show() but show no figure"
    preset = os.environ.get("WIDENETS_PRESET")
    if preset:
        text = "".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                       for _, c in code for o in c.get("outputs", []))
        assert f"widenets preset: {preset!r}" in text, \
            f"{path.name} did not run at preset {preset!r} (wn.presets.banner() output missing)"


def test_status_page_links_the_screenshots():
    status = (HTML / "book" / "status.html").read_text()
    assert "../_screenshots/index.html" in status
    assert (HTML / "_screenshots" / "index.html").exists()


def test_status_page_says_how_every_chapter_was_executed():
    """The {chapter-runs} table (scripts/book_assets.py): every chapter, linked, with its preset
    and whether this build executed it or reused an earlier build's copy."""
    status = (HTML / "book" / "status.html").read_text()
    runs = json.loads((BUILD / "chapter_runs.json").read_text())
    assert [r["chapter"] for r in runs["chapters"]] == [f"notebooks/{p.stem}" for p in NOTEBOOKS]
    for p in NOTEBOOKS:
        assert f'href="../notebooks/{p.stem}.html' in status, p.stem
    cells = re.findall(r"<td><p>(executed|reused)</p></td>", status)
    assert len(cells) == len(NOTEBOOKS), cells
    preset = os.environ.get("WIDENETS_PRESET")
    if preset:
        assert status.count(f"<code class=\"docutils literal notranslate\"><span class=\"pre\">"
                            f"{preset}</span></code>") >= len(NOTEBOOKS)


def test_mathjax_is_served_from_the_build():
    from book_assets import mathjax_version

    assert (HTML / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert (HTML / "_static" / "mathjax" / ".version").read_text() == mathjax_version()
    page = (HTML / "book" / "notation.html").read_text()
    # (a rebuild into an existing _build adds Sphinx's cache-busting ?v=<checksum>)
    assert re.search(r'src="\.\./_static/mathjax/tex-chtml\.js(\?v=[0-9a-f]+)?"', page), \
        "notation.html does not load MathJax from the build's _static"
    assert "cdn.jsdelivr.net" not in page and "mathjax@3" not in page


@pytest.fixture(scope="module")
def browser_results():
    from browser_check import check_book, find_chromium

    if find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the book was NOT "
                    "checked in a browser")
    lines = []
    results = check_book(HTML, log=lines.append)
    print("\n".join(lines))
    return results


@pytest.mark.parametrize("page", _pages())
def test_page_in_a_real_browser(page, browser_results):
    res = browser_results[page]
    assert not res["problems"], (f"{page} (screenshot {HTML / res['screenshot']}):\n  - "
                                 + "\n  - ".join(res["problems"]))


def test_every_chapter_page_was_checked(browser_results):
    chapters = {f"notebooks/{p.stem}.html" for p in NOTEBOOKS}
    assert chapters <= set(browser_results), chapters - set(browser_results)
