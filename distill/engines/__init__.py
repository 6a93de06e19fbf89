"""Engine adapters: the only code that talks to vLLM or to transformers generation.

The engines take token ids in and give `Completion`s out, streamed as they finish, so the
teacher stage neither knows nor cares which one runs. `open_engine("vllm" | "hf", ...)` picks one;
vllm is imported only inside `distill.engines.vllm_engine`, and only when that engine is opened.
A teacher behind vLLM servers (`--teacher-url`) is `distill.engines.server_engine.ServerEngine`, the vLLM
engine over HTTP; `open_teacher` opens whichever a generate or score config asks for.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distill.errors import DistillError


@dataclass
class Request:
    """One (prompt, sample) to generate, or one trace to score."""

    key: tuple[str, int]
    """(prompt id, sample index)"""
    prompt_ids: list[int]
    seed: int = 0
    completion_ids: list[int] | None = None
    """For scoring: the given completion."""
    max_new_tokens: int | None = None
    """For generation: this request's length limit (None: the sampling spec's)."""


@dataclass
class SamplingSpec:
    """Sampling parameters common to both engines."""

    temperature: float
    top_p: float
    max_new_tokens: int
    top_k: int
    """Teacher logprobs recorded per position (0: only the sampled token's)."""
    stop_token_ids: list[int] = field(default_factory=list)
    extra_samples: int = 0
    """Tokens drawn per position from the teacher's full distribution, for sampled KD (hf engine only)."""
    extra_temperature: float = 1.0
    """Temperature of the distribution the extra tokens are drawn from."""


@dataclass
class Completion:
    """What an engine returns per request; arrays cover completion positions only."""

    key: tuple[str, int]
    prompt_ids: list[int]
    completion_ids: np.ndarray
    """(T,) int32"""
    topk_ids: np.ndarray
    """(T, k) int32, highest logprob first"""
    topk_logprobs: np.ndarray
    """(T, k) float32, raw (before temperature / top-p)"""
    sampled_logprobs: np.ndarray
    """(T,) float32"""
    finish_reason: str
    tail_logprobs: np.ndarray | None = None
    """(T,) float32 log mass outside the top-k, exact from full logits; None: derive it from the top-k"""
    extra_ids: np.ndarray | None = None
    """(T, M) int32 tokens drawn from the teacher's full distribution at the extra temperature, or None"""
    extra_logprobs: np.ndarray | None = None
    """(T, M) float32 their logprobs under that tempered distribution"""
    folded: int = 0
    """Top-k entries that were padding rows of the model (ids ≥ the tokenizer's size), left out of the top-k so
    that their mass is in the tail; the top-k holds the best k real tokens instead"""
    folded_positions: int = 0
    """Positions with at least one such entry"""


def request_seed(seed: int, prompt_id: str, sample_index: int) -> int:
    """A seed of its own for every (prompt, sample): a resumed run draws the same samples."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


ENGINES = ("vllm", "hf")


def open_engine(backend: str, model: str, **kwargs):
    """An engine for `model`: 'vllm' (offline vLLM) or 'hf' (transformers generation)."""
    if backend == "vllm":
        from distill.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model, **kwargs)
    if backend == "hf":
        from distill.engines.hf_engine import HFEngine

        return HFEngine(model, **kwargs)
    raise DistillError(f"Unknown backend {backend!r}; use one of {', '.join(ENGINES)}.")


def open_teacher(cfg: Any, preset: Any, tokenizer: Any, top_k: int, seed: int = 0) -> Any:
    """The teacher engine of a generate or score config (`TeacherRuntime` and `TeacherServers` options): its vLLM
    servers at --teacher-url, checked to be this teacher, or `cfg.backend` in this process."""
    max_model_len = cfg.max_model_len or preset.engine.max_model_len
    if cfg.teacher_url:
        from distill.engines.server_engine import ServerEngine

        return ServerEngine(
            cfg.teacher_url,
            preset,
            tokenizer,
            top_k=top_k,
            max_model_len=max_model_len,
            inflight=cfg.teacher_inflight,
            timeout_s=cfg.teacher_timeout_s,
            retries=cfg.teacher_retries,
        )
    return open_engine(
        cfg.backend,
        preset.hub_id,
        dtype=cfg.dtype or preset.engine.dtype,
        max_model_len=max_model_len,
        tensor_parallel_size=cfg.tensor_parallel_size or preset.engine.tensor_parallel_size,
        gpu_memory_utilization=preset.engine.gpu_memory_utilization,
        max_logprobs=top_k,
        seed=seed,
        tokens=len(tokenizer),
    )
