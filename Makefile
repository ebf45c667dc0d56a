# The two quickstart commands (`make train`, `make test`) each install what they need first.
# The install is idempotent: pip is skipped while the package is installed in this Python and a
# stamp file is newer than setup.py (the stamp alone would survive a reset Python environment).
PYTHON ?= python3
EXTRAS ?= cpu,test
MODEL_DIR ?= /tmp/highnoon_quickstart
comma := ,
STAMP = .install-$(subst $(comma),-,$(EXTRAS)).stamp

.PHONY: install train test test-fast lint bench readme-table

install:
	@$(PYTHON) -I -c "import importlib.metadata as m; m.version('highnoon')" 2>/dev/null \
		&& [ $(STAMP) -nt setup.py ] \
		|| { $(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]' \
			&& touch $(STAMP); }

# Training installs only TensorFlow's CPU build: no test tools (pytest, matplotlib, tokenizers).
train: EXTRAS = cpu
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

readme-table:
	$(PYTHON) -m highnoon.training.settings --write README.md
