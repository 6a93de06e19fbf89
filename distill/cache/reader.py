"""Reading a teacher cache: `open_cache(path)` → `TeacherCache`, a read-only sequence of records.

    from distill.cache import open_cache
    cache = open_cache("~/.cache/distill/caches/3fa2…")
    len(cache), cache.spec.top_k
    rec = cache[0]                       # Record: prompt_ids, completion_ids, topk_ids (T×k),
    rec.topk_logprobs, rec.meta          # topk_logprobs (T×k float32), sampled_logprobs, meta
    batch = cache.records([3, 7, 11])    # batch decode
    cache.keys()                         # (prompt_id, sample_index) per record, without decoding

Shards are memory-mapped and opened lazily; a shard's checksum is verified the first time it is
read, and a mismatch raises naming the shard. Any number of processes can read one cache at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distill.cache import codec
from distill.cache.format import (
    FIELD_INDEX,
    INDEX_NAME,
    TOKENIZER_DIR,
    CacheIndex,
    CacheSpec,
    Record,
    ShardEntry,
    read_index,
    read_shard_header,
    topk_tail_logprobs,
)
from distill.errors import DistillError
from distill.paths import cache_root

_DTYPES = {"U8": np.uint8, "I64": np.int64}


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * 2**20):
            h.update(chunk)
    return h.hexdigest()


class Shard:
    """One memory-mapped shard file; decodes its records on demand."""

    def __init__(self, path: Path, entry: ShardEntry, spec: CacheSpec, check: bool = True) -> None:
        self.path = path
        if check:
            actual = sha256_file(path)
            if actual != entry.sha256:
                raise DistillError(
                    f"Shard {path.name} of cache {path.parent} failed its checksum (corrupt or modified); "
                    "delete the cache and regenerate it, or restore the file."
                )
        header = read_shard_header(path)
        self.spec = spec
        self.format_version = header.format_version  # what its fields mean (grid, layout) is the shard's to say
        self.metas: list[dict[str, Any]] = header.metas
        raw = np.memmap(path, dtype=np.uint8, mode="r")
        start, tensors = header.data_start, {}
        for name, desc in header.tensors.items():
            begin, end = desc["data_offsets"]
            tensors[name] = raw[start + begin : start + end].view(_DTYPES[desc["dtype"]]).reshape(desc["shape"])
        self.blob = tensors["blob"]
        self.spans = np.asarray(tensors["spans"])  # (records, fields, 2), small
        self.lengths = np.asarray(tensors["lengths"])  # (records, 2)

    def __len__(self) -> int:
        return len(self.metas)

    def _field(self, row: int, name: str) -> bytes | None:
        j = FIELD_INDEX[name]
        if j >= self.spans.shape[1]:  # a field added after this shard's format version
            return None
        offset, length = self.spans[row, j]
        return None if length < 0 else self.blob[offset : offset + length].tobytes()

    def record(self, row: int) -> Record:
        """Decode record `row` of this shard."""
        fields = {name: self._field(row, name) for name in FIELD_INDEX}
        arrays = codec.decode_fields(fields, int(self.lengths[row, 1]), self.spec, self.format_version)
        if arrays["tail_logprobs"] is None and self.spec.top_k:
            arrays["tail_logprobs"] = topk_tail_logprobs(arrays["topk_logprobs"])  # version 1: see V1_TAIL_NOTE
        return Record(meta=dict(self.metas[row]), **arrays)


def resolve_cache_path(path: str | Path) -> Path:
    """A cache directory from a path, or from a key (or unique key prefix) under the cache root."""
    p = Path(path).expanduser()
    if p.exists() or "/" in str(path):
        return p
    matches = sorted(cache_root().glob(f"{path}*")) if cache_root().is_dir() else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise DistillError(
            f"Cache key {path!r} is ambiguous under {cache_root()}: {', '.join(m.name for m in matches)}."
        )
    return p


class TeacherCache(Sequence[Record]):
    """A read-only view of a teacher cache directory (see module docstring)."""

    def __init__(self, path: str | Path, allow_incomplete: bool = False, check: bool = True) -> None:
        self.path = resolve_cache_path(path)
        self.index: CacheIndex = read_index(self.path)
        if not self.index.complete and not allow_incomplete:
            raise DistillError(
                f"Cache {self.path} is incomplete (its generation was interrupted); rerun the same "
                "`distill generate` command to finish it."
            )
        self.key = self.index.key
        self.format_version = self.index.format_version
        self.spec = self.index.spec
        self.provenance = self.index.provenance
        self._entries = self.index.shards
        counts = [e.records for e in self._entries]
        self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._shards: dict[int, Shard] = {}
        self._check = check
        for e in self._entries:
            f = self.path / e.name
            if not f.is_file() or f.stat().st_size != e.bytes:
                raise DistillError(
                    f"Shard {e.name} of cache {self.path} is missing or has the wrong size; "
                    "the cache is damaged, regenerate it."
                )

    @property
    def tokenizer_path(self) -> Path | None:
        """Directory of the teacher's tokenizer saved with the cache (None for caches without one)."""
        path = self.path / TOKENIZER_DIR
        return path if path.is_dir() else None

    @property
    def complete(self) -> bool:
        return self.index.complete

    @property
    def num_tokens(self) -> int:
        """Completion tokens over all records."""
        return self.index.tokens

    def __len__(self) -> int:
        return int(self._starts[-1])

    def shard(self, s: int) -> Shard:
        if s not in self._shards:
            self._shards[s] = Shard(self.path / self._entries[s].name, self._entries[s], self.spec, self._check)
        return self._shards[s]

    def _locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"record {i} out of range for a cache of {n} records")
        i %= n
        s = int(np.searchsorted(self._starts, i, side="right")) - 1
        return s, i - int(self._starts[s])

    def __getitem__(self, i: int) -> Record:  # type: ignore[override]
        s, row = self._locate(int(i))
        return self.shard(s).record(row)

    def __iter__(self) -> Iterator[Record]:
        for s in range(len(self._entries)):
            shard = self.shard(s)
            for row in range(len(shard)):
                yield shard.record(row)

    def records(self, indices: Sequence[int]) -> list[Record]:
        """Decode a batch of records (in the order given)."""
        return [self[i] for i in indices]

    def metas(self) -> list[dict[str, Any]]:
        """Every record's metadata, in record order, without decoding arrays or checking checksums."""
        return [m for e in self._entries for m in read_shard_header(self.path / e.name).metas]

    def keys(self) -> list[tuple[str, int]]:
        """(prompt_id, sample_index) of every record, in record order."""
        return [(str(m["prompt_id"]), int(m["sample_index"])) for m in self.metas()]

    def lengths(self) -> np.ndarray:
        """(records, 2) int64: prompt and completion token counts, without decoding."""
        parts = [self.shard(s).lengths for s in range(len(self._entries))]
        return np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)

    def verify(self) -> list[str]:
        """Every problem found by checking sizes, checksums and decoding every record; empty if sound."""
        problems = []
        for e in self._entries:
            try:
                shard = Shard(self.path / e.name, e, self.spec, check=True)
                if len(shard) != e.records or int(shard.lengths[:, 1].sum()) != e.tokens:
                    problems.append(f"{e.name}: record or token count disagrees with {INDEX_NAME}")
                    continue
                for row in range(len(shard)):
                    shard.record(row)
            except DistillError as err:
                problems.append(str(err))
            except Exception as err:  # a shard that passes its checksum but does not decode
                problems.append(f"{e.name}: does not decode ({type(err).__name__}: {err})")
        return problems


def open_cache(path: str | Path, allow_incomplete: bool = False) -> TeacherCache:
    """Open a teacher cache for reading (see module docstring)."""
    return TeacherCache(path, allow_incomplete=allow_incomplete)
