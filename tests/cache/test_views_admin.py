"""Views (the filter's selections) and housekeeping: info, ls, gc."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distill.cache import FORMAT_VERSION, CacheSpec, CacheWriter, list_views, open_cache, view_indices, write_view
from distill.cache.admin import cache_info, garbage, list_caches, remove
from distill.errors import DistillError
from distill.paths import cache_root
from tests.cache.helpers import make_record


def make_cache(path: Path, n: int, key: str = "k", finish: bool = True) -> None:
    rng = np.random.default_rng(0)
    w = CacheWriter(
        path,
        CacheSpec(top_k=4, vocab_size=1000),
        key=key,
        provenance={"teacher": "tiny", "tokenizer_fingerprint": "abc"},
        shard_bytes=500,
    )
    for i in range(n):
        w.append(make_record(rng, i, k=4))
    w.finish() if finish else w.close()


def test_view_round_trip_and_cross_cache_refusal(tmp_path: Path) -> None:
    make_cache(tmp_path / "a", 10, key="ka")
    make_cache(tmp_path / "b", 10, key="kb")
    a, b = open_cache(tmp_path / "a"), open_cache(tmp_path / "b")
    write_view(a, "correct", [7, 1, 3], extra={"verdicts": {"1": "ok"}})
    np.testing.assert_array_equal(view_indices(a, "correct"), [1, 3, 7])
    assert list_views(a.path) == {"correct": 3}
    (b.path / "views").mkdir()
    (b.path / "views" / "correct.json").write_text((a.path / "views" / "correct.json").read_text())
    with pytest.raises(DistillError, match="written for cache ka"):
        view_indices(b, "correct")
    with pytest.raises(DistillError, match="no view 'other'.*views: correct"):
        view_indices(a, "other")
    with pytest.raises(DistillError, match="does not have"):
        write_view(a, "bad", [10])


def test_info_reports_the_documented_fields(tmp_path: Path) -> None:
    make_cache(tmp_path / "a", 6)
    write_view(open_cache(tmp_path / "a"), "v", [0, 2])
    info = cache_info(tmp_path / "a")
    cache = open_cache(tmp_path / "a")
    assert info["format_version"] == FORMAT_VERSION == 3 and info["records"] == 6 and info["tokens"] == cache.num_tokens
    assert info["top_k"] == 4 and info["vocab_size"] == 1000 and info["teacher"] == "tiny"
    assert info["tokenizer_fingerprint"] == "abc" and info["views"] == {"v": 2}
    on_disk = sum(f.stat().st_size for f in (tmp_path / "a").rglob("*") if f.is_file())
    assert info["bytes_on_disk"] == on_disk
    assert info["bytes_per_token"] == pytest.approx(on_disk / cache.num_tokens, abs=1e-3)


def test_ls_and_gc_over_the_cache_root(tmp_path: Path) -> None:
    root = cache_root()
    make_cache(root / "done", 5, key="done")
    make_cache(root / "partial", 5, key="partial", finish=False)
    (root / "partial" / "shard-00099.safetensors").write_bytes(b"half a shard")  # crash after rename
    (root / "partial" / "index.json.tmp").write_bytes(b"{")
    (root / "dead").mkdir()
    (root / "dead" / "shard-00000.safetensors.tmp").write_bytes(b"x" * 100)
    (root / "notmine").mkdir()
    (root / "notmine" / "notes.txt").write_text("keep me")
    rows = {r["key"]: r for r in list_caches(root)}
    assert rows["done"]["complete"] and not rows["partial"]["complete"] and "error" in rows["notmine"]

    found = garbage(root)
    assert set(found) == {
        root / "partial" / "shard-00099.safetensors",
        root / "partial" / "index.json.tmp",
        root / "dead",
    }
    assert remove(found) == 12 + 1 + 100
    assert len(open_cache(root / "partial", allow_incomplete=True)) == 5  # finished shards untouched
    assert (root / "notmine" / "notes.txt").exists()
    assert garbage(root, incomplete=True) == [root / "partial"]


def test_gc_skips_a_cache_being_written(tmp_path: Path) -> None:
    root = cache_root()
    w = CacheWriter(root / "live", CacheSpec(top_k=4, vocab_size=1000), key="live")
    (root / "live" / "shard-00000.safetensors.tmp").write_bytes(b"in flight")
    assert garbage(root) == []
    w.close()
    assert garbage(root) == [root / "live"]
