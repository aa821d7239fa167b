# fnn: `make test` and `make train` each set up .venv on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test train bench bench-train clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

train: $(STAMP)
	$(PY) -m fnn train

bench: $(STAMP)
	$(PY) scripts/bench_grads.py --markdown

bench-train: $(STAMP)
	$(PY) scripts/bench_train.py --markdown

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
