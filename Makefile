# The two quickstart commands (`make train`, `make test`) each install what they need first.
# The install is idempotent: a stamp file skips pip until setup.py changes.
PYTHON ?= python3
EXTRAS ?= cpu,test
MODEL_DIR ?= /tmp/highnoon_quickstart
comma := ,
STAMP := .install-$(subst $(comma),-,$(EXTRAS)).stamp

.PHONY: install train test test-fast lint bench

install: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	@touch $@

train: install
	$(PYTHON) -m launch.train --gin_file=runs/quickstart.gin --model_dir=$(MODEL_DIR)

test: install
	$(PYTHON) -m pytest

test-fast: install
	$(PYTHON) -m pytest -m "not slow and not multiprocess"

lint: install
	$(PYTHON) -m ruff check highnoon launch tests bench examples
	$(PYTHON) -m ruff format --check highnoon launch tests bench examples

bench: install
	for b in bench/bench_*.py; do $(PYTHON) $$b || exit 1; done
