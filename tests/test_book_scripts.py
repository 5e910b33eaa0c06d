"""`make book`'s chapter runner (scripts/chapters.py) and executor (scripts/nbexec.py), on a
miniature book of two tiny notebooks in a temporary folder: what is executed, what is reused,
what a reader sees while it runs, and what a failure says."""
import json
import os
import pathlib
import subprocess
import sys

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import chapters  # noqa: E402
import nbexec  # noqa: E402


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def book(tmp_path, monkeypatch):
    """A miniature repository: _toc.yml with two chapters, a package file, requirements.txt."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "src" / "widenets").mkdir(parents=True)
    (tmp_path / "src" / "widenets" / "core.py").write_text("X = 1\n")
    (tmp_path / "requirements.txt").write_text("jax==0.5.3\n")
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nchapters:\n  - file: notebooks/a\n  - file: notebooks/b\n")
    _notebook(tmp_path / "notebooks" / "a.ipynb", "x = 1 + 1", "import time\ntime.sleep(1.2)")
    _notebook(tmp_path / "notebooks" / "b.ipynb", "print('b')")
    monkeypatch.setattr(chapters, "ROOT", tmp_path)
    monkeypatch.setattr(chapters, "CHAPTERS", tmp_path / "_build" / "chapters")
    return tmp_path


def test_chapters_are_executed_once_then_reused_until_something_they_depend_on_changes(
        book, capfd):
    run = lambda preset="ci": chapters.execute_chapters(preset, jobs=2, slow=1.0)
    plan, failures = run()
    out = capfd.readouterr().out
    assert not failures
    assert not any(c.reused for c in plan)
    # progress: each chapter k of n starts and ends, the slow cell is named, with the preset
    assert "[ci " in out and "chapter 1/2 a: started" in out and "chapter 2/2 b: started" in out
    assert "chapter 1/2 a: cell 1 'import time'" in out and "chapter 2/2 b: done in" in out
    copy = book / "_build" / "chapters" / "ci" / "a.ipynb"
    rec = chapters.record(copy)
    assert rec["preset"] == "ci" and rec["key"] == chapters.chapter_key(
        book / "notebooks" / "a.ipynb", "ci")
    assert rec["cell_seconds"]["1"] >= 1.2
    assert json.loads(copy.read_text())["cells"][0]["execution_count"] == 1

    plan, _ = run()                                         # nothing changed: all reused
    assert all(c.reused for c in plan)
    assert "reused" in capfd.readouterr().out

    _notebook(book / "notebooks" / "b.ipynb", "print('b, edited')")      # one chapter edited
    plan, _ = run()
    assert [c.reused for c in plan] == [True, False]

    # the package or the pinned stack changed: every chapter's key changes (reuse is key
    # equality, checked above), and the next run executes them all
    key = lambda: chapters.chapter_key(book / "notebooks" / "a.ipynb", "ci")
    before = key()
    (book / "src" / "widenets" / "core.py").write_text("X = 2\n")
    after_package = key()
    (book / "requirements.txt").write_text("jax==0.5.4\n")
    assert len({before, after_package, key()}) == 3
    assert [c.reused for c in run()[0]] == [False, False]
    assert [c.reused for c in run("cpu")[0]] == [False, False]         # another preset
    assert [c.reused for c in run("ci")[0]] == [True, True]            # ci's copies are kept


def test_a_failing_chapter_is_named_with_its_cell_and_error_and_the_others_still_run(
        book, capfd):
    _notebook(book / "notebooks" / "a.ipynb", "x = 1",
              "# CHECK: the claim\nassert x == 2, f'x is {x}'")
    plan, failures = chapters.execute_chapters("ci", jobs=1)
    captured = capfd.readouterr()
    assert failures == ["chapter 1/2 a"]
    assert "chapter 1/2 a, cell 1 ('# CHECK: the claim')" in captured.err
    assert "AssertionError: x is 1" in captured.err
    assert chapters.record(book / "_build" / "chapters" / "ci" / "b.ipynb")["key"]   # b ran
    assert not (book / "_build" / "chapters" / "ci" / "a.ipynb").exists()


def test_a_long_cell_reports_that_it_is_still_running_and_has_no_timeout(tmp_path):
    nb = tmp_path / "slow.ipynb"
    _notebook(nb, "import time\ntime.sleep(5)")
    lines = []
    res = nbexec.execute(nb, timeout=None, idle=60, heartbeat=2, name="chapter 9/9 slow",
                         log=lines.append)
    assert res.status == "ok", res.message
    assert any("chapter 9/9 slow, cell 0 ('import time') still running after" in ln
               for ln in lines), lines


def test_the_prelude_runs_first_and_is_not_kept(tmp_path):
    nb = tmp_path / "p.ipynb"
    _notebook(nb, "assert PRELUDE_RAN == 42")
    res = nbexec.execute(nb, timeout=60, idle=60, prelude="PRELUDE_RAN = 42", log=print)
    assert res.status == "ok", res.message
    assert len(res.nb.cells) == 1 and list(res.cell_seconds) == [0]


def test_make_book_executes_the_default_preset_and_ci_runs_it():
    make = (ROOT / "Makefile").read_text()
    assert "WIDENETS_PRESET=$${WIDENETS_PRESET:-cpu}" in make
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("make test") < ci.index("make book")


def test_the_cli_fails_with_the_chapter_named(book, monkeypatch):
    """The child process of a chapter exits non-zero and names the chapter on stderr."""
    _notebook(book / "notebooks" / "b.ipynb", "1/0")
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chapters.py"), "--child",
         str(book / "notebooks" / "b.ipynb"), "--out", str(book / "out.ipynb"), "--key", "k",
         "--preset", "ci", "--label", "chapter 2/2 b", "--started", "0"],
        capture_output=True, text=True, env=dict(os.environ, WIDENETS_PRESET="ci"))
    assert res.returncode == 1
    assert "chapter 2/2 b, cell 0 ('1/0')" in res.stderr and "ZeroDivisionError" in res.stderr
    assert not (book / "out.ipynb").exists()
