"""Packing of record arrays into bytes: entropy-coded ids, quantised logprobs.

Choices, and why:

- Token ids are entropy coded with pcodec (binning + tANS over integers). Top-k ids of a real
  model are far from uniform over the vocabulary, so this beats fixed-width bit-packing
  (18 bits at V=151,936) by 5–7 bits per id on Zipfian data, and decodes at hundreds of
  millions of ids per second in compiled code.
- Top-k logprobs are sorted, highest first, so they are stored as the first value plus
  non-negative steps, which pcodec codes in a few bits each. Since version 3 the steps go in bands
  of ranks ([0], [1], [2, 4), [4, 8), ...), one stream per band, rank by rank: the top-1's level
  and a step far down the row are nothing alike, and one stream for both cost ~0.75 bits per logit
  (3.26 bits per logit at k = 20 on the Zipf 1.1 stream, on a grid 1.44× finer than version 2's
  at 3.53).
- 'compact' precision quantises each logprob on a companded grid (`distill.cache.grid`): uniform
  in √p above its knee, 0.25 nats a step below it, the knee where the two steps meet. A position's
  KL error is ≈ ½ Var_p(ε) ≤ ½ Σ p_i ε_i² over its buckets, and on this grid no bucket is worth
  more than S²/4, so no position of k + 1 buckets costs a perfect student more than
  (k + 1)·S²/8: 8.8e-4 nats at k = 64, 2.8e-4 at k = 20, wherever its values lie.
  scripts/bench_cache.py puts every value of adversarial positions beside a rounding boundary
  and measures 8.5e-4 at k = 64 and 2.7e-4 at k = 20 (version 2's grid: 5.3e-3 and 1.7e-3);
  on LM-like Zipf streams 6.1e-5 on average at k = 20, 1.4e-4 at k = 64; on the bundled
  teacher 3.1e-6. 'fp32' stores logprobs bit-exact.
- Versions 2 and 3 store, per position, how the mass splits between the top-k and the tail, and
  the top-k relative to their own mass (ℓ_i − log Σ_S p). The split keeps whichever side is
  smaller on the grid — log r when r ≤ 1/2, else log(1 − r) — so a tail of 1e-7 beside a
  near-certain top-1 and a top-k holding 1e-4 of a flat position both keep their relative
  precision, and the top-k's shape is quantised at its own scale (what a renormalised target
  sees). The KD target normalises the k + 1 buckets together, so an error common to the top-k is
  absorbed instead of becoming invented tail mass (version 1's failure: ×490 at a top-1 of 0.9999).
- The trace token's logprob (what the cross-tokenizer span term, ULD and the filter's best-of-n
  read raw) is stored beside the decoded top-k value at its rank in steps of TRACE_STEP = 2⁻¹⁰
  nats, ~5.7 bits a token: it decodes within 4.9e-4 nats of the engine's at every p. Versions
  1–2 read it off the grid: up to 0.13 nats off, and any p ≥ 0.995 read as 0.995.
- Extra sampled tokens' logprobs are stored as float32: the sampled-KD estimator averages them
  directly, so a quantisation error there would be a bias, not noise.
- Decoding a quantised level is a table lookup, so a batch decodes with a handful of vectorised
  numpy calls per record and never loops over tokens in Python.
- Older versions decode with their own grid and layout (`decode_fields(..., version)`).
"""

from __future__ import annotations

import numpy as np
from pcodec import ChunkConfig, standalone

from distill.cache.format import FORMAT_VERSION, CacheSpec, Record, topk_tail_logprobs
from distill.cache.grid import GRID_V2, GRID_V3, LOGPROB_FLOOR, Grid

# The trace logprob's step in nats (compact, version 3): stored as a multiple of it beside the decoded top-k
# value, so it decodes within TRACE_STEP / 2 = 4.9e-4 nats of the engine's.
TRACE_STEP = 2.0**-10
_CONFIG = ChunkConfig()


def quantize_logprobs(logprobs: np.ndarray) -> np.ndarray:
    """Map logprobs (any shape, float) to integer levels of the grid this distill writes (`GRID_V3`)."""
    return GRID_V3.quantize(logprobs)


def dequantize_logprobs(levels: np.ndarray) -> np.ndarray:
    """Inverse of `quantize_logprobs` (up to the quantisation error), float32."""
    return GRID_V3.dequantize(levels)


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
# the top-k's logprobs (compact): levels relative to the top-k's mass, and the split code


