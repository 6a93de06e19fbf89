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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT_VERSION = 1
INDEX_NAME = "index.json"
VIEWS_DIR = "views"
TOKENIZER_DIR = "tokenizer"  # the teacher's tokenizer, so a cache is usable without the teacher
SHARD_PATTERN = "shard-{:05d}.safetensors"
SHARD_GLOB = "shard-*.safetensors"

# Field order inside `spans`; appending a field needs a format version bump.
FIELDS = ("prompt_ids", "completion_ids", "topk_ids", "topk_logprobs", "sampled_logprobs", "extra_ids")
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
        if self.precision not in PRECISIONS:
            out.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "top_k": self.top_k,
            "vocab_size": self.vocab_size,
            "extra_k": self.extra_k,
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

    @property
    def key(self) -> tuple[str, int]:
        """(prompt id, sample index): what makes a record unique within a cache."""
        return str(self.meta["prompt_id"]), int(self.meta["sample_index"])

    @property
    def num_tokens(self) -> int:
        return int(self.completion_ids.shape[0])
