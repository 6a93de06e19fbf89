"""Codec fidelity: exact ids, bounded logprob error, KL ≤ 1e-3 nats per position on LM-like data."""

from __future__ import annotations

import numpy as np
import pytest

from distill.cache import CacheSpec, Record, codec
from distill.cache.format import topk_tail_logprobs
from distill.cache.synthetic import (
    half_mass_logprobs,
    lm_like_logprobs,
    near_equal_logprobs,
    topk_kl,
    zipf_topk_ids,
)
from tests.cache.helpers import make_record


@pytest.mark.parametrize("k", [20, 64])
def test_compact_logprobs_keep_kl_below_budget_on_lm_like_data(rng: np.random.Generator, k: int) -> None:
    lp = lm_like_logprobs(rng, 20_000, k)
    levels = codec.quantize_logprobs(lp)
    kl = topk_kl(lp, codec.dequantize_logprobs(levels))
    assert kl.mean() <= 1e-3
    assert np.quantile(kl, 0.99) <= 5e-3


def test_quantiser_error_is_small_where_probability_is_large() -> None:
    lp = np.linspace(-0.01, -3.0, 500, dtype=np.float32)
    err = np.abs(codec.dequantize_logprobs(codec.quantize_logprobs(lp)) - lp)
    # uniform in sqrt(p): the step in nats near p=1 is ~0.0104, and stays below 0.05 down to p=0.05
    assert err[lp > -0.5].max() < 0.02
    assert err.max() < 0.13


def test_the_grid_steps_meet_at_the_knee() -> None:
    """Version 2's knee sat where the level's value matched, not its step: 0.25 nats below it, 0.121 above."""
    levels = np.unique(codec.quantize_logprobs(np.linspace(codec.LOGPROB_FLOOR, 0.0, 1_000_000)))
    # ascending levels, ascending logprobs: the step in nats at each level
    steps = np.diff(np.unique(codec.dequantize_logprobs(levels).astype(np.float64)))
    assert (steps[1:] <= steps[:-1] * (1 + 1e-4)).all()  # the more probable the value, the finer (float32 aside)
    # no jump where the two parts meet: at most the ratio of two neighbouring √p steps, (n + 1) / n at the knee
    assert (steps[:-1] / steps[1:]).max() < 1.2


def test_quantiser_clamps_minus_infinity_and_keeps_order() -> None:
    lp = np.array([0.0, -1e-6, -2.0, -40.0, -np.inf], np.float32)
    out = codec.dequantize_logprobs(codec.quantize_logprobs(lp))
    assert np.isfinite(out).all() and out[-1] == pytest.approx(codec.LOGPROB_FLOOR, abs=0.25)
    assert (np.diff(out) <= 0).all()


@pytest.mark.parametrize("precision", ["compact", "fp32"])
@pytest.mark.parametrize("k", [0, 1, 8])
def test_record_round_trip(rng: np.random.Generator, precision: str, k: int) -> None:
    spec = CacheSpec(top_k=k, vocab_size=1000, precision=precision)
    for i in range(20):
        rec = make_record(rng, i, k=k)
        if k:
            order = np.argsort(-rec.topk_logprobs, axis=1, kind="stable")
            rec.topk_ids = np.take_along_axis(rec.topk_ids, order, axis=1)
            rec.topk_logprobs = np.take_along_axis(rec.topk_logprobs, order, axis=1)
        rec.sampled_logprobs[0] = np.nan  # unknown logprobs survive as NaN
        out = codec.decode_fields(codec.encode_fields(rec, spec), rec.num_tokens, spec)
        np.testing.assert_array_equal(out["prompt_ids"], rec.prompt_ids)
        np.testing.assert_array_equal(out["completion_ids"], rec.completion_ids)
        np.testing.assert_array_equal(out["topk_ids"], rec.topk_ids)
        assert np.isnan(out["sampled_logprobs"][0])
        # compact: half a 0.25-nat step, on logprobs stored relative to the top-k's mass (plus that mass's error)
        tol = 0 if precision == "fp32" else 0.14
        np.testing.assert_allclose(out["topk_logprobs"], rec.topk_logprobs, atol=tol, rtol=0)
        # the trace logprob is stored on its own, within half a TRACE_STEP (plus float32 rounding)
        tol = 0 if precision == "fp32" else codec.TRACE_STEP / 2 + 1e-5
        np.testing.assert_allclose(out["sampled_logprobs"][1:], rec.sampled_logprobs[1:], atol=tol, rtol=0)
        if k:  # the tail is stored; without one given, it is the top-k's complement
            want = topk_tail_logprobs(rec.topk_logprobs)
            np.testing.assert_allclose(out["tail_logprobs"], want, atol=0 if precision == "fp32" else 0.13, rtol=0)
        else:
            assert out["tail_logprobs"] is None


