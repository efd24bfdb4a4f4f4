# Two commands do everything on a fresh machine: `make demo` and `make test`.
# They create .venv and install the project into it on first use.
PYTHON ?= python3
VENV   ?= .venv
# torch, and where its build comes from. PyPI's Linux wheel of torch is the CUDA build
# (several GB of CUDA libraries), so the CPU build is asked for explicitly: from PyTorch's CPU
# index, which holds only CPU builds. Where pip is already set up with a local wheel of it (a
# find-links folder, as on the project's CI machines, which reach no index but a PyPI mirror
# and would spend minutes retrying download.pytorch.org), that wheel is used instead: the
# check below asks pip with --no-index, which sees only local wheels, and answers in a second.
# GPU users name their build's index, e.g.
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH       ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.atelier-installed
PIP    := $(BIN)/python -m pip install -q --disable-pip-version-check

.PHONY: install demo test lint bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@echo "Installing torch and the project's dependencies into $(VENV) (about 5 minutes, once)..."
ifeq ($(origin TORCH_INDEX),file)
	@if $(PIP) --dry-run --no-index --no-deps '$(TORCH)+cpu' >/dev/null 2>&1; then \
		echo "(the CPU build of torch from pip's local wheels)"; \
		$(PIP) '$(TORCH)+cpu'; \
	else \
		$(PIP) '$(TORCH)' --index-url $(TORCH_INDEX); \
	fi
else
	$(PIP) '$(TORCH)' --index-url $(TORCH_INDEX)
endif
	$(PIP) -e '.[engine,safety,test]'
	touch $@

# The Ray Serve tests (tests/cluster) need the cluster extra; the demo and the bot never do.
CLUSTER_STAMP := $(VENV)/.atelier-cluster-installed
$(CLUSTER_STAMP): $(STAMP)
	$(PIP) -e '.[cluster]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m sandbox demo --out demo-out

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) $(CLUSTER_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m tests.bench.engine
	$(BIN)/python -m tests.bench.registry
