# Two commands for a fresh machine:  `make demo`  (the main job)  and  `make test`.
# Both create .venv with everything vtprune needs; torch is pinned to the CPU build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-oldest test-newest test-versions test-lmms lint typecheck check clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile examples/vtprune-example-plugin/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel cython numpy
	$(PIP) install -q -c constraints.txt "$(TORCH)"
	$(PIP) install -q -c constraints.txt -e ".[test,lint,sam2ref]"
	# sam2: Meta's SAM 2, the reference the Sa2VA conversion is tested against. Its declared
	# dependencies pull torchvision (which replaces the CPU torch), so it installs without
	# them; the two it imports (hydra-core, iopath) are in [sam2ref]. No CUDA extension.
	SAM2_BUILD_CUDA=0 $(PIP) install -q --no-deps --no-build-isolation -c constraints.txt sam2==1.1.0
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

# The ends of the dependency range pyproject.toml declares, each in its own venv with the
# whole suite: declared = tested (docs/adapters.md, "Supported versions"). Everything not
# pinned here is whatever the resolver picks for that pin today.
PINS_oldest := torch==2.13.0 transformers==5.0.0
PINS_newest := torch==2.14.1 transformers==5.24.0

.venv-%/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv .venv-$*
	.venv-$*/bin/python -m pip install -q --upgrade pip setuptools wheel cython numpy
	.venv-$*/bin/python -m pip install -q $(PINS_$*)
	.venv-$*/bin/python -m pip install -q -e ".[test,sam2ref]" $(PINS_$*)
	SAM2_BUILD_CUDA=0 .venv-$*/bin/python -m pip install -q --no-deps --no-build-isolation sam2==1.1.0
	.venv-$*/bin/python -m pip install -q --no-build-isolation fast-slic==0.4.0 \
	  || echo "warning: fast-slic did not build; vtprune will use scikit-image's SLIC"
	.venv-$*/bin/python -c "import torch, transformers; print('versions:', torch.__version__, transformers.__version__)"
	touch $@

test-oldest: .venv-oldest/.installed
	.venv-oldest/bin/python -m pytest -q -p no:cacheprovider

test-newest: .venv-newest/.installed
	.venv-newest/bin/python -m pytest -q -p no:cacheprovider

test-versions: test-oldest test-newest

# The lmms-eval plugin (extra [lmms]) in its own venv: lmms-eval pulls torchvision, which
# imports only beside torch 2.14, so this env is pinned whole by constraints-lmms.txt
# (lmms-eval, torch, torchvision, transformers and everything they pull). It runs the
# plugin's tests only; the default venv has no lmms-eval and those tests skip there.
.venv-lmms/.installed: pyproject.toml Makefile constraints-lmms.txt
	$(PYTHON) -m venv .venv-lmms
	.venv-lmms/bin/python -m pip install -q --upgrade pip setuptools wheel
	.venv-lmms/bin/python -m pip install -q -c constraints-lmms.txt -e ".[test,lmms]"
	.venv-lmms/bin/python -c "import lmms_eval, torch, torchvision, transformers; print('versions:', torch.__version__, torchvision.__version__, transformers.__version__)"
	touch $@

test-lmms: .venv-lmms/.installed
	.venv-lmms/bin/python -m pytest -q -p no:cacheprovider tests/test_lmms_eval.py

check: test lint typecheck

clean:
	rm -rf $(VENV) .venv-oldest .venv-newest .venv-lmms .pytest_cache .hypothesis build src/*.egg-info
