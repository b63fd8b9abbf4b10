# Two commands for a fresh machine:  `make demo`  (the main job)  and  `make test`.
# Both create .venv with everything vtprune needs; torch is pinned to the CPU build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint typecheck check clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile examples/vtprune-example-plugin/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel cython numpy
	$(PIP) install -q -c constraints.txt "$(TORCH)"
	$(PIP) install -q -c constraints.txt -e ".[test,lint]"
	# fast-slic: optional accelerated SLIC; vtprune falls back to scikit-image without it.
	$(PIP) install -q --no-build-isolation fast-slic==0.4.0 \
	  || echo "warning: fast-slic did not build; vtprune will use scikit-image's SLIC"
	touch $(STAMP)

demo: venv
	$(VENV)/bin/vtprune demo

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks examples

typecheck: venv
	$(VENV)/bin/mypy

check: test lint typecheck

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build src/*.egg-info
