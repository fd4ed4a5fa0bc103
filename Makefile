# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: install test lint demo clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: a CPU build is cached on these machines; anything else downloads GBs.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	bash scripts/install_system_deps.sh
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check kernels runtime heavy tests scripts
	$(VENV)/bin/lint-imports

# pytest exits 5 when it collects no test: that is not a failure of the build.
test: lint
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

# heavy up (embedded Redis + the embedded model + worker + API) and one research job over REST, followed live.
demo: install
	$(PY) scripts/demo.py $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
