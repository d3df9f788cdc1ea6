# Two commands:  `make run` (set up, then train the main experiment)  and  `make test` (set up, then the test suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXPERIMENT ?= fashion_convnet
ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data browser run test test-fast bench docs
$(BIN)/activate:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# `make run` needs jcnn and its oneDNN convolutions ([onednn]; without them convolutions stay on XLA's lowering);
# `make test` installs [dev] (pytest, hypothesis, tensorboard, TFDS, torch, export, docs, onednn).
$(VENV)/.installed-run: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q -e '.[onednn]'
	touch $@

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed-run

# Debian's dataset-fashion-mnist: 70,000 real images, offline (/usr/share/datasets/fashion-mnist).
data:
	@if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist) \
	  || echo "warning: could not apt-get install dataset-fashion-mnist; set JCNN_DATA_DIR to a folder of IDX files"; \
	fi

# Debian's chromium: tests/test_docs.py opens the built site in it, headless (no browser is downloaded at run time).
browser:
	@if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium) \
	  || echo "warning: could not apt-get install chromium; tests/test_docs.py needs it"; \
	fi

setup: $(VENV)/.installed data browser

run: $(VENV)/.installed-run data
	$(BIN)/python launch.py --experiment=$(EXPERIMENT) $(ARGS)

# pytest exits 5 when it collected no test: that is a failure here, never a silent pass. JCNN_REQUIRE_TORCH=1: the
# torch cross-checks fail (not skip) when torch is missing, since `setup` installed it ([dev] includes [bench]).
test: setup
	JCNN_REQUIRE_TORCH=1 $(BIN)/python -m pytest -q --durations=30; rc=$$?; \
	  if [ $$rc = 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

test-fast: setup
	JCNN_REQUIRE_TORCH=1 $(BIN)/python -m pytest -q -m "not slow"

# The documentation site, strict: a broken link, anchor or API reference fails the build. Open site/index.html.
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The PyTorch comparison (CPU wheel): optional, never a runtime dependency.
bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/input_pipeline.py
	$(BIN)/python benchmarks/sweep_throughput.py
