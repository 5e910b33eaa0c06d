# Two commands for a fresh machine (both work offline once the packages are installed):
#   make book   set up .venv, execute every chapter at the `cpu` preset (two at a time, with
#               progress lines; cached in _build/chapters/: a rebuild executes only what
#               changed), build _build/html
#   make test   set up .venv; unit tests and every chapter executed once (`ci` preset), side by
#               side under pytest-xdist, with every live panel driven in JupyterLab in headless
#               Chromium (tests/test_panels.py); the strict book build rendering those executed
#               chapters; then the built book checked, in headless Chromium when installed
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
JB      := $(VENV)/bin/jupyter-book
JBFLAGS := -W -n --keep-going
JOBS    ?= 2
# make test: the chapters' executed copies (rendered by the build instead of executing again;
# stamped like make book's cache, so `WIDENETS_PRESET=ci make book` afterwards reuses them)
EXECUTED := _build/chapters/ci
CI_ENV  := WIDENETS_PRESET=ci JAX_PLATFORMS=cpu
# make test runs two pytest-xdist workers (and the chapters' kernels) side by side: each worker
# gets a core of its own (tests/conftest.py), so that XLA's thread pools do not fight over the
# cores (Chapter 4 took 1117 s instead of ~150 s next to the unit tests without it)
PIN     := WIDENETS_PIN_WORKERS=1

export TF_CPP_MIN_LOG_LEVEL := 3
# JAX's persistent compilation cache stays OFF (JAX_COMPILATION_CACHE_DIR unset): with JAX 0.5.3
# on the CPU, a program loaded from it can return wrong numbers -- the deep linear propagator's
# `_deep_linear_solve` returned N Var Delta(1) = 0.0 instead of 1.3164 when read back from the
# cache in a second process (Chapter 5b's first-step check failed in CI's `make book` that way).
# Never enable it for these chapters without that check passing warm.
export TF_ENABLE_ONEDNN_OPTS := 0
export PYTHONWARNINGS := ignore::DeprecationWarning

.PHONY: install book test lab test-units-and-chapters test-build test-book clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

# the same as `jupyter-book build . -W -n --keep-going`, with the chapters executed by
# scripts/chapters.py (cached; no per-cell timeout, a stall watchdog; progress lines)
book: install
	WIDENETS_PRESET=$${WIDENETS_PRESET:-cpu} JOBS=$(JOBS) $(PY) scripts/build_book.py

# read the chapters live: JupyterLab (pinned with the rest) on notebooks/, with this
# environment's kernel, so the sliders work; the preset defaults to cpu, as for `make book`
# (`WIDENETS_PRESET=ci make lab` for the small sizes); LABFLAGS passes more options, e.g.
# LABFLAGS="--no-browser --port=8899"
# (as root, in a container, JupyterLab needs --allow-root)
lab: install
	WIDENETS_PRESET=$${WIDENETS_PRESET:-cpu} $(VENV)/bin/jupyter lab --notebook-dir=notebooks \
	  $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LABFLAGS)

test: install
	@$(MAKE) --no-print-directory test-units-and-chapters
	@$(MAKE) --no-print-directory test-build
	@$(MAKE) --no-print-directory test-book
	@cat _build/panel_redraws.txt 2>/dev/null || true

# 1. unit tests and the chapters: each chapter is executed once, its hidden checks included.
#    tests/test_chapters.py comes first and --dist loadgroup hands out tests one at a time in
#    turn (the default hands each worker a run of consecutive tests: all the chapters to one),
#    so the chapters start at once on both workers and the unit tests fill in around them
test-units-and-chapters:
	rm -rf $(EXECUTED) _build/panel_redraws.txt
	$(CI_ENV) $(PIN) WIDENETS_EXECUTED=$(EXECUTED) $(PY) -m pytest -q -p no:cacheprovider \
	  -n $(JOBS) --dist loadgroup --durations=31 tests/test_chapters.py tests/test_panels.py tests

# 2. the strict book build renders those executed copies (it never executes a notebook)
test-build:
	$(CI_ENV) $(PY) scripts/build_book.py --executed $(EXECUTED)

# 3. the built book: executed copies complete, every page in headless Chromium
test-book:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo; echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; \
	  echo "!!! WARNING: Chromium is not installed: the built book is NOT checked in a   !!!"; \
	  echo "!!! browser (equations, JavaScript errors, figures). apt-get install chromium !!!"; \
	  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; echo; }
	$(CI_ENV) WIDENETS_BOOK=_build WIDENETS_EXECUTED=$(EXECUTED) $(PY) -m pytest -q -p no:cacheprovider -rs tests/test_book.py

clean:
	rm -rf _build
