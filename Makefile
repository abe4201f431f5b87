# Two commands on a fresh machine:  `make main` (main job)  and  `make test` (test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: main test setup data bench clean

main: setup data
	$(BIN)/layerwise compare

test: setup data
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest --cov=layerwise --cov-report=term

bench: setup
	$(BIN)/layerwise bench scheduler --json

setup: $(STAMP)

# constraints.txt pins the CPU build of torch on this machine's disk: no CUDA download.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[bench,pretrained,dev]'
	# timm and fastai (test-only) pull PyPI's torchvision, a CUDA build that cannot load beside the CPU
	# torch and then breaks transformers' imports; nothing here needs it (the tests stub it for timm).
	$(BIN)/python -m pip uninstall -q -y torchvision
	touch $@

data:
	@sh scripts/ensure-data.sh

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
