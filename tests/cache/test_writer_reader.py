"""Writer and reader: round trip, shards, resume after a crash, refusal of damaged caches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distill.cache import CacheSpec, CacheWriter, open_cache
from distill.cache.format import INDEX_NAME
from distill.errors import DistillError
from tests.cache.helpers import make_record

REPO = Path(__file__).resolve().parents[2]
SPEC = CacheSpec(top_k=8, vocab_size=1000, precision="fp32")


def write_cache(path: Path, n: int, shard_bytes: int = 4000, spec: CacheSpec = SPEC) -> list:
    rng = np.random.default_rng(1)
    records = [make_record(rng, i, k=spec.top_k) for i in range(n)]
    with CacheWriter(path, spec, key="k1", provenance={"teacher": "t"}, shard_bytes=shard_bytes) as w:
        for r in records:
            w.append(r)
        w.finish()
    return records


def assert_same(a, b) -> None:
    for name in ("prompt_ids", "completion_ids", "topk_ids", "topk_logprobs", "sampled_logprobs"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.meta == b.meta


def test_round_trip_across_shards_is_exact_in_fp32(tmp_path: Path) -> None:
    records = write_cache(tmp_path / "c", 40)
    cache = open_cache(tmp_path / "c")
    assert len(cache.index.shards) > 3  # several shards, so the index arithmetic is exercised
    assert len(cache) == 40 and cache.num_tokens == sum(r.num_tokens for r in records)
    for got, want in zip(cache, records, strict=True):
        assert_same(got, want)
    assert_same(cache[-1], records[-1])
    assert [r.meta["answer"] for r in cache.records([5, 0, 33])] == ["5", "0", "33"]
    assert cache.keys()[:3] == [("q0", 0), ("q0", 1), ("q1", 0)]
    np.testing.assert_array_equal(cache.lengths()[:, 1], [r.num_tokens for r in records])
    assert cache.verify() == []
    with pytest.raises(IndexError):
        cache[40]


def test_topk_rows_are_stored_sorted_by_logprob(tmp_path: Path, rng: np.random.Generator) -> None:
    rec = make_record(rng, 0)
    perm = rng.permutation(SPEC.top_k)
    ids, lps = rec.topk_ids.copy(), rec.topk_logprobs.copy()
    rec.topk_ids, rec.topk_logprobs = ids[:, perm], lps[:, perm]
    with CacheWriter(tmp_path / "c", SPEC, key="k") as w:
        w.append(rec)
        w.finish()
    got = open_cache(tmp_path / "c")[0]
    assert (np.diff(got.topk_logprobs, axis=1) <= 0).all()
    np.testing.assert_array_equal(np.sort(got.topk_ids, axis=1), np.sort(ids, axis=1))


def test_bad_records_are_refused_with_a_sentence(tmp_path: Path, rng: np.random.Generator) -> None:
    w = CacheWriter(tmp_path / "c", SPEC, key="k")
    rec = make_record(rng, 0)
    rec.topk_ids[0, 0] = 5000
    with pytest.raises(DistillError, match="outside"):
        w.append(rec)
    rec = make_record(rng, 0)
    del rec.meta["sample_index"]
    with pytest.raises(DistillError, match="sample_index"):
        w.append(rec)
    w.append(make_record(rng, 0))
    with pytest.raises(DistillError, match="already in cache"):
        w.append(make_record(rng, 0))
    with pytest.raises(DistillError, match="larger than the vocabulary"):
        CacheWriter(tmp_path / "d", CacheSpec(top_k=2000, vocab_size=1000), key="k")


def test_repeated_topk_ids_and_bad_tails_are_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    """A repeated id counts its probability twice, so the student's tail would be understated."""
    w = CacheWriter(tmp_path / "c", SPEC, key="k")
    rec = make_record(rng, 0, tokens=5)
    rec.topk_ids[3, 4] = rec.topk_ids[3, 1]
    with pytest.raises(
        DistillError, match=r"top-k ids repeat within a position \(1 positions, first at completion token 3\)"
    ):
        w.append(rec)
    rec = make_record(rng, 1, tokens=5)
    rec.tail_logprobs = np.full(5, np.nan, np.float32)
    with pytest.raises(DistillError, match="tail_logprobs must be log masses"):
        w.append(rec)
    rec.tail_logprobs = np.zeros(4, np.float32)
    with pytest.raises(DistillError, match=r"tail_logprobs has shape \(4,\), expected \(5,\)"):
        w.append(rec)
    sampled = CacheWriter(tmp_path / "s", CacheSpec(top_k=8, vocab_size=1000, extra_k=2), key="s")
    rec = make_record(rng, 2, tokens=5)
    rec.extra_ids = np.zeros((5, 2), np.int32)
    with pytest.raises(DistillError, match="extra_logprobs .* must have shape"):
        sampled.append(rec)
    w.close()
    sampled.close()


def test_stored_tails_and_extra_samples_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    spec = CacheSpec(top_k=8, vocab_size=1000, extra_k=3, extra_temperature=2.0, precision="fp32")
    rec = make_record(rng, 0, tokens=7)
    rec.tail_logprobs = np.log(rng.uniform(1e-9, 0.9, 7)).astype(np.float32)
    rec.extra_ids = rng.integers(0, 1000, (7, 3)).astype(np.int32)
    rec.extra_logprobs = -rng.uniform(0, 9, (7, 3)).astype(np.float32)
    with CacheWriter(tmp_path / "c", spec, key="k") as w:
        w.append(rec)
        w.finish()
    cache = open_cache(tmp_path / "c")
    assert cache.spec.extra_temperature == 2.0
    out = cache[0]
    for name in ("tail_logprobs", "extra_ids", "extra_logprobs"):
        np.testing.assert_array_equal(getattr(out, name), getattr(rec, name), err_msg=name)


