# Set-up is part of every target: a fresh clone needs only `make tune` or `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: test tune bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

# One pytest worker per core (pytest-xdist): most of the suite's time is compiling kernels.
test: $(STAMP)
	$(PY) -m pytest -q -n auto

# numpy is timed beside autogemm: OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE would slow it, so unset them here.
tune: $(STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(VENV)/bin/autogemm tune --dtype float32

bench: $(STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(VENV)/bin/autogemm bench --suite square,gpt2 --threads 1,2 \
	    --json benchmarks/bench-latest.json

clean:
	rm -rf $(VENV) build dist *.egg-info
