# `make demo`: install everything and run the tour on the built-in models.
# `make test`: install everything and run the whole test suite.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install demo test bench

install:
	# torch first, pinned to the CPU wheel (a range would pull a multi-GB CUDA build)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[dev]"
	# editable installs skip data files: enable the Jupyter extension that serves BokehJS locally
	$(PYTHON) -m edgebench.notebook.server_ext
	# Debian's Chromium and python playwright, for the real-browser tests
	PYTHON=$(PYTHON) bash scripts/install-browser.sh

demo: install
	$(PYTHON) -m edgebench demo

test: install
	$(PYTHON) -m pytest tests notebooks --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg

bench: install
	for b in benchmarks/*.py; do $(PYTHON) $$b || exit 1; done
