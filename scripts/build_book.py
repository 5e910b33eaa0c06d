#!/usr/bin/env python
"""Build the book like `jupyter-book build . -W -n --keep-going`, with a few settings overridden.

`make book` builds with it too: the chapters are executed by myst-nb (force mode, as in
`_config.yml`) with nbclient's Output-widget support off (see scripts/nbexec.py: it lost the
`execute_reply` of the live-panel cells). `make test` executes every chapter once, in tests/test_chapters.py, and saves the executed
copies; `--executed DIR` then renders those copies instead of executing the chapters again:
they are put into a fresh jupyter-cache (`<path-output>/.jupyter_cache_executed`, separate
from the cache of `make book`) and the build runs in `cache` mode with execution forbidden,
so a chapter missing from DIR, or edited since it was executed, fails the build instead of
being executed a second time. `_config.yml` stays as `make book` uses it.

    python scripts/build_book.py --executed _build/executed   # what make test runs
    python scripts/build_book.py --execute off                # render without executing
"""
from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def toc_notebooks() -> list[pathlib.Path]:
    import yaml

    def files(node):
        if isinstance(node, dict):
            if "file" in node:
                yield node["file"]
            for v in node.values():
                yield from files(v)
        elif isinstance(node, list):
            for v in node:
                yield from files(v)

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [ROOT / (f + ".ipynb") for f in files(toc) if (ROOT / (f + ".ipynb")).exists()]


def fill_cache(executed: pathlib.Path, cache_path: pathlib.Path) -> int:
    """Put the executed copy of every notebook of the TOC into a fresh jupyter-cache.

    Each copy's outputs are merged into the committed notebook (so the cache key, a hash of
    the code cells and their metadata, is the committed notebook's); a copy whose code differs
    from the committed notebook is refused."""
    import shutil

    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    if cache_path.exists():
        shutil.rmtree(cache_path)
    cache = get_cache(str(cache_path))
    problems, n = [], 0
    for src in toc_notebooks():
        done = executed / src.name
        if not done.exists():
            problems.append(f"{src.relative_to(ROOT)} was not executed by the tests "
                            f"(no {done}; did its test in tests/test_chapters.py fail?)")
            continue
        nb = nbformat.read(src, as_version=4)
        ran = nbformat.read(done, as_version=4)
        if [c.source for c in nb.cells] != [c.source for c in ran.cells]:
            problems.append(f"{src.relative_to(ROOT)} changed after it was executed: rerun make test")
            continue
        for cell, run in zip(nb.cells, ran.cells):
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = run.outputs, run.execution_count
        for key in ("language_info", "widgets"):
            if key in ran.metadata:
                nb.metadata[key] = ran.metadata[key]
        seconds = ran.metadata.get("widenets", {}).get("execution_seconds")
        cache.cache_notebook_bundle(CacheBundleIn(nb, str(src), data={"execution_seconds": seconds}),
                                    check_validity=False, overwrite=True)
        n += 1
    if problems:
        raise ValueError("\n  ".join(["not every chapter can be rendered:"] + problems))
    return n


def forbid_execution() -> None:
    """Make myst-nb's cache mode fail instead of executing a notebook missing from the cache."""
    import myst_nb.core.execute.cache as mystnb_cache

    def refuse(nb, cwd=None, **kwargs):
        raise RuntimeError("a notebook is not in the cache of executed notebooks: the book "
                           "build of make test never executes (see scripts/build_book.py)")

    mystnb_cache.single_nb_execution = refuse


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timeout", type=int, help="per-cell execution timeout in seconds "
                    "(default: _config.yml's execute.timeout)")
    ap.add_argument("--execute", choices=["force", "cache", "auto", "off"],
                    help="notebook execution mode (default: _config.yml's)")
    ap.add_argument("--jobs", type=int, default=1, help="Sphinx processes (default 1)")
    ap.add_argument("--path-output", type=pathlib.Path, default=ROOT / "_build",
                    help="build folder (default _build); HTML goes to its html/")
    ap.add_argument("--no-strict", action="store_true", help="no -W -n --keep-going")
    ap.add_argument("--executed", type=pathlib.Path, metavar="DIR",
                    help="render the executed notebooks in DIR (named like notebooks/*.ipynb); "
                    "never execute")
    args = ap.parse_args(argv)

    from jupyter_book.sphinx import build_sphinx

    sys.path.insert(0, str(ROOT / "scripts"))
    from nbexec import quiet_output_widgets

    quiet_output_widgets()      # no lost execute_reply in the live-panel cells (scripts/nbexec.py)

    overrides: dict = {"external_toc_path": (ROOT / "_toc.yml").as_posix(),
                       "latex_individualpages": False}
    if not args.no_strict:
        overrides["nitpicky"] = True
    if args.timeout is not None:
        overrides["nb_execution_timeout"] = args.timeout
    if args.execute is not None:
        overrides["nb_execution_mode"] = args.execute
    if args.executed is not None:
        cache = args.path_output.resolve() / ".jupyter_cache_executed"
        try:
            n = fill_cache(args.executed, cache)
        except ValueError as exc:
            print(f"The book build failed: {exc}", file=sys.stderr)
            return 1
        print(f"Rendering {n} notebooks executed by the tests ({args.executed})", flush=True)
        overrides.update(nb_execution_mode="cache", nb_execution_cache_path=str(cache))
        forbid_execution()
    out = args.path_output.resolve() / "html"
    print(f"Building {ROOT} -> {out} (overrides: "
          f"{ {k: v for k, v in overrides.items() if k.startswith('nb_')} })", flush=True)
    result = build_sphinx(
        ROOT, out, use_external_toc=True, noconfig=True, path_config=ROOT / "_config.yml",
        confoverrides=overrides, builder="html", warningiserror=not args.no_strict,
        keep_going=not args.no_strict, jobs=args.jobs)
    if isinstance(result, BaseException):
        print(f"The book build failed: {type(result).__name__}: {result}", file=sys.stderr)
        return 1
    if result:
        print(f"The book build failed (status {result}); see the messages above.",
              file=sys.stderr)
        return int(result)
    print(f"Book built: open {out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
