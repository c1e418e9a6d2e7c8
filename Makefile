# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kpair-installed

.PHONY: demo test lint imports bench clean

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

# Two workers: most of a test's time is single-threaded graph tracing.
test: $(STAMP) imports
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadgroup

lint: $(STAMP) imports
	$(BIN)/ruff check .

# import-linter's contracts (pyproject.toml): every import points down.
# It reads packages from disk and finds only what lies under kpair/, while
# layers/ and tuning/ install as kpair.layers and kpair.tuning; so it reads
# a tree of links laid out as installed.
IMPORT_TREE := build/import-tree
imports: $(STAMP)
	rm -rf $(IMPORT_TREE) && mkdir -p $(IMPORT_TREE)/kpair
	ln -s $(CURDIR)/kpair/* $(IMPORT_TREE)/kpair/
	ln -s $(CURDIR)/layers $(IMPORT_TREE)/kpair/layers
	ln -s $(CURDIR)/tuning $(IMPORT_TREE)/kpair/tuning
	cd $(IMPORT_TREE) && PYTHONPATH=. $(CURDIR)/$(BIN)/lint-imports --no-cache \
		--no-logo $(CURDIR)/pyproject.toml

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_norm_layers.py

clean:
	rm -rf $(VENV) runs build *.egg-info
