"""Packing of record arrays into bytes: entropy-coded ids, quantised logprobs.

Choices, and why:

- Token ids are entropy coded with pcodec (binning + tANS over integers). Top-k ids of a real
  model are far from uniform over the vocabulary, so this beats fixed-width bit-packing
  (18 bits at V=151,936) by 5–7 bits per id on Zipfian data, and decodes at hundreds of
  millions of ids per second in compiled code.
- Top-k logprobs are sorted, highest first, so they are stored as the first value plus
  non-negative steps, which pcodec codes in a few bits each.
- 'compact' precision quantises each logprob ℓ on a companded grid: step ∝ p^(-1/2) (uniform in
  √p) above ℓ* and a fixed 0.25-nat step below it. A position's KL error is ≈ Σ p_i ε_i² / 2,
  so this spends bits where probability mass is; the bench (scripts/bench_cache.py) measures
  ≤ 1e-3 nats per position. 'fp32' stores logprobs bit-exact.
- Decoding a quantised level is a table lookup, so a batch decodes with a handful of vectorised
  numpy calls per record and never loops over tokens in Python.
"""

from __future__ import annotations

import math

import numpy as np
from pcodec import ChunkConfig, standalone

from distill.cache.format import CacheSpec, Record

# Companded quantiser for 'compact' precision (part of format version 1; changing these needs a bump).
SQRT_STEP = 0.015  # step in 2·√p / SQRT_STEP units above the knee
LOG_STEP = 0.25  # step in nats below the knee
LOGPROB_FLOOR = -80.0  # logprobs below this (e.g. -inf from masked tokens) are stored as the floor

_KNEE = 2.0 * math.log(2.0 * SQRT_STEP / LOG_STEP)  # ℓ* where the two step sizes meet
_KNEE_LEVEL = 2.0 * math.exp(_KNEE / 2.0) / SQRT_STEP
_MIN_LEVEL = int(math.floor(_KNEE_LEVEL + (LOGPROB_FLOOR - _KNEE) / LOG_STEP))
_MAX_LEVEL = int(math.ceil(2.0 / SQRT_STEP))


def _level_values() -> np.ndarray:
    """The logprob each quantisation level decodes to, indexed by level - _MIN_LEVEL."""
    levels = np.arange(_MIN_LEVEL, _MAX_LEVEL + 1, dtype=np.float64)
    above = 2.0 * np.log(np.maximum(levels, 1e-9) * SQRT_STEP / 2.0)
    below = _KNEE + (levels - _KNEE_LEVEL) * LOG_STEP
    return np.minimum(np.where(levels >= _KNEE_LEVEL, above, below), 0.0).astype(np.float32)


_LEVEL_VALUES = _level_values()
_CONFIG = ChunkConfig()


def quantize_logprobs(logprobs: np.ndarray) -> np.ndarray:
    """Map logprobs (any shape, float) to integer levels of the companded grid."""
    lp = np.clip(np.nan_to_num(logprobs.astype(np.float64), nan=LOGPROB_FLOOR), LOGPROB_FLOOR, 0.0)
    level = np.where(lp >= _KNEE, 2.0 * np.exp(lp / 2.0) / SQRT_STEP, _KNEE_LEVEL + (lp - _KNEE) / LOG_STEP)
    return np.clip(np.rint(level), _MIN_LEVEL, _MAX_LEVEL).astype(np.int32)


def dequantize_logprobs(levels: np.ndarray) -> np.ndarray:
    """Inverse of `quantize_logprobs` (up to the quantisation error), float32."""
    return _LEVEL_VALUES[levels - _MIN_LEVEL]


# ---------------------------------------------------------------------------------------------
# integer and float streams


def pack_array(values: np.ndarray) -> bytes:
    """Entropy-code a flat int32 / float32 array (lossless)."""
    return standalone.simple_compress(np.ascontiguousarray(values).ravel(), _CONFIG)


def unpack_array(data: bytes, dtype: type) -> np.ndarray:
    """Inverse of `pack_array`; an empty stream decodes to an empty array of `dtype`."""
    out = standalone.simple_decompress(data)
    return np.zeros(0, dtype) if out is None else out


def _frame(*parts: bytes) -> bytes:
    """Several byte strings as one: each prefixed by its length (uint32, little-endian)."""
    return b"".join(len(p).to_bytes(4, "little") + p for p in parts)


def _unframe(data: bytes) -> list[bytes]:
    parts, at = [], 0
    while at < len(data):
        n = int.from_bytes(data[at : at + 4], "little")
        parts.append(data[at + 4 : at + 4 + n])
        at += 4 + n
    return parts


# ---------------------------------------------------------------------------------------------
# record fields
#
# With top-k stored, the trace token is nearly always one of the k: it is stored as its rank there
# (k = "not among them", those ids stored apart), and its logprob is taken from the top-k row, with
# only the positions where that is not exact stored as exceptions. That saves ~2 bytes per token.


def _logprob_levels(values: np.ndarray, spec: CacheSpec) -> np.ndarray:
    """What is stored for logprobs: quantisation levels (compact) or the float32 values (fp32)."""
    return values.astype(np.float32) if spec.precision == "fp32" else quantize_logprobs(values)


