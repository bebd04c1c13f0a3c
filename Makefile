# The two commands of the README:  `make quickstart`  and  `make test`.
# Both create the virtual environment on first use (torch first, so that no CUDA build is pulled).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
# torch==2.13.0 is a local CPU build on the development machines; elsewhere set TORCH_SPEC (e.g. "torch" on a GPU box).
TORCH_SPEC ?= torch==2.13.0
SECTION ?= 151673
RESULTS ?= results
PYTEST_ARGS ?= -n 2 -m "not gpu"

# Use the shared data mirror beside the checkout when there is one; elsewhere the loaders download.
ifneq ($(wildcard ../shared/data/MANIFEST.tsv),)
export STORM_DATA_MIRROR ?= $(abspath ../shared/data)
endif
export MPLBACKEND ?= agg
# The notebook tests keep their executed copies here; `make docs` renders them instead of executing them again.
export STORM_EXECUTED_NOTEBOOKS ?= $(abspath $(RESULTS))/executed

BIN := $(VENV)/bin
STAMP := $(VENV)/.storm-installed
DOC_STAMP := $(VENV)/.storm-doc-installed
DOCS_HTML := docs/_build/html
SCREENSHOTS := docs/_build/screenshots

.PHONY: env quickstart test figures lint benchmarks clean docs-env docs docs-browser docs-check

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e . --group test
	touch $@

quickstart: env
	mkdir -p $(RESULTS)/quickstart
	$(BIN)/papermill tutorials/01_quickstart.ipynb $(RESULTS)/quickstart/01_quickstart.ipynb \
		-p section $(SECTION) -p results_dir $(abspath $(RESULTS))/quickstart --cwd tutorials
	@echo "Executed notebook and figures: $(RESULTS)/quickstart/"

# Every figure notebook in full mode (slow: pretraining ablations, peers); executed copies in $(RESULTS)/notebooks.
figures: env
	mkdir -p $(RESULTS)/notebooks
	for nb in notebooks/*.ipynb; do \
		name=$$(basename $$nb .ipynb); mkdir -p $(RESULTS)/$$name; \
		$(BIN)/papermill $$nb $(RESULTS)/notebooks/$$name.ipynb -p results_dir $(abspath $(RESULTS))/$$name --cwd notebooks || exit 1; \
	done

test: env
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The documentation (docs/): Sphinx, warnings are errors; `doc` dependency group on top of `make env`.
docs-env: $(DOC_STAMP)

$(DOC_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --group doc
	touch $@

docs: docs-env
	$(BIN)/sphinx-build -W --keep-going -b html docs $(DOCS_HTML)
	@echo "Documentation: $(DOCS_HTML)/index.html"

# Debian's chromium and its WebDriver (a browser that downloads its own build cannot be installed here);
# nothing to do where both are installed, no question asked where they are not (CI has no stdin).
docs-browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		sudo=$$(test "$$(id -u)" = 0 || echo sudo); \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

# Headless chromium over the built site: pages render, images load, no console error, no broken internal link.
docs-check: docs-browser docs
	$(BIN)/python tools/check_docs_browser.py $(DOCS_HTML) --screenshots $(SCREENSHOTS)

lint: env
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/ruff check storm tests benchmarks && $(BIN)/ruff format --check storm tests benchmarks

clean:
	rm -rf $(VENV) $(RESULTS) .pytest_cache docs/_build docs/api docs/tutorials/*.ipynb docs/figures/*.ipynb