def test_ids_compress_well_below_fixed_width_on_zipfian_stream(rng: np.random.Generator) -> None:
    ids = zipf_topk_ids(rng, 5000, 20, 151_936, 1.1)
    bits = 8 * len(codec.pack_array(ids)) / ids.size
    assert bits < 13.0  # fixed-width packing would need 18 bits at this vocabulary


# ---------------------------------------------------------------------------------------------
# the KD target a perfect student sees: decoded vs exact, top-k buckets + tail, τ = 1


def _decoded_kl(topk_lp: np.ndarray, tail_lp: np.ndarray, renorm: bool = False) -> np.ndarray:
    """Per position KL(decoded ‖ exact) over the k+1 buckets (or the renormalised k), after a compact round trip."""
    n, k = topk_lp.shape
    ids = np.tile(np.arange(k, dtype=np.int32), (n, 1))
    rec = Record(
        np.zeros(2, np.int32),
        ids[:, 0].copy(),
        ids,
        topk_lp.astype(np.float32),
        topk_lp[:, 0].astype(np.float32),
        {"prompt_id": "p", "sample_index": 0},
        tail_logprobs=tail_lp.astype(np.float32),
    )
    spec = CacheSpec(top_k=k, vocab_size=k + 1)
    out = codec.decode_fields(codec.encode_fields(rec, spec), n, spec)

    def buckets(lp: np.ndarray, tail: np.ndarray) -> np.ndarray:
        b = lp.astype(np.float64) if renorm else np.concatenate([lp, tail[:, None]], 1).astype(np.float64)
        return b - np.logaddexp.reduce(b, axis=1, keepdims=True)

    got, want = buckets(out["topk_logprobs"], out["tail_logprobs"]), buckets(topk_lp, tail_lp)
    p = np.exp(got)
    return np.where(p > 0, p * (got - np.where(p > 0, want, 0.0)), 0.0).sum(1)


@pytest.mark.parametrize("top1", [0.99, 0.999, 0.9999, 1 - 1e-5, 1 - 1e-6, 1 - 1e-7])
@pytest.mark.parametrize("tail_share", [0.0, 0.01, 0.5, 0.99])
def test_near_certain_positions_keep_their_tail(rng: np.random.Generator, top1: float, tail_share: float) -> None:
    """Version 1 decoded every top-1 in [0.9875, 1] as 0.995 and a tail of 1e-5 as 4.9e-3: now ≤ 1e-3 nats."""
    rest = 1.0 - top1
    tail = rest * tail_share
    others = rng.dirichlet(np.full(19, 0.5), 500) * (rest - tail)
    lp = np.log(np.concatenate([np.full((500, 1), top1), others], 1))
    lp = -np.sort(-lp, axis=1)
    tail_lp = np.full(500, np.log(tail) if tail > 0 else -np.inf)
    assert _decoded_kl(lp, tail_lp).max() <= 1e-3
    assert _decoded_kl(lp, tail_lp, renorm=True).max() <= 1e-3


