#!/usr/bin/env bash
# GPU check: distill's GPU path at real shapes (random-weight qwen-1.5b student, 7B-shaped teacher,
# 151,936-row vocabulary), offline, in about ten minutes on one H200: vLLM generation with top-20
# capture, the chunked loss against the naive one, `distill train` at 16k tokens, FSDP2 over NCCL and
# GRPO's weight sync. Progress on stderr, one JSON line of figures on stdout; exit 0 when every part
# passed. Without a CUDA GPU it says so and exits 0. What each part does: scripts/gpu_check.py.
#
#   bash scripts/gpu_check.sh [--budget-s 600] [--keep] [--verbose] [--skip grpo,fsdp]
#   bash scripts/gpu_check.sh --tiny        # every part at tiny shapes, on CPU too
#
# Python: $PYTHON, else the checkout's .venv, else python3 (on a GPU machine: pip install -e '.[vllm,dev]').
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
exec "$python" scripts/gpu_check.py "$@"