def test_incomplete_cache_is_refused_unless_asked(tmp_path: Path, rng: np.random.Generator) -> None:
    w = CacheWriter(tmp_path / "c", SPEC, key="k", shard_bytes=1)
    w.append(make_record(rng, 0))
    w.close()
    with pytest.raises(DistillError, match="incomplete"):
        open_cache(tmp_path / "c")
    assert len(open_cache(tmp_path / "c", allow_incomplete=True)) == 1


def test_second_writer_on_a_live_cache_is_refused(tmp_path: Path) -> None:
    w = CacheWriter(tmp_path / "c", SPEC, key="k")
    with pytest.raises(DistillError, match="another process"):
        CacheWriter(tmp_path / "c", SPEC, key="k")
    w.close()
    CacheWriter(tmp_path / "c", SPEC, key="k").close()  # released: a rerun may continue it


def test_reopening_with_other_settings_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    with CacheWriter(tmp_path / "c", SPEC, key="k", shard_bytes=1) as w:
        w.append(make_record(rng, 0))
    with pytest.raises(DistillError, match="different cache"):
        CacheWriter(tmp_path / "c", SPEC, key="other")


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    write_cache(tmp_path / "c", 3)
    index = json.loads((tmp_path / "c" / INDEX_NAME).read_text())
    index["format_version"] = 99
    (tmp_path / "c" / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(DistillError, match="format version 99"):
        open_cache(tmp_path / "c")


def test_flipped_byte_fails_verify_and_reader_naming_the_shard(tmp_path: Path) -> None:
    write_cache(tmp_path / "c", 20)
    shard = tmp_path / "c" / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    cache = open_cache(tmp_path / "c")
    problems = cache.verify()
    assert len(problems) == 1 and "shard-00001" in problems[0]
    first_of_shard_1 = cache.index.shards[0].records
    cache[0]  # shard 0 is sound and still readable
    with pytest.raises(DistillError, match="shard-00001.*checksum"):
        cache[first_of_shard_1]
    cli = subprocess.run(
        [sys.executable, "-m", "distill", "cache", "verify", str(tmp_path / "c")], capture_output=True, text=True
    )
    assert cli.returncode == 1 and "shard-00001" in cli.stderr


WRITER_SCRIPT = """
import sys, time, numpy as np
from distill.cache import CacheSpec, CacheWriter
from tests.cache.helpers import make_record
spec = CacheSpec(top_k=8, vocab_size=1000, precision="fp32")
w = CacheWriter(sys.argv[1], spec, key="k", provenance={"teacher": "t"}, shard_bytes=3000)
done = w.done_keys()
for i in range(int(sys.argv[2])):
    rec = make_record(np.random.default_rng(i), i)
    if rec.key in done:
        continue
    time.sleep(0.005)  # a teacher takes a while per record; lets the kill land mid-run
    w.append(rec)
    print(i, flush=True)
w.finish()
print("finished", flush=True)
"""


def run_writer(path: Path, n: int, kill_after: int | None = None) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(path), str(n)], stdout=subprocess.PIPE, text=True, env=env
    )
    lines = 0
    for _line in proc.stdout:
        lines += 1
        if kill_after is not None and lines == kill_after:
            os.kill(proc.pid, signal.SIGKILL)  # mid-stream: some shards done, a buffer and maybe a temp file not
            break
    proc.wait()
    return proc.returncode


def test_sigkill_mid_write_then_resume_gives_every_record_once(tmp_path: Path) -> None:
    path, n = tmp_path / "c", 120
    assert run_writer(path, n, kill_after=70) == -signal.SIGKILL
    partial = open_cache(path, allow_incomplete=True)
    assert not partial.complete and 0 < len(partial) < n  # finished shards kept, the buffer lost
    assert run_writer(path, n) == 0
    cache = open_cache(path)
    keys = cache.keys()
    assert len(keys) == len(set(keys)) == n
    expected = {make_record(np.random.default_rng(i), i).key: i for i in range(n)}
    assert set(keys) == set(expected)
    for rec in cache:
        assert_same(rec, make_record(np.random.default_rng(expected[rec.key]), expected[rec.key]))
    assert cache.verify() == []
    assert not list(path.glob("*.tmp"))


def test_writer_flushes_finished_records_when_the_caller_fails(tmp_path: Path, rng: np.random.Generator) -> None:
    with pytest.raises(RuntimeError), CacheWriter(tmp_path / "c", SPEC, key="k") as w:
        for i in range(5):
            w.append(make_record(rng, i))
        raise RuntimeError("engine died")
    assert len(open_cache(tmp_path / "c", allow_incomplete=True)) == 5


def test_many_readers_at_once(tmp_path: Path) -> None:
    write_cache(tmp_path / "c", 10)
    readers = [open_cache(tmp_path / "c") for _ in range(3)]
    assert all(len(r) == 10 for r in readers)
    t0 = time.perf_counter()
    assert all(r[3].meta["answer"] == "3" for r in readers)
    assert time.perf_counter() - t0 < 30
