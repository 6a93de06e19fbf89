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
- Version 2 stores, per position, how the mass splits between the top-k and the tail, and the
  top-k relative to their own mass (ℓ_i − log Σ_S p). The split keeps whichever side is smaller on
  the grid — log r when r ≤ 1/2, else log(1 − r) — so a tail of 1e-7 beside a near-certain top-1
  and a top-k holding 1e-3 of a high-entropy position both keep their relative precision, and the
  top-k's shape is quantised at its own scale (what a renormalised target sees). The grid cannot
  tell a top-1 of 0.9999 from 0.995, but the KD target normalises the k + 1 buckets together, so
  that error is absorbed instead of becoming invented tail mass (version 1's failure: ×490 at a
  top-1 of 0.9999). A relative error ε on a bucket of mass m costs ≈ m·ε²/2 nats.
- Extra sampled tokens' logprobs are stored as float32: the sampled-KD estimator averages them
  directly, so a quantisation error there would be a bias, not noise.
- Decoding a quantised level is a table lookup, so a batch decodes with a handful of vectorised
  numpy calls per record and never loops over tokens in Python.
"""

from __future__ import annotations

import math

import numpy as np
from pcodec import ChunkConfig, standalone

from distill.cache.format import CacheSpec, Record, topk_tail_logprobs

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
        tail = record.tail_logprobs if record.tail_logprobs is not None else topk_tail_logprobs(record.topk_logprobs)
        if spec.precision == "fp32":
            out["topk_logprobs"] = pack_array(record.topk_logprobs.astype(np.float32))
            out["tail_logprobs"] = pack_array(np.asarray(tail, np.float32))
        else:
            lp = record.topk_logprobs.astype(np.float64)
            top = lp[:, :1]
            log_mass = np.minimum(np.log(np.exp(lp - top).sum(axis=1)) + top[:, 0], 0.0)  # (T,) log Σ_S p
            out["tail_logprobs"] = pack_array(_split_codes(log_mass, np.asarray(tail, np.float64)))
            levels = quantize_logprobs(lp - log_mass[:, None])  # the top-k's shape, at its own scale
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
        out["extra_logprobs"] = pack_array(np.asarray(record.extra_logprobs, np.float32))
    return out


# The split code (compact, version 2), one int per position: below _MIN_LEVEL the tail is empty;
# _MIN_LEVEL.._MAX_LEVEL is the level of log r (r ≤ 1/2); from _MASS_OFFSET on, the level of the top-k
# mass log(1 − r) (r > 1/2).
_MASS_OFFSET = 2 * (_MAX_LEVEL - _MIN_LEVEL + 2)
_LOG_HALF = math.log(0.5)


def _log1mexp(x: np.ndarray) -> np.ndarray:
    """log(1 − eˣ) for x ≤ 0 in float64 (−inf at 0), accurate at both ends."""
    x = np.minimum(np.asarray(x, np.float64), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > _LOG_HALF, np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


def _split_codes(log_mass: np.ndarray, log_tail: np.ndarray) -> np.ndarray:
    """(T,) split codes from the top-k's log mass and the tail's log mass (float64, ≤ 0)."""
    codes = np.where(log_tail <= _LOG_HALF, quantize_logprobs(log_tail), _MASS_OFFSET + quantize_logprobs(log_mass))
    return np.where(np.isneginf(log_tail), _MIN_LEVEL - 1, codes).astype(np.int32)


def _split_from_codes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `_split_codes`: (log mass of the top-k, log tail), float64 (T,) each."""
    is_mass = codes >= _MASS_OFFSET
    level = np.clip(np.where(is_mass, codes - _MASS_OFFSET, codes), _MIN_LEVEL, _MAX_LEVEL)
    stored = dequantize_logprobs(level).astype(np.float64)
    log_mass = np.where(is_mass, stored, _log1mexp(stored))
    log_tail = np.where(is_mass, _log1mexp(stored), stored)
    empty = codes < _MIN_LEVEL
    return np.where(empty, 0.0, log_mass), np.where(empty, -np.inf, log_tail)


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
    out["extra_logprobs"] = (
        None
        if fields.get("extra_logprobs") is None
        else unpack_array(fields["extra_logprobs"], np.float32).reshape(t, spec.extra_k)
    )
    out["tail_logprobs"] = None  # version 1 has no tail field: None tells readers to derive it from the top-k
    if k == 0:
        out["topk_ids"] = np.zeros((t, 0), np.int32)
        out["topk_logprobs"] = np.zeros((t, 0), np.float32)
        out["completion_ids"] = unpack_array(fields["completion_ids"], np.int32)
        out["sampled_logprobs"] = _decode_levels(_unframe(fields["sampled_logprobs"])[1], spec)
        return out
    topk_ids = unpack_array(fields["topk_ids"], np.int32).reshape(t, k)
    split = fields.get("tail_logprobs")
    if spec.precision == "fp32":
        topk_lp = unpack_array(fields["topk_logprobs"], np.float32).reshape(t, k)
        if split is not None:
            out["tail_logprobs"] = unpack_array(split, np.float32)
    else:
        steps = unpack_array(fields["topk_logprobs"], np.int32).reshape(t, k)
        levels = np.cumsum(np.concatenate([steps[:, :1], -steps[:, 1:]], axis=1), axis=1, dtype=np.int32)
        topk_lp = dequantize_logprobs(levels)
        if split is not None:  # version 2: levels are relative to the top-k's mass
            log_mass, log_tail = _split_from_codes(unpack_array(split, np.int32))
            topk_lp = (topk_lp + log_mass[:, None]).astype(np.float32)
            out["tail_logprobs"] = log_tail.astype(np.float32)
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
