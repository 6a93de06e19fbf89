"""Format version 1 caches (written before tails were stored) keep reading, with their tails derived.

`data/v1-cache` was written by distill's version-1 writer (commit 6800ffb): six LM-like records of
k = 8, whose first position is near-certain (top-1 0.9999, true tail 1e-5). Nothing is lost: every
record decodes and verifies; the tail is derived from the quantised top-k, and that derivation is
exactly the inexactness `V1_TAIL_NOTE` warns about.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from distill.cache import FORMAT_VERSION, open_cache
from distill.cache.admin import cache_info
from distill.cache.format import V1_TAIL_NOTE, topk_tail_logprobs

V1 = Path(__file__).parent / "data" / "v1-cache"


def test_a_version_1_cache_reads_and_verifies(tmp_path: Path) -> None:
    path = shutil.copytree(V1, tmp_path / "v1")
    cache = open_cache(path)
    assert cache.format_version == 1 < FORMAT_VERSION
    assert cache_info(path)["format_version"] == 1
    assert cache.verify() == []
    records = list(cache)
    assert len(records) == 6 and sum(r.num_tokens for r in records) == cache.num_tokens
    for rec in records:
        assert rec.topk_logprobs.shape == (rec.num_tokens, 8) and rec.extra_logprobs is None
        np.testing.assert_array_equal(rec.tail_logprobs, topk_tail_logprobs(rec.topk_logprobs))


def test_version_1_tails_at_near_certain_positions_are_the_documented_inexactness(tmp_path: Path) -> None:
    """The true tail is 1e-5; version 1 quantised the top-1 to 0.995 and so derives ~5e-3 (×500)."""
    rec = open_cache(shutil.copytree(V1, tmp_path / "v1"))[0]
    derived = float(np.exp(rec.tail_logprobs[0]))
    assert 1e-3 < derived < 1e-2
    assert "format version 1" in V1_TAIL_NOTE and "regenerate" in V1_TAIL_NOTE
