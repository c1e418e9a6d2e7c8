# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kpair-installed

.PHONY: demo test lint imports import-tree docs figures bench clean

# The editable install's build (setuptools, in pip's subprocess, which reads
# PYTHONWARNINGS) ends with an "Editable installation." notice: "be careful
# with folders in your working directory with the same name as your
# package". Here the folder `kpair/` is the package itself; nothing to do.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" \
		$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kpair train --norm per-domain --width-multiplier 0.25 --epochs 5 --out runs/demo

# The docs build strict before the tests (tests/docs runs their examples).
# Two workers: most of a test's time is single-threaded graph tracing.
test: $(STAMP) imports docs
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadgroup

lint: $(STAMP) imports
	$(BIN)/ruff check .

# import-linter's contracts (pyproject.toml): every import points down.
# It reads packages from disk and finds only what lies under kpair/, while
# layers/ and tuning/ install as kpair.layers and kpair.tuning; so it reads
# a tree of links laid out as installed.
# The documentation's API reference (mkdocstrings) reads the same tree.
IMPORT_TREE := build/import-tree
import-tree:
	rm -rf $(IMPORT_TREE) && mkdir -p $(IMPORT_TREE)/kpair
	ln -s $(CURDIR)/kpair/* $(IMPORT_TREE)/kpair/
	ln -s $(CURDIR)/layers $(IMPORT_TREE)/kpair/layers
	ln -s $(CURDIR)/tuning $(IMPORT_TREE)/kpair/tuning

imports: $(STAMP) import-tree
	cd $(IMPORT_TREE) && PYTHONPATH=. $(CURDIR)/$(BIN)/lint-imports --no-cache \
		--no-logo $(CURDIR)/pyproject.toml

# The documentation site (mkdocs.yml), strict: a broken link, a missing page
# or an API reference mkdocstrings cannot resolve fails it. The command and
# API references are generated from the parser and the docstrings
# (docs/hooks/). NO_MKDOCS_2_WARNING: Material's banner on its own future.
docs: $(STAMP) import-tree
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

# The figures the docs include (docs/figures/*.md), printed by scripts at the
# current commit; FIGURES names some of them (default: all).
FIGURES ?=
figures: $(STAMP)
	$(BIN)/python benchmarks/figures.py $(FIGURES)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_norm_layers.py

clean:
	rm -rf $(VENV) runs build *.egg-info
