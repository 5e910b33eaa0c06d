# Two commands for a fresh machine (both work offline once the packages are installed):
#   make book   set up .venv, execute every chapter at the `cpu` preset, build _build/html
#   make test   set up .venv, run the unit tests and every notebook under nbval (`ci` preset),
#               then the strict book build, so a broken reference or check fails too
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
JB      := $(VENV)/bin/jupyter-book
JBFLAGS := -W -n --keep-going

export TF_CPP_MIN_LOG_LEVEL := 3
export TF_ENABLE_ONEDNN_OPTS := 0
export PYTHONWARNINGS := ignore::DeprecationWarning

.PHONY: install book test unit nbval book-strict clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

book: install
	WIDENETS_PRESET=$${WIDENETS_PRESET:-cpu} $(JB) build . $(JBFLAGS)
	@echo "Book built: open _build/html/index.html"

test: install
	WIDENETS_PRESET=ci JAX_PLATFORMS=cpu $(PY) -m pytest -q -p no:cacheprovider tests \
	  --nbval-lax --nbval-cell-timeout=600 notebooks
	WIDENETS_PRESET=ci JAX_PLATFORMS=cpu $(JB) build . $(JBFLAGS)

clean:
	rm -rf _build
