"""The typed schemas of index.json, shard headers and views: round trips, old versions, refusals.

What the schema must not change is the bytes on disk: an index read and written back is the same
file, key for key and byte for byte, so caches written before the schema existed keep working.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from distill.cache import CacheIndex, CacheSpec, CacheWriter, View, list_views, load_view, open_cache, write_view
from distill.cache.format import (
    FORMAT_VERSION,
    INDEX_NAME,
    ShardEntry,
    read_index,
    read_shard_header,
    shard_metadata,
    write_index,
)
from distill.errors import DistillError
from tests.cache.helpers import make_record

V1 = Path(__file__).parent / "data" / "v1-cache"
SPEC = CacheSpec(top_k=8, vocab_size=1000)


def write_cache(path: Path, n: int = 12, finish: bool = True) -> Path:
    rng = np.random.default_rng(0)
    w = CacheWriter(path, SPEC, key="k", provenance={"teacher": "tiny", "sampling": {"t": 0.6}}, shard_bytes=2000)
    for i in range(n):
        w.append(make_record(rng, i))
    w.finish(provenance={"engine": "hf", "note": "ünïcode"}) if finish else w.close()
    return path


def edit_index(path: Path, **changes: object) -> None:
    doc = json.loads((path / INDEX_NAME).read_text())
    doc.update(changes)
    (path / INDEX_NAME).write_text(json.dumps(doc))


def test_an_index_read_and_written_back_is_the_same_file(tmp_path: Path) -> None:
    path = write_cache(tmp_path / "c")
    before = (path / INDEX_NAME).read_bytes()
    index = read_index(path)
    assert index.format_version == FORMAT_VERSION and index.key == "k" and index.complete and index.finished
    assert index.spec == SPEC
    assert index.provenance == {"teacher": "tiny", "sampling": {"t": 0.6}, "engine": "hf", "note": "ünïcode"}
    assert len(index.shards) > 2 and all(isinstance(e, ShardEntry) for e in index.shards)
    assert (index.records, index.tokens) == (12, open_cache(path).num_tokens)
    assert index.bytes == sum((path / e.name).stat().st_size for e in index.shards)
    write_index(tmp_path, index)
    assert (tmp_path / INDEX_NAME).read_bytes() == before
    assert CacheIndex.from_json(json.loads(before)) == index


def test_the_keys_are_those_every_distill_has_written(tmp_path: Path) -> None:
    """The version-1 fixture was written by the dict-literal writer: same keys, same order."""
    old = json.loads((V1 / INDEX_NAME).read_text())
    new = read_index(write_cache(tmp_path / "c")).to_json()
    assert list(new) == list(old)
    assert list(new["shards"][0]) == list(old["shards"][0]) == ["name", "bytes", "sha256", "records", "tokens"]
    assert list(new["spec"]) == ["top_k", "vocab_size", "extra_k", "extra_temperature", "precision"]
    assert [k for k in new["spec"] if k in old["spec"]] == list(old["spec"])  # version 2 added extra_temperature


def test_an_unfinished_index_has_no_finished_time(tmp_path: Path) -> None:
    index = read_index(write_cache(tmp_path / "c", finish=False))
    assert not index.complete and index.finished is None and "finished" not in index.to_json()


def test_a_version_1_index_reads_with_the_defaults_of_its_day(tmp_path: Path) -> None:
    index = read_index(V1)
    assert index.format_version == 1 and index.complete
    assert index.spec == CacheSpec(top_k=8, vocab_size=1000, extra_temperature=1.0)  # v1 stored no temperature
    assert [(e.name, e.records, e.tokens) for e in index.shards] == [("shard-00000.safetensors", 6, 242)]
    header = read_shard_header(V1 / index.shards[0].name)
    assert header.format_version == 1 and len(header.metas) == 6 and set(header.tensors) == {"blob", "spans", "lengths"}


def test_an_unfinished_version_1_cache_is_not_continued(tmp_path: Path) -> None:
    path = shutil.copytree(V1, tmp_path / "v1")
    edit_index(path, complete=False)
    with pytest.raises(DistillError, match="format version 1.*delete it"):
        CacheWriter(path, CacheSpec(top_k=8, vocab_size=1000), key="v1-fixture")
    with pytest.raises(ValueError, match=f"writes format version {FORMAT_VERSION} only"):
        write_index(tmp_path, read_index(path))


@pytest.mark.parametrize("version", [4, 0, "2", None, True])
def test_unknown_versions_are_refused_in_one_sentence(tmp_path: Path, version: object) -> None:
    path = write_cache(tmp_path / "c")
    edit_index(path, format_version=version)
    with pytest.raises(DistillError) as err:
        read_index(path)
    message = str(err.value)
    assert f"format version {version!r}" in message and "it reads versions 1, 2, 3" in message
    assert message.endswith(".") and message.count(". ") == 0 and "\n" not in message
    with pytest.raises(DistillError, match="format version"):
        open_cache(path)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"key": None}, "field 'key' is None, expected a string"),
        ({"complete": "yes"}, "field 'complete' is 'yes', expected true or false"),
        ({"shards": {}}, "field 'shards' is {}, expected a list"),
        ({"spec": {"top_k": 8}}, "field 'vocab_size' is missing"),
        ({"spec": {"top_k": 8, "vocab_size": 1000, "colour": 1}}, "unknown key 'colour'"),
        ({"spec": {"top_k": -1, "vocab_size": 1000}}, "top_k must be ≥ 0"),
    ],
)
def test_a_damaged_index_is_a_sentence_naming_the_field(tmp_path: Path, change: dict, says: str) -> None:
    path = write_cache(tmp_path / "c")
    edit_index(path, **change)
    with pytest.raises(DistillError, match="index.json is damaged") as err:
        read_index(path)
    assert says in str(err.value)


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"name": "../../etc/passwd"}, "expected a file name inside the cache"),
        ({"records": 1.5}, "field 'records' is 1.5, expected an integer"),
        ({"sha256": None}, "field 'sha256' is None"),
    ],
)
def test_a_damaged_shard_entry_names_the_shard_and_field(tmp_path: Path, entry: dict, says: str) -> None:
    path = write_cache(tmp_path / "c")
    shards = json.loads((path / INDEX_NAME).read_text())["shards"]
    shards[1].update(entry)
    edit_index(path, shards=shards)
    with pytest.raises(DistillError, match="shard 1: ") as err:
        open_cache(path)
    assert says in str(err.value)


def test_shard_headers_round_trip_and_unknown_shard_versions_are_refused(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    metas = [{"prompt_id": "q0", "sample_index": 0, "answer": "ünï"}]
    save_file({"blob": np.zeros(3, np.uint8)}, tmp_path / "s.safetensors", metadata=shard_metadata(SPEC, metas))
    header = read_shard_header(tmp_path / "s.safetensors")
    assert header.format_version == FORMAT_VERSION and header.metas == metas
    assert header.tensors["blob"] == {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]}
    assert header.data_start == (tmp_path / "s.safetensors").stat().st_size - 3
    save_file({"blob": np.zeros(3, np.uint8)}, tmp_path / "v9.safetensors", metadata={"distill_format": "9"})
    with pytest.raises(DistillError, match="format '9', which this distill does not read"):
        read_shard_header(tmp_path / "v9.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\0\0\0\0\0\0\0{junk")
    with pytest.raises(DistillError, match="junk.safetensors is unreadable"):
        read_shard_header(tmp_path / "junk.safetensors")


def test_a_view_round_trips_as_a_typed_document(tmp_path: Path) -> None:
    cache = open_cache(write_cache(tmp_path / "c"))
    extra = {
        "verifiers": ["math"],
        "keep": "all",
        "report": {"passed": 2},
        "verdicts": {"0": {"math": ["passed", "ok"]}},
    }
    path = write_view(cache, "ok", [5, 0], extra=extra)
    view = load_view(cache, "ok")
    assert view == View(cache_key="k", name="ok", records=12, kept=[0, 5], extra=extra, format_version=FORMAT_VERSION)
    assert list(json.loads(path.read_text())) == ["format_version", "cache_key", "name", "records", *extra, "kept"]
    assert View.from_json(view.to_json()) == view
    with pytest.raises(ValueError, match="must not be named kept"):
        View("k", "x", 1, [], extra={"kept": [0]})


@pytest.mark.parametrize(
    ("change", "says"),
    [({"format_version": 7}, "format version 7, which this distill does not know"), ({"kept": ["0"]}, "damaged")],
)
def test_an_unknown_or_damaged_view_is_refused_and_listed_as_unreadable(
    tmp_path: Path, change: dict, says: str
) -> None:
    cache = open_cache(write_cache(tmp_path / "c"))
    path = write_view(cache, "v", [1])
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(DistillError, match=says):
        load_view(cache, "v")
    assert list_views(cache.path) == {"v": -1}