def _rank_bands(k: int) -> list[tuple[int, int]]:
    """Ranks [0, 1), [1, 2), [2, 4), [4, 8), ... up to k: the steps of one band are alike, those of two are not."""
    edges = [0, *(2**i for i in range(k.bit_length())), k]
    return [(a, min(b, k)) for a, b in zip(edges, edges[1:], strict=False) if a < min(b, k)]


def _pack_steps(levels: np.ndarray) -> bytes:
    """(T, k) levels, sorted highest first, as the first level and the non-negative steps down the row; each band
    of ranks is its own stream, rank by rank (the top-1's level and a step at rank 40 are nothing alike)."""
    steps = np.concatenate([levels[:, :1], levels[:, :-1] - levels[:, 1:]], axis=1)
    return _frame(*(pack_array(steps[:, a:b].T) for a, b in _rank_bands(levels.shape[1])))


def _unpack_steps(data: bytes, t: int, k: int, banded: bool) -> np.ndarray:
    """Inverse of `_pack_steps` (banded: version 3; else versions 1–2, one stream row by row): (T, k) int32."""
    if banded:
        parts = zip(_unframe(data), _rank_bands(k), strict=True)
        steps = np.concatenate([unpack_array(d, np.int32).reshape(b - a, t).T for d, (a, b) in parts], axis=1)
    else:
        steps = unpack_array(data, np.int32).reshape(t, k)
    return np.cumsum(np.concatenate([steps[:, :1], -steps[:, 1:]], axis=1), axis=1, dtype=np.int32)


