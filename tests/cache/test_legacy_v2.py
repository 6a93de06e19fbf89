"""Format version 2 caches keep reading with their own grid, to the values version 2's reader gave.

`data/v2-cache` was written by distill's version-2 writer (commit d554484): six LM-like records of k = 8;
record 0 starts at a near-certain position (top-1 1 − 2e-5, stored tail 1e-5); record 1 starts with three
positions flat over a vocabulary of 151,936 (its top-8 hold 5.3e-5 of the mass). `data/v2-decoded.npz` is
what version 2's reader decoded from it. The flat positions are the exception: version 2's reader read their
split codes as tail codes (top-k −inf, tail 0); the codes were unambiguous, so they now decode as written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from distill.cache import FORMAT_VERSION, CacheSpec, CacheWriter, open_cache
from distill.cache.admin import cache_info, merge_caches
from distill.errors import DistillError
from tests.cache.helpers import make_record

DATA = Path(__file__).parent / "data"
V2 = DATA / "v2-cache"
FLAT = (1, slice(0, 3))  # record, positions


def test_a_version_2_cache_reads_and_verifies(tmp_path: Path) -> None:
    cache = open_cache(shutil.copytree(V2, tmp_path / "v2"))
    assert cache.format_version == 2 < FORMAT_VERSION and cache_info(cache.path)["format_version"] == 2
    assert cache.verify() == []
    assert [r.num_tokens for r in cache] == [45, 25, 46, 32, 37, 24]


def test_a_version_2_cache_decodes_to_what_version_2_read(tmp_path: Path) -> None:
    before = np.load(DATA / "v2-decoded.npz")
    for i, rec in enumerate(open_cache(shutil.copytree(V2, tmp_path / "v2"))):
        for name in ("topk_logprobs", "tail_logprobs", "sampled_logprobs"):
            want, got = before[f"{name}_{i}"].copy(), getattr(rec, name).copy()
            if i == FLAT[0]:
                want[FLAT[1]] = got[FLAT[1]] = 0.0  # checked below
            np.testing.assert_array_equal(got, want, err_msg=f"record {i} {name}")
    assert rec.tail_logprobs.dtype == np.float32 and rec.topk_logprobs.dtype == np.float32
    # the near-certain position keeps its stored tail (1e-5) within the grid's 0.25-nat step
    assert np.exp(before["tail_logprobs_0"][0]) == pytest.approx(1e-5, rel=0.14)


def test_flat_positions_of_a_version_2_cache_now_decode_as_written(tmp_path: Path) -> None:
    before = np.load(DATA / "v2-decoded.npz")
    assert np.isneginf(before["topk_logprobs_1"][FLAT[1]]).all() and (before["tail_logprobs_1"][FLAT[1]] == 0).all()
    rec = open_cache(shutil.copytree(V2, tmp_path / "v2"))[FLAT[0]]
    np.testing.assert_allclose(rec.topk_logprobs[FLAT[1]], -np.log(151_936), atol=0.13, rtol=0)
    np.testing.assert_allclose(rec.tail_logprobs[FLAT[1]], np.log1p(-8 / 151_936), atol=1e-5, rtol=0)
    # version 2 took the trace logprob from the row: now the row's (grid) value, finite
    np.testing.assert_allclose(rec.sampled_logprobs[FLAT[1]], -np.log(151_936), atol=0.13, rtol=0)


def test_an_unfinished_version_2_cache_is_read_but_not_continued(tmp_path: Path) -> None:
    path = shutil.copytree(V2, tmp_path / "v2")
    index = json.loads((path / "index.json").read_text())
    (path / "index.json").write_text(json.dumps({**index, "complete": False}))
    assert len(open_cache(path, allow_incomplete=True)) == 6
    with pytest.raises(DistillError, match="format version 2.*cannot be continued.*delete it") as err:
        CacheWriter(path, CacheSpec(top_k=8, vocab_size=1000), key="v2-fixture")
    assert str(err.value).endswith(".") and "\n" not in str(err.value)


def test_caches_of_two_versions_are_not_merged(tmp_path: Path, rng: np.random.Generator) -> None:
    new = tmp_path / "v3"
    with CacheWriter(new, CacheSpec(top_k=8, vocab_size=1000), key="v3") as writer:
        for i in range(4):
            rec = make_record(rng, 100 + i, k=8)
            rec.topk_logprobs = -np.sort(-rec.topk_logprobs, axis=1)
            writer.append(rec)
        writer.finish()
    for sources in ([new, V2], [V2, new]):
        out = tmp_path / "merged"
        with pytest.raises(DistillError, match="format version 2.*regenerate") as err:
            merge_caches(sources, out)
        assert str(err.value).endswith(".") and "\n" not in str(err.value)
        assert not out.exists()  # refused before anything is written
