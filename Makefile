# Two commands do everything on a fresh machine: `make demo` and `make test`.
# They create .venv and install the project into it on first use.
PYTHON ?= python3
VENV   ?= .venv
# The CPU build of torch (on local disk here). GPU users override it, e.g.
#   make install TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.atelier-installed

.PHONY: install demo test lint bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[engine,safety,test]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m sandbox demo --out demo-out

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m tests.bench.engine
	$(BIN)/python -m tests.bench.registry
