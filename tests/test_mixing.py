"""Several caches in one run (distill.mixing): mixing weights honoured over many steps, every record read, resumable,
micro-batches of one cache each."""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from distill.data import PackedLoader
from distill.mixing import MixedLoader, record_weights
from tests.test_data import record

K = (3, 5)  # the two caches keep different top-k widths


def source(n: int, k: int, seed: int, rows: int = 4, rank: int = 0, world: int = 1) -> PackedLoader:
    """A cache of n records (each 4–12 prompt and 3–20 completion tokens) behind its own PackedLoader."""
    rng = np.random.default_rng(seed)
    records = [record(seed * 1000 + i, int(rng.integers(4, 13)), int(rng.integers(3, 21)), k) for i in range(n)]
    lengths = np.array([[len(r.prompt_ids), len(r.completion_ids)] for r in records])
    return PackedLoader(records, np.arange(n), lengths, 64, rows, 2, 7, 0, k, 0, rank, world)


def mixed(weights: list[float] | None, sizes: tuple[int, int] = (40, 90), **kw: int) -> MixedLoader:
    sources = [source(n, k, seed, **kw) for seed, (n, k) in enumerate(zip(sizes, K, strict=True))]
    shares = record_weights(list(sizes), weights)
    return MixedLoader(sources, shares, kw.get("rows", 4), 2, 7, kw.get("rank", 0), kw.get("world", 1))


def records_read(loader: MixedLoader, steps: int) -> Counter:
    """(cache, record) → times read in the first `steps` steps."""
    return Counter((i, j) for s in range(steps) for i, row in loader.step_rows(s) for j in row)


@pytest.mark.parametrize("weights", [[3.0, 1.0], [1.0, 9.0], [0.5, 0.5]])
def test_weights_are_honoured_over_many_steps(weights: list[float]) -> None:
    loader = mixed(weights)
    read = records_read(loader, 400)
    per_cache = [sum(v for (i, _), v in read.items() if i == c) for c in (0, 1)]
    share = per_cache[0] / sum(per_cache)
    assert share == pytest.approx(weights[0] / sum(weights), abs=0.01), per_cache


def test_default_weights_read_every_record_once_per_epoch() -> None:
    loader = mixed(None)
    for epoch in range(3):
        for c, n in enumerate((40, 90)):
            assert sorted(loader.picks(c, epoch)) == list(range(n))  # each record once, in a fresh order
    assert not np.array_equal(loader.picks(0, 0), loader.picks(0, 1))


def test_a_down_weighted_cache_is_read_through_before_a_record_repeats() -> None:
    loader = mixed([1.0, 9.0])  # cache 0: 13 of 40 records an epoch
    stream = np.concatenate([loader.picks(0, e) for e in range(6)])
    assert [len(loader.picks(0, e)) for e in range(3)] == [13, 13, 13]
    assert sorted(stream[:40]) == list(range(40)) and sorted(stream[40:78]) == sorted(set(stream[40:78]))


def test_exact_fractions_keep_the_cumulative_count() -> None:
    """Epochs 0..e take exactly ⌊w·N·(e + 1)⌋ records of a cache: the weights never drift."""
    loader = mixed([2.0, 5.0], sizes=(7, 11))  # 18 · 2/7 = 5.14... records of cache 0 an epoch
    w = Fraction(2, 7)
    counts = [len(loader.picks(0, e)) for e in range(30)]
    assert set(counts) == {5, 6}
    for e in range(30):
        assert sum(counts[: e + 1]) == math.floor(w * 18 * (e + 1))


def test_steps_are_deterministic_and_need_nothing_but_the_step() -> None:
    running = mixed([2.0, 1.0])
    assert running.steps_per_epoch < 15
    walked = [running.step_rows(s) for s in range(60)]  # through several epochs
    for s in (37, 0, 5, 59, 3):  # a fresh loader at step s (a resumed run) reads what the running one read
        assert mixed([2.0, 1.0]).step_rows(s) == walked[s]
    a, b = mixed([2.0, 1.0]), mixed([2.0, 1.0])
    for s in (0, 5, 37, 3):
        (ba, ta), (bb, tb) = a.step(s), b.step(s)
        assert ta == tb and [x.source for x in ba] == [x.source for x in bb]
        for x, y in zip(ba, bb, strict=True):
            assert np.array_equal(x.input_ids, y.input_ids) and np.array_equal(x.topk_ids, y.topk_ids)


def test_micro_batches_hold_one_cache_each_with_its_own_top_k() -> None:
    loader = mixed([1.0, 1.0], rows=8)
    seen = set()
    for s in range(20):
        batches, tokens = loader.step(s)
        rows = loader.step_rows(s)
        assert sum(b.input_ids.shape[0] for b in batches) == len(rows)
        assert sum(b.num_tokens for b in batches) == tokens
        for b in batches:
            assert b.topk_ids.shape[-1] == K[b.source]
            seen.add(b.source)
    assert seen == {0, 1}


def test_every_world_size_sees_the_same_global_step() -> None:
    one = mixed([1.0, 3.0], rows=4)
    for rank in (0, 1):
        two = mixed([1.0, 3.0], rows=4, rank=rank, world=2)
        for s in range(10):
            assert two.step_rows(s) == one.step_rows(s)
            assert two.step(s)[1] == one.step(s)[1]
            assert sum(b.input_ids.shape[0] for b in two.step(s)[0]) == 2