def _ranks(record: Record, k: int) -> np.ndarray:
    """(T,) rank of each trace token in its top-k row, k where absent."""
    match = record.topk_ids == record.completion_ids[:, None]
    return np.where(match.any(axis=1), match.argmax(axis=1), k).astype(np.int32)


def encode_fields(record: Record, spec: CacheSpec) -> dict[str, bytes]:
    """Pack one record's arrays (validated by the writer) into one byte string per field."""
    k = spec.top_k
    out = {"prompt_ids": pack_array(record.prompt_ids.astype(np.int32))}
    sampled = record.sampled_logprobs.astype(np.float32)
    if k == 0:
        out["completion_ids"] = pack_array(record.completion_ids.astype(np.int32))
        out["sampled_logprobs"] = _frame(b"", pack_array(sampled if spec.precision == "fp32" else _nan_levels(sampled)))
    else:
        out["topk_ids"] = pack_array(record.topk_ids.astype(np.int32))
        if spec.precision == "fp32":
            out["topk_logprobs"] = pack_array(record.topk_logprobs.astype(np.float32))
        else:
            levels = quantize_logprobs(record.topk_logprobs)
            # sorted highest first, so levels never increase along a row: store first + steps down
            out["topk_logprobs"] = pack_array(np.concatenate([levels[:, :1], levels[:, :-1] - levels[:, 1:]], axis=1))
        ranks = _ranks(record, k)
        absent = ranks == k
        out["completion_ids"] = _frame(pack_array(ranks), pack_array(record.completion_ids[absent].astype(np.int32)))
        rows = np.arange(len(ranks))
        from_row = _logprob_levels(record.topk_logprobs[rows, np.minimum(ranks, k - 1)], spec)
        stored = _logprob_levels(sampled, spec) if spec.precision == "fp32" else _nan_levels(sampled)
        exception = absent | (stored.view(np.int32) != from_row.view(np.int32))
        where = np.flatnonzero(exception).astype(np.int32)
        out["sampled_logprobs"] = _frame(pack_array(where), pack_array(stored[where]))
    if spec.extra_k > 0 and record.extra_ids is not None:
        out["extra_ids"] = pack_array(record.extra_ids.astype(np.int32))
    return out


def _nan_levels(values: np.ndarray) -> np.ndarray:
    """Compact levels with NaN (unknown) kept apart from the floor, below every real level."""
    return np.where(np.isnan(values), _MIN_LEVEL - 1, quantize_logprobs(values)).astype(np.int32)


def _decode_levels(data: bytes, spec: CacheSpec) -> np.ndarray:
    if spec.precision == "fp32":
        return unpack_array(data, np.float32)
    levels = unpack_array(data, np.int32)
    values = dequantize_logprobs(np.maximum(levels, _MIN_LEVEL))
    values[levels < _MIN_LEVEL] = np.nan
    return values


def decode_fields(fields: dict[str, bytes | None], num_tokens: int, spec: CacheSpec) -> dict[str, np.ndarray | None]:
    """Inverse of `encode_fields`: the record's arrays from its packed fields (None: field absent)."""
    k, t = spec.top_k, num_tokens
    out: dict[str, np.ndarray | None] = {"prompt_ids": unpack_array(fields["prompt_ids"], np.int32)}
    out["extra_ids"] = (
        None
        if fields.get("extra_ids") is None
        else unpack_array(fields["extra_ids"], np.int32).reshape(t, spec.extra_k)
    )
    if k == 0:
        out["topk_ids"] = np.zeros((t, 0), np.int32)
        out["topk_logprobs"] = np.zeros((t, 0), np.float32)
        out["completion_ids"] = unpack_array(fields["completion_ids"], np.int32)
        out["sampled_logprobs"] = _decode_levels(_unframe(fields["sampled_logprobs"])[1], spec)
        return out
    topk_ids = unpack_array(fields["topk_ids"], np.int32).reshape(t, k)
    if spec.precision == "fp32":
        topk_lp = unpack_array(fields["topk_logprobs"], np.float32).reshape(t, k)
    else:
        steps = unpack_array(fields["topk_logprobs"], np.int32).reshape(t, k)
        levels = np.cumsum(np.concatenate([steps[:, :1], -steps[:, 1:]], axis=1), axis=1, dtype=np.int32)
        topk_lp = dequantize_logprobs(levels)
    rank_bytes, absent_bytes = _unframe(fields["completion_ids"])
    ranks = unpack_array(rank_bytes, np.int32)
    rows = np.arange(t)
    clipped = np.minimum(ranks, k - 1)
    completion = topk_ids[rows, clipped]
    completion[ranks == k] = unpack_array(absent_bytes, np.int32)
    where_bytes, value_bytes = _unframe(fields["sampled_logprobs"])
    sampled = topk_lp[rows, clipped].copy()
    sampled[unpack_array(where_bytes, np.int32)] = _decode_levels(value_bytes, spec)
    out.update(topk_ids=topk_ids, topk_logprobs=topk_lp, completion_ids=completion, sampled_logprobs=sampled)
    return out