def _topk_from_levels(levels: np.ndarray, codes: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """(T, k) relative levels and (T,) split codes → top-k logprobs (T, k) and log tail (T,), float32 each.
    The writer calls this too, so the trace logprob is stored against exactly what the reader decodes."""
    log_mass, log_tail = grid.split_from_codes(codes)
    return (grid.dequantize(levels) + log_mass[:, None]).astype(np.float32), log_tail.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the trace token's logprob
#
# With top-k stored, the trace token is nearly always one of the k: it is stored as its rank there
# (k = "not among them", those ids stored apart). Its logprob is stored against the decoded top-k value at
# that rank (the k-th where absent; 0 without a top-k): in fp32 only where the two differ, in compact as a
# multiple of TRACE_STEP beside it (versions 1–2 took the grid's value, off by up to 0.13 nats and capped at
# 0.995). Unknown logprobs (NaN) are listed apart.


def _encode_trace(sampled: np.ndarray, reference: np.ndarray, spec: CacheSpec) -> bytes:
    """(T,) engine logprobs (float32, NaN: unknown) stored against (T,) float32 `reference`."""
    if spec.precision == "fp32":
        where = np.flatnonzero(sampled.view(np.int32) != reference.view(np.int32)).astype(np.int32)
        return _frame(pack_array(where), pack_array(sampled[where]))
    unknown = np.isnan(sampled)
    target = np.clip(np.where(unknown, reference, sampled), LOGPROB_FLOOR, 0.0).astype(np.float64)
    steps = np.rint((target - reference) / TRACE_STEP).astype(np.int32)
    return _frame(pack_array(np.flatnonzero(unknown).astype(np.int32)), pack_array(steps))


def _decode_trace(data: bytes, reference: np.ndarray, spec: CacheSpec) -> np.ndarray:
    """Inverse of `_encode_trace`: (T,) float32."""
    where_bytes, value_bytes = _unframe(data)
    where = unpack_array(where_bytes, np.int32)
    if spec.precision == "fp32":
        out = reference.copy()
        out[where] = unpack_array(value_bytes, np.float32)
        return out
    out = (reference.astype(np.float64) + unpack_array(value_bytes, np.int32) * TRACE_STEP).astype(np.float32)
    out[where] = np.nan
    return out


def _decode_trace_v2(data: bytes, reference: np.ndarray, spec: CacheSpec) -> np.ndarray:
    """Versions 1–2: `reference` (the top-k value) where exact, else the value stored, as float32 or as a
    `GRID_V2` level (NaN apart); without a top-k, every value is stored (an empty list of positions)."""
    where_bytes, value_bytes = _unframe(data)
    fp32 = spec.precision == "fp32"
    values = (
        unpack_array(value_bytes, np.float32)
        if fp32
        else GRID_V2.decode_nan_levels(unpack_array(value_bytes, np.int32))
    )
    if spec.top_k == 0:
        return values
    out = reference.copy()
    out[unpack_array(where_bytes, np.int32)] = values
    return out


# ---------------------------------------------------------------------------------------------
# record fields


def _ranks(record: Record, k: int) -> np.ndarray:
    """(T,) rank of each trace token in its top-k row, k where absent."""
    match = record.topk_ids == record.completion_ids[:, None]
    return np.where(match.any(axis=1), match.argmax(axis=1), k).astype(np.int32)


def encode_fields(record: Record, spec: CacheSpec) -> dict[str, bytes]:
    """Pack one record's arrays (validated by the writer) into one byte string per field, in format `FORMAT_VERSION`."""
    k, t = spec.top_k, record.num_tokens
    out = {"prompt_ids": pack_array(record.prompt_ids.astype(np.int32))}
    sampled = record.sampled_logprobs.astype(np.float32)
    reference = np.zeros(t, np.float32)
    if k == 0:
        out["completion_ids"] = pack_array(record.completion_ids.astype(np.int32))
    else:
        out["topk_ids"] = pack_array(record.topk_ids.astype(np.int32))
        tail = record.tail_logprobs if record.tail_logprobs is not None else topk_tail_logprobs(record.topk_logprobs)
        if spec.precision == "fp32":
            decoded = record.topk_logprobs.astype(np.float32)
            out["topk_logprobs"] = pack_array(decoded)
            out["tail_logprobs"] = pack_array(np.asarray(tail, np.float32))
        else:
            lp = record.topk_logprobs.astype(np.float64)
            top = lp[:, :1]
            log_mass = np.minimum(np.log(np.exp(lp - top).sum(axis=1)) + top[:, 0], 0.0)  # (T,) log Σ_S p
            codes = GRID_V3.split_codes(log_mass, np.asarray(tail, np.float64))
            levels = GRID_V3.quantize(lp - log_mass[:, None])  # the top-k's shape, at its own scale
            out["tail_logprobs"] = pack_array(codes)
            out["topk_logprobs"] = _pack_steps(levels)
            decoded = _topk_from_levels(levels, codes, GRID_V3)[0]
        ranks = _ranks(record, k)
        absent = ranks == k
        out["completion_ids"] = _frame(pack_array(ranks), pack_array(record.completion_ids[absent].astype(np.int32)))
        reference = decoded[np.arange(t), np.minimum(ranks, k - 1)]
    out["sampled_logprobs"] = _encode_trace(sampled, reference, spec)
    if spec.extra_k > 0 and record.extra_ids is not None:
        out["extra_ids"] = pack_array(record.extra_ids.astype(np.int32))
        out["extra_logprobs"] = pack_array(np.asarray(record.extra_logprobs, np.float32))
    return out


def decode_fields(
    fields: dict[str, bytes | None], num_tokens: int, spec: CacheSpec, version: int = FORMAT_VERSION
) -> dict[str, np.ndarray | None]:
    """Inverse of `encode_fields` for a record of format `version`: its arrays (None: field absent)."""
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
    decode_trace = _decode_trace if version >= 3 else _decode_trace_v2
    if k == 0:
        out["topk_ids"] = np.zeros((t, 0), np.int32)
        out["topk_logprobs"] = np.zeros((t, 0), np.float32)
        out["completion_ids"] = unpack_array(fields["completion_ids"], np.int32)
        out["sampled_logprobs"] = decode_trace(fields["sampled_logprobs"], np.zeros(t, np.float32), spec)
        return out
    topk_ids = unpack_array(fields["topk_ids"], np.int32).reshape(t, k)
    split = fields.get("tail_logprobs")
    if spec.precision == "fp32":
        topk_lp = unpack_array(fields["topk_logprobs"], np.float32).reshape(t, k)
        if split is not None:
            out["tail_logprobs"] = unpack_array(split, np.float32)
    else:
        grid = GRID_V3 if version >= 3 else GRID_V2
        levels = _unpack_steps(fields["topk_logprobs"], t, k, banded=version >= 3)
        if split is not None:  # versions 2 and 3: levels are relative to the top-k's mass
            topk_lp, out["tail_logprobs"] = _topk_from_levels(levels, unpack_array(split, np.int32), grid)
        else:
            topk_lp = grid.dequantize(levels)
    rank_bytes, absent_bytes = _unframe(fields["completion_ids"])
    ranks = unpack_array(rank_bytes, np.int32)
    rows = np.arange(t)
    clipped = np.minimum(ranks, k - 1)
    completion = topk_ids[rows, clipped]
    completion[ranks == k] = unpack_array(absent_bytes, np.int32)
    sampled = decode_trace(fields["sampled_logprobs"], topk_lp[rows, clipped].copy(), spec)
    out.update(topk_ids=topk_ids, topk_logprobs=topk_lp, completion_ids=completion, sampled_logprobs=sampled)
    return out
