"""Every chapter's live panel in a real browser (issue 22): scripts/panel_check.py opens each
panel's cells in JupyterLab in headless Chromium, runs them with JupyterLab's "Run All", drags
every slider and clicks every toggle, and checks that the figure changes, that the browser shows
the kernel's values, that the panel shows what its static drawing function gives for them, that
no error reaches the notebook or the browser's console, and that the kernels and the server are
shut down. Skipped, loudly, without Chromium (like the book's browser check).

The redraw table goes to ``_build/panel_redraws.txt`` (make test prints it at the end).
"""
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def test_every_panel_works_in_jupyterlab_in_a_browser():
    import panel_check
    from browser_check import find_chromium

    if find_chromium() is None:
        pytest.skip("WARNING: Chromium is not installed: the live panels are NOT checked in a "
                    "browser (apt-get install chromium)")
    chapters = panel_check.chapters_with_panels()
    assert len(chapters) >= 7, [p.name for p in chapters]
    # without the panels' preparation of nearby settings (a minute or two of compiling in the
    # background at ci; tests/test_widgets.py checks it): here a redraw that changes a shape
    # compiles, so the times are not the reader's; `--preset cpu --moves 3` measures those
    results = panel_check.run("ci", prepare=False)
    report = panel_check.table(results, "ci")
    out = ROOT / "_build" / "panel_redraws.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(report + "\n")
    problems = [f"{r['chapter']}: {p}" for r in results for p in r["problems"]]
    assert not problems, "\n".join(problems) + "\n\n" + report
    names = {r["chapter"] for r in results}
    assert names == {p.stem for p in chapters}, names
    for r in results:
        # every control was moved and redrew the figure
        assert {x["control"] for x in r["redraws"]} == set(r["controls"]) and r["controls"], r
