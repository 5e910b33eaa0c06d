"""Sphinx extension: the book's pages load no script from the network and raise no error.

1. MathJax is served from the built book, so that equations render offline.

The pinned MathJax 3 comes from the `django-static-mathjax` wheel (requirements.txt), which
ships MathJax's static files (its `package.json` names the version). After an HTML build this
extension copies MathJax's `es5` component folder -- the `tex-chtml.js` bundle it loads, the
TeX extensions, the CHTML fonts, menu and accessibility components it loads on demand, less
the other combined bundles -- to `_static/mathjax/`; `_config.yml` names the bundle in
`mathjax_path` (`mathjax/tex-chtml.js`, relative to `_static`).

2. Inline scripts are written once per page. sphinx-thebe 0.3.1 registers its inline
configuration script (`const THEBE_JS_URL = ...`) in a way that Sphinx 7.4 writes twice into
every page, and the second copy throws `SyntaxError: Identifier 'THEBE_JS_URL' has already
been declared` in the reader's browser; identical inline scripts are dropped after the first.

3. `_screenshots/index.html` is reset to a placeholder at every build: the status page links
to it, and scripts/browser_check.py (run by `make test` after the build) replaces it with the
screenshots of every page and its findings, so the link never points at an older build's.

4. The `{chapter-runs}` directive (the status page) tabulates how each chapter of this build
was executed: at which preset, when, in how long, its slowest cell, and whether this build
executed it or reused the copy of an earlier one (scripts/chapters.py's cache). It reads
`chapter_runs.json`, which scripts/build_book.py writes beside the HTML folder before the
build; the page holding it is re-read at every build.

Enabled from `_config.yml` under `sphinx: local_extensions`; scripts/browser_check.py checks
the first three in a real browser.
"""
from __future__ import annotations

import importlib.util
import json
import pathlib
import shutil

from sphinx.errors import ExtensionError
from sphinx.util.docutils import SphinxDirective

# combined bundles we do not load (each 1-2 MB); everything else in es5/ is copied
_SKIP = {"mml-chtml.js", "mml-svg.js", "tex-svg.js", "tex-svg-full.js", "tex-mml-svg.js",
         "tex-chtml-full.js", "tex-chtml-full-speech.js", "node-main.js"}


def mathjax_root() -> pathlib.Path:
    """The installed MathJax distribution (the folder holding package.json and es5/)."""
    spec = importlib.util.find_spec("mathjax")
    root = (pathlib.Path(spec.origin).parent / "static" / "mathjax"
            if spec and spec.origin else None)
    if root is None or not (root / "es5" / "tex-chtml.js").is_file():
        raise ExtensionError(
            "MathJax is not installed: the book serves it from the django-static-mathjax "
            "wheel pinned in requirements.txt (run `make install`)")
    return root


def mathjax_version() -> str:
    return json.loads((mathjax_root() / "package.json").read_text())["version"]


def _check(app, config) -> None:
    root = mathjax_root()          # fail early, before any notebook is executed
    if not str(config.mathjax_path).startswith("mathjax/"):
        raise ExtensionError(f"book_mathjax: mathjax_path is {config.mathjax_path!r}; set it "
                             "to 'mathjax/tex-chtml.js' in _config.yml to use the local copy")
    if not (root / "es5" / config.mathjax_path.removeprefix("mathjax/")).is_file():
        raise ExtensionError(f"book_mathjax: {config.mathjax_path} is not in {root / 'es5'}")


PLACEHOLDER = ("<!doctype html><meta charset='utf-8'><title>Browser check</title>"
               "<p>No browser check has run on this build yet: <code>make test</code> runs "
               "<code>scripts/browser_check.py</code> after building the book, which puts a "
               "screenshot of every page and its findings here. "
               "<a href='../book/status.html'>Back to the status page</a></p>")


def _reset_screenshots(outdir: pathlib.Path) -> None:
    shots = outdir / "_screenshots"
    if shots.exists():
        shutil.rmtree(shots)
    shots.mkdir(parents=True)
    (shots / "index.html").write_text(PLACEHOLDER)


def _copy(app, exc) -> None:
    if exc is not None or app.builder.format != "html":
        return
    _reset_screenshots(pathlib.Path(app.outdir))
    root = mathjax_root()
    dest = pathlib.Path(app.outdir) / "_static" / "mathjax"
    stamp = dest / ".version"
    version = mathjax_version()
    if stamp.is_file() and stamp.read_text() == version:
        return
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(root / "es5", dest, ignore=lambda d, names: [n for n in names if n in _SKIP])
    shutil.copy(root / "LICENSE", dest / "LICENSE")
    stamp.write_text(version)


def _dedupe_inline_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, keep = set(), []
    for js in scripts:
        body = getattr(js, "attributes", {}).get("body") if not getattr(js, "filename", None) else None
        if body is not None:
            if body in seen:
                continue
            seen.add(body)
        keep.append(js)
    scripts[:] = keep


RUNS_FILE = "chapter_runs.json"


def _runs_path(app) -> pathlib.Path:
    return pathlib.Path(app.outdir).parent / RUNS_FILE


class ChapterRuns(SphinxDirective):
    """A table of how each chapter of this build was executed (see the module docstring)."""

    def run(self):
        self.env.metadata[self.env.docname]["widenets_chapter_runs"] = True
        path = _runs_path(self.env.app)
        try:
            runs = json.loads(path.read_text())
        except (OSError, ValueError):
            runs = None
        if not runs or not runs.get("chapters"):
            text = ["This build rendered the chapters without executing them "
                    "(`scripts/build_book.py --execute off`)."]
        else:
            how = {"book": "`make book`", "test": "`make test`"}.get(runs.get("by"), "the build")
            text = [f"Built by {how} on {runs['built_at'].replace('T', ' ')}.", "",
                    "| chapter | preset | this build | executed on | run time | slowest cell |",
                    "|---|---|---|---|---|---|"]
            for r in runs["chapters"]:
                secs = f"{r['seconds']:.0f} s" if r.get("seconds") is not None else ""
                slow = (f"cell {r['slowest'][0]}: {r['slowest'][1]:.0f} s"
                        if r.get("slowest") else "")
                when = (r.get("executed_at") or "").replace("T", " ")
                doc = "/" + r["chapter"]
                text.append(f"| {{doc}}`{doc}` | `{r['preset']}` | "
                            f"{'reused' if r['reused'] else 'executed'} | {when} | {secs} | "
                            f"{slow} |")
        return self.parse_text_to_nodes("\n".join(text))


def _always_reread(app, env, added, changed, removed):
    """The page with the {chapter-runs} table is re-read at every build (its data changes)."""
    return [doc for doc, meta in env.metadata.items() if meta.get("widenets_chapter_runs")]


def setup(app):
    app.add_directive("chapter-runs", ChapterRuns)
    app.connect("env-get-outdated", _always_reread)
    app.connect("config-inited", _check)
    app.connect("html-page-context", _dedupe_inline_scripts, priority=900)
    app.connect("build-finished", _copy)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
