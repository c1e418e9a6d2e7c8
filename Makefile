# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kpair-installed

.PHONY: demo test lint bench clean

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
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_norm_layers.py

clean:
	rm -rf $(VENV) runs build *.egg-info
