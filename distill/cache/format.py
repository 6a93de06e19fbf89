"""The teacher cache format: names, dtypes, version. The only module that says what is on disk.

A cache is a directory:

    index.json                 written last, replaced atomically; the cache is "complete" only
                               when its index says so
    shard-00000.safetensors    many records each; written to a temp name, fsynced, renamed
    views/<name>.json          record selections written by the filter (never edits shards)
    tokenizer/                 the teacher's tokenizer files (save_pretrained), written at finish

A shard is a safetensors file with three tensors and a string header:

    blob     uint8 (num_bytes,)          every record's fields, each packed by `codec`
    spans    int64 (records, FIELDS, 2)  (offset, length) of each field of each record in blob;
                                         length -1 means "field absent"
    lengths  int64 (records, 2)          (prompt tokens, completion tokens) per record
    header   distill_format, top_k, extra_k, precision, meta (JSON list, one dict per record)

Records are packed one by one so that `cache[i]` decodes one record without touching the rest,
and a batch is decoded by a loop over records, never over tokens.

Versions:
- 2 (written now): every position also stores the teacher's tail mass outside its top-k, log r,
  as the engine saw it (exact from full logits where the engine has them, else 1 − Σ top-k in
  float64), so a near-certain position keeps its true tail whatever the quantiser does to the top-1;
  extra sampled tokens carry their teacher logprobs (`extra_logprobs`) for unbiased sampled KD.
- 1: no tail field; readers derive the tail from the (quantised) top-k, which invents up to 5e-3
  of tail mass at near-certain positions. Still read; `V1_TAIL_NOTE` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
V1_TAIL_NOTE = (
    "cache {path} is format version 1: its tail masses are derived from quantised top-k logprobs, inexact at "
    "near-certain positions (up to 5e-3 of invented tail mass); regenerate it with this distill for exact tails"
)
INDEX_NAME = "index.json"
VIEWS_DIR = "views"
TOKENIZER_DIR = "tokenizer"  # the teacher's tokenizer, so a cache is usable without the teacher
SHARD_PATTERN = "shard-{:05d}.safetensors"
SHARD_GLOB = "shard-*.safetensors"

# Field order inside `spans`; appending a field needs a format version bump (version 1 has the first six).
FIELDS = (
    "prompt_ids",
    "completion_ids",
    "topk_ids",
    "topk_logprobs",
    "sampled_logprobs",
    "extra_ids",
    "tail_logprobs",
    "extra_logprobs",
)
FIELD_INDEX = {name: i for i, name in enumerate(FIELDS)}

# "compact" stores logprobs quantised (see codec); "fp32" stores them bit-exact.
PRECISIONS = ("compact", "fp32")

# Metadata keys every record must carry; the rest (gold answer, finish reason, ...) is free-form.
REQUIRED_META = ("prompt_id", "sample_index")


@dataclass
class CacheSpec:
    """What every record of one cache has in common; fixed when the cache is created."""

    top_k: int
    """Teacher logprobs stored per completion position (0: none, e.g. `generate --top-k 0`)."""
    vocab_size: int
    """Size of the teacher's vocabulary; every stored id is below it."""
    extra_k: int = 0
    """Extra tokens sampled from the teacher distribution per position, for unbiased sparse KD."""
    extra_temperature: float = 1.0
    """Temperature of the teacher distribution the extra tokens were drawn from (and their logprobs are under)."""
    precision: str = "compact"
    """How logprobs are stored: 'compact' (quantised, ≤1e-3 nats KL per position) or 'fp32'."""

    def problems(self) -> list[str]:
        """Every way this spec is invalid, as sentences (empty when valid)."""
        out = []
        if self.top_k < 0:
            out.append(f"top_k must be ≥ 0, got {self.top_k}")
        if self.vocab_size <= 0:
            out.append(f"vocab_size must be positive, got {self.vocab_size}")
        if self.top_k > self.vocab_size > 0:
            out.append(f"top_k {self.top_k} is larger than the vocabulary ({self.vocab_size} tokens)")
        if self.extra_k < 0:
            out.append(f"extra_k must be ≥ 0, got {self.extra_k}")
        if not self.extra_temperature > 0:
            out.append(f"extra_temperature must be > 0, got {self.extra_temperature}")
        if self.precision not in PRECISIONS:
            out.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "top_k": self.top_k,
            "vocab_size": self.vocab_size,
            "extra_k": self.extra_k,
            "extra_temperature": self.extra_temperature,
            "precision": self.precision,
        }


@dataclass
class Record:
    """One sample of one prompt, with the teacher's view of every completion position.

    `topk_ids` / `topk_logprobs` are sorted by logprob, highest first; logprobs are raw
    (before temperature or top-p), natural log.
    """

    prompt_ids: np.ndarray
    """(prompt_len,) int32"""
    completion_ids: np.ndarray
    """(completion_len,) int32"""
    topk_ids: np.ndarray
    """(completion_len, top_k) int32"""
    topk_logprobs: np.ndarray
    """(completion_len, top_k) float32"""
    sampled_logprobs: np.ndarray
    """(completion_len,) float32: the teacher's logprob of the trace token (NaN when unknown)"""
    meta: dict[str, Any] = field(default_factory=dict)
    """prompt_id, sample_index, and optionally finish_reason, answer, ..."""
    extra_ids: np.ndarray | None = None
    """(completion_len, extra_k) int32 tokens drawn from the teacher distribution, or None"""
    tail_logprobs: np.ndarray | None = None
    """(completion_len,) float32 log of the teacher's mass outside its top-k (−inf: none); None = derive it
    from the top-k with `topk_tail_logprobs` (what version-1 caches and engines without full logits give)"""
    extra_logprobs: np.ndarray | None = None
    """(completion_len, extra_k) float32 teacher logprobs of `extra_ids` at the temperature they were drawn at"""

    @property
    def key(self) -> tuple[str, int]:
        """(prompt id, sample index): what makes a record unique within a cache."""
        return str(self.meta["prompt_id"]), int(self.meta["sample_index"])

    @property
    def num_tokens(self) -> int:
        return int(self.completion_ids.shape[0])


def topk_tail_logprobs(topk_logprobs: np.ndarray) -> np.ndarray:
    """log(1 − Σ_k p) per position from top-k logprobs, in float64: (T, k) → (T,) float32, −inf where empty.

    This is the tail an engine without full logits gives (vLLM returns only the top-k). Computed
    in float64 so that a near-certain top-1 (ℓ = −1e-7) keeps its tail of 1e-7 instead of
    rounding it away; a top-k that sums to 1 or more has no tail.
    """
    lp = np.asarray(topk_logprobs, np.float64)
    if lp.shape[-1] == 0:
        return np.zeros(lp.shape[:-1], np.float32)  # nothing stored: all the mass is "tail"
    top = lp.max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    log_mass = np.log(np.exp(lp - top).sum(axis=-1)) + top[..., 0]  # (T,) log Σ_k p
    with np.errstate(divide="ignore", invalid="ignore"):
        # log(1 − e^x): expm1 near 0 (the near-certain case), log1p far from it
        tail = np.where(log_mass > -0.693, np.log(-np.expm1(log_mass)), np.log1p(-np.exp(log_mass)))
    return np.where(log_mass < 0, tail, -np.inf).astype(np.float32)
