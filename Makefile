# fnn: `make test` and `make train` each set up .venv on a fresh clone.
# `make help` lists the targets. Another Python: make test PYTHON=python3.12
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The lowest supported versions (pyproject.toml's floors) in their own venv, on
# the lowest supported Python where there is one (else on PYTHON).
LOWEST ?= .venv-lowest
LOWEST_PYTHON ?= $(if $(call py_version,python3.11),python3.11,$(PYTHON))
LOWEST_PY := $(LOWEST)/bin/python
LOWEST_STAMP := $(LOWEST)/.installed

# The supported Pythons: keep in step with requires-python in pyproject.toml.
PY_OK := import sys; sys.exit(sys.version_info < (3, 11))
PY_VERSION := import sys; print("%d.%d" % sys.version_info[:2])
# $(call py_version,python): its X.Y if it runs and is supported, else nothing.
py_version = $(shell $(1) -c '$(PY_OK)' >/dev/null 2>&1 \
               && $(1) -c '$(PY_VERSION)' 2>/dev/null)

# A venv is reused only when its python runs, is a supported version and, when
# PYTHON is given (make test PYTHON=python3.12, or in the environment), is that
# Python's version; otherwise its stamp counts as out of date: the venv is
# removed and made again.
ifneq ($(origin PYTHON),file)
WANT_VERSION := $(or $(call py_version,$(PYTHON)),unsupported)
endif
# $(call venv_ok,venv python,wanted X.Y or nothing for any): non-empty if ok.
venv_ok = $(filter $(or $(2),%),$(call py_version,$(1)))
# Only the goals that use a venv look at it: help and clean run no Python.
GOALS := $(or $(MAKECMDGOALS),setup)
ifneq ($(filter-out help clean test-lowest $(LOWEST_STAMP),$(GOALS)),)
ifeq ($(call venv_ok,$(PY),$(WANT_VERSION)),)
.PHONY: $(STAMP)
endif
endif
ifneq ($(filter test-lowest $(LOWEST_STAMP),$(GOALS)),)
ifeq ($(call venv_ok,$(LOWEST_PY),$(or $(call py_version,$(LOWEST_PYTHON)),unsupported)),)
.PHONY: $(LOWEST_STAMP)
endif
endif

# $(call check_python,python,variable): stops with a message if it is missing
# or older than 3.11.
check_python = @$(1) -c '$(PY_OK)' 2>/dev/null || { \
  echo "fnn needs Python >= 3.11, and $(1) is:" \
       "$$($(1) --version 2>/dev/null || echo not found)." \
       "Try: make $(or $(MAKECMDGOALS),setup) $(2)=python3.11" >&2; exit 1; }

.DEFAULT_GOAL := setup
.PHONY: setup help test test-lowest train bench bench-train docs clean

help:
	@echo "make              (= make setup) set up $(VENV): pip install -e '.[dev]'"
	@echo "make test         the test suite in $(VENV), set up first when needed"
	@echo "make test-lowest  the suite on the lowest supported versions, in $(LOWEST)"
	@echo "                  (uv pip install --resolution lowest-direct)"
	@echo "make train        set up $(VENV) and train the default MLP (python -m fnn train)"
	@echo "make bench        gradient benchmarks, Markdown table (scripts/bench_grads.py)"
	@echo "make bench-train  training benchmarks, Markdown table (scripts/bench_train.py)"
	@echo "make docs         run the README's code blocks, then build the site into site/ (mkdocs)"
	@echo "make clean        remove $(VENV), $(LOWEST) and build files"
	@echo "PYTHON=python3.12 (any Python >= 3.11) builds $(VENV) with that Python;"
	@echo "LOWEST_PYTHON likewise $(LOWEST) (default: python3.11 if found, else PYTHON)"

$(STAMP): pyproject.toml
	$(call check_python,$(PYTHON),PYTHON)
	$(if $(call venv_ok,$(PY),$(WANT_VERSION)),@echo "reusing $(VENV)",rm -rf $(VENV) && $(PYTHON) -m venv $(VENV))
	echo '*' > $(VENV)/.gitignore
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The direct dependencies at their floors, everything else at its newest: the
# floors in pyproject.toml are the versions this target has passed with (on
# Python 3.11). Wheels only: on a newer Python, whose first wheels come later
# (3.13: matplotlib 3.9.2, scikit-learn 1.5.2), the lowest that install there.
$(LOWEST_STAMP): pyproject.toml
	$(call check_python,$(LOWEST_PYTHON),LOWEST_PYTHON)
	rm -rf $(LOWEST)
	$(LOWEST_PYTHON) -m venv $(LOWEST)
	echo '*' > $(LOWEST)/.gitignore
	$(LOWEST_PY) -m pip install --quiet uv
	$(LOWEST_PY) -m uv pip install --quiet --python $(LOWEST_PY) \
	  --resolution lowest-direct --only-binary :all: -e ".[dev]"
	touch $(LOWEST_STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

test-lowest: $(LOWEST_STAMP)
	@$(LOWEST_PY) -m uv pip freeze --python $(LOWEST_PY) 2>/dev/null | grep -iE \
	  '^(jax|jaxlib|numpy|optax|chex|matplotlib|mnist1d|scikit-learn|dp-accounting|tqdm|pytest|pytest-xdist)==' \
	  | tr '\n' ' '; echo
	$(LOWEST_PY) -m pytest

train: $(STAMP)
	$(PY) -m fnn train

bench: $(STAMP)
	$(PY) scripts/bench_grads.py --markdown

bench-train: $(STAMP)
	$(PY) scripts/bench_train.py --markdown

# The documentation site (mkdocs, material, mkdocstrings) into site/.
docs: $(STAMP)
	$(PY) -m pip install --quiet -e '.[docs]'
	$(PY) -m pytest -m slow tests/test_docs.py
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) $(LOWEST) .pytest_cache build site *.egg-info
