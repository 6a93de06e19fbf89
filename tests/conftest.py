"""Shared fixtures: offline hub settings, a private DISTILL_HOME, one tiny Qwen2 per session."""

from __future__ import annotations

import os
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
