# Two commands on a fresh machine:  `make main` (main job)  and  `make test` (test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: main test coverage setup data bench docs gallery clean

main: setup data
	$(BIN)/layerwise compare

test: setup data
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest
	$(MAKE) docs

# The test suite with a coverage report per module (slower: coverage follows the subprocesses too).
coverage: setup data
	$(BIN)/python -m pytest --cov=layerwise --cov-report=term

# The documentation site, built strictly (a broken link, a missing page or a failed API entry fails it).
docs: setup
	$(BIN)/python scripts/docs_site.py
	cd build && NO_MKDOCS_2_WARNING=1 $(abspath $(BIN))/mkdocs build --strict --quiet
	@echo "site: build/site/index.html"

# The gallery's images, from quick real runs (committed under docs/gallery).
gallery: setup data
	$(BIN)/python scripts/gallery.py

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