@pytest.mark.parametrize("tail", [1e-4, 0.1, 0.5, 0.9, 0.999])
def test_high_entropy_positions_keep_their_shape_and_tail(rng: np.random.Generator, tail: float) -> None:
    """A top-k holding little mass is quantised at its own scale, so the renormalised target stays exact too."""
    lp = -np.sort(-np.log(rng.dirichlet(np.full(20, 0.3), 1000) * (1 - tail) + 1e-30), axis=1)
    tail_lp = np.full(1000, np.log(tail))
    assert _decoded_kl(lp, tail_lp).max() <= 1e-3
    assert _decoded_kl(lp, tail_lp, renorm=True).max() <= 1e-3


def test_an_empty_tail_stays_empty() -> None:
    lp = np.log(np.array([[0.7, 0.2, 0.1]]))
    rec = Record(
        np.zeros(1, np.int32),
        np.zeros(1, np.int32),
        np.array([[0, 1, 2]], np.int32),
        lp.astype(np.float32),
        lp[:, 0].astype(np.float32),
        {"prompt_id": "p", "sample_index": 0},
        tail_logprobs=np.array([-np.inf], np.float32),
    )
    for precision in ("compact", "fp32"):
        spec = CacheSpec(top_k=3, vocab_size=3, precision=precision)
        out = codec.decode_fields(codec.encode_fields(rec, spec), 1, spec)
        assert np.isneginf(out["tail_logprobs"][0])


@pytest.mark.parametrize("k", [2, 8, 20, 64])
@pytest.mark.parametrize("teacher", [near_equal_logprobs, half_mass_logprobs])
def test_adversarial_positions_stay_within_budget(rng: np.random.Generator, k: int, teacher) -> None:
    """Every value half a cell from where it decodes, errors of alternating sign: the worst case is ≈ (k+1)·S²/8
    (8.8e-4 at k = 64); version 2's grid reached 1.7e-3 at k = 20 and 5.3e-3 at k = 64."""
    lp, tail_lp = teacher(rng, 1000, k)
    assert _decoded_kl(lp, tail_lp).max() <= 1e-3
    assert _decoded_kl(lp, tail_lp, renorm=True).max() <= 1e-3


# ---------------------------------------------------------------------------------------------
# the trace token's logprob: what the cross-tokenizer span term, ULD and best-of-n read raw


@pytest.mark.parametrize("precision", ["compact", "fp32"])
@pytest.mark.parametrize("k", [0, 1, 8])
def test_the_trace_logprob_decodes_as_the_engine_gave_it_at_every_p(precision: str, k: int) -> None:
    """Version 2 read it off the grid: up to 0.13 nats off, and any p ≥ 0.995 read as 0.995 (0.005 nats at p = 1)."""
    top = np.array([1 - 1e-7, 1 - 1e-5, 0.9999, 0.999, 0.995, 0.99, 0.9, 0.6, 0.5, 0.3, 0.1, 0.02])
    t = len(top) + 4
    probs = np.concatenate([top, [0.5, 0.5, 0.5, 0.5]])[:, None] * 0.5 ** np.arange(max(k, 1))[None, :]
    lp = np.log(probs[:, :k]).astype(np.float32)
    ids = np.tile(np.arange(k, dtype=np.int32), (t, 1))
    completion = np.zeros(t, np.int32)
    sampled = np.log(probs[:, 0]).astype(np.float32)
    completion[-4:], sampled[-4:] = [k, k, k, 0], [-9.3, -35.0, -np.inf, np.nan]  # absent from the top-k; unknown
    if k > 1:
        completion[3], sampled[3] = k - 1, lp[3, k - 1]  # a trace token further down the row
    rec = Record(np.zeros(1, np.int32), completion, ids, lp, sampled, {"prompt_id": "p", "sample_index": 0})
    spec = CacheSpec(top_k=k, vocab_size=k + 1, precision=precision)
    out = codec.decode_fields(codec.encode_fields(rec, spec), t, spec)["sampled_logprobs"]
    assert np.isnan(out[-1]) and out[-2] == pytest.approx(-np.inf if precision == "fp32" else -80.0, abs=1e-3)
    err = np.abs(out[:-2].astype(np.float64) - sampled[:-2])
    assert err.max() <= (0 if precision == "fp32" else 1e-3)
