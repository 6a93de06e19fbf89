"""Writing a teacher cache: `CacheWriter` appends records and flushes them shard by shard.

Crash safety, the property users pay for: a shard is written to a temp name, fsynced and renamed;
then index.json (the list of finished shards) is replaced atomically. A writer reopened on an
unfinished cache keeps every finished shard, discards temp files and shards the index does not
list (a crash between rename and index update), and reports which (prompt, sample) pairs are
done, so the teacher stage generates only the rest. `finish()` marks the index complete; readers
refuse incomplete caches unless asked.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save as save_safetensors

from distill.atomic import TMP_SUFFIX, write_bytes_atomic
from distill.cache import codec
from distill.cache.format import (
    FIELDS,
    FORMAT_VERSION,
    INDEX_NAME,
    REQUIRED_META,
    SHARD_GLOB,
    SHARD_PATTERN,
    TOKENIZER_DIR,
    CacheIndex,
    CacheSpec,
    Record,
    ShardEntry,
    read_index,
    read_shard_header,
    shard_metadata,
    write_index,
)
from distill.cache.lock import LOCK_NAME, WriterLock
from distill.errors import DistillError

DEFAULT_SHARD_BYTES = 64 * 2**20


class CacheWriter:
    """Append-only writer for one cache directory; reopening an unfinished cache continues it."""

    def __init__(
        self,
        path: str | Path,
        spec: CacheSpec,
        key: str,
        provenance: dict[str, Any] | None = None,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
        extend: bool = False,
    ) -> None:
        """`extend`: a complete cache of the same key may be reopened to append more records (a finished
        on-policy run resumed for more steps); it is incomplete again until the next `finish()`."""
        problems = spec.problems()
        if problems:
            raise DistillError("Invalid cache settings: " + "; ".join(problems) + ".")
        self.path = Path(path)
        self.spec = spec
        self.key = key
        self.provenance = dict(provenance or {})
        self.shard_bytes = shard_bytes
        self.extend = extend
        self._buffer: list[tuple[Record, dict[str, bytes]]] = []
        self._buffer_bytes = 0
        self._done: set[tuple[str, int]] = set()
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = WriterLock(self.path)
        if not self._lock.acquire():
            raise DistillError(
                f"Cache {self.path} is being written by another process; wait for it to finish "
                "(a rerun afterwards resumes or reports a cache hit)."
            )
        self.discarded: list[str] = []
        try:
            self._open()
        except BaseException:
            self._lock.release()
            raise

    def _open(self) -> None:
        if (self.path / INDEX_NAME).exists():
            self._continue()
        else:
            self._clean(keep=set())
            self.index = CacheIndex(self.key, self.spec, self.provenance, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    # -----------------------------------------------------------------------------------------
    # reopening

    def _continue(self) -> None:
        self.index = read_index(self.path)
        if self.index.key != self.key or self.index.spec != self.spec:
            raise DistillError(
                f"{self.path} already holds a different cache (key {self.index.key}); "
                "choose another output directory or delete it."
            )
        if self.index.complete and self.extend:
            self.index.complete = False
        elif self.index.complete:
            raise DistillError(f"Cache {self.path} is already complete; it cannot be appended to.")
        if self.index.format_version != FORMAT_VERSION:
            raise DistillError(
                f"Cache {self.path} was started by an older distill (format version {self.index.format_version}) "
                "and cannot be continued by this one; delete it and run the command again."
            )
        listed = {e.name for e in self.index.shards}
        self._clean(keep=listed)
        for e in self.index.shards:
            shard = self.path / e.name
            if not shard.is_file() or shard.stat().st_size != e.bytes:
                raise DistillError(f"Shard {shard} listed in {INDEX_NAME} is missing or truncated; delete the cache.")
            for m in read_shard_header(shard).metas:
                self._done.add((str(m["prompt_id"]), int(m["sample_index"])))

    def _clean(self, keep: set[str]) -> None:
        """Remove temp files and shards that the index does not list (left by a crash)."""
        for f in sorted(self.path.iterdir()):
            if f.name.endswith(TMP_SUFFIX) or (f.match(SHARD_GLOB) and f.name not in keep):
                f.unlink()
                self.discarded.append(f.name)

    def done_keys(self) -> set[tuple[str, int]]:
        """(prompt_id, sample_index) of every record already written (finished shards and buffer)."""
        return set(self._done)

    # -----------------------------------------------------------------------------------------
    # appending

    def _check(self, r: Record) -> Record:
        missing = [k for k in REQUIRED_META if k not in r.meta]
        if missing:
            raise DistillError(f"Record metadata lacks {', '.join(missing)} (got keys {sorted(r.meta)}).")
        t, spec = len(r.completion_ids), self.spec
        if r.topk_ids.shape != (t, spec.top_k) or r.topk_logprobs.shape != (t, spec.top_k):
            raise DistillError(
                f"Record {r.key}: top-k arrays have shapes {r.topk_ids.shape} / {r.topk_logprobs.shape}, "
                f"expected ({t}, {spec.top_k})."
            )
        if r.sampled_logprobs.shape != (t,):
            raise DistillError(
                f"Record {r.key}: sampled_logprobs has shape {r.sampled_logprobs.shape}, expected ({t},)."
            )
        if spec.extra_k and (r.extra_ids is None or r.extra_ids.shape != (t, spec.extra_k)):
            raise DistillError(f"Record {r.key}: extra_ids must have shape ({t}, {spec.extra_k}).")
        if spec.extra_k and (r.extra_logprobs is None or r.extra_logprobs.shape != (t, spec.extra_k)):
            raise DistillError(
                f"Record {r.key}: extra_logprobs (the teacher's logprobs of the extra samples) must have shape "
                f"({t}, {spec.extra_k})."
            )
        if r.tail_logprobs is not None:
            if r.tail_logprobs.shape != (t,):
                raise DistillError(f"Record {r.key}: tail_logprobs has shape {r.tail_logprobs.shape}, expected ({t},).")
            if np.isnan(r.tail_logprobs).any() or (r.tail_logprobs > 1e-6).any():
                raise DistillError(f"Record {r.key}: tail_logprobs must be log masses ≤ 0 (or −inf), got NaN or > 0.")
            r.tail_logprobs = np.minimum(r.tail_logprobs, 0.0).astype(np.float32)
        for name in ("prompt_ids", "completion_ids", "topk_ids", "extra_ids"):
            ids = getattr(r, name)
            if ids is not None and ids.size and (ids.min() < 0 or ids.max() >= spec.vocab_size):
                raise DistillError(
                    f"Record {r.key}: {name} holds ids outside [0, {spec.vocab_size}); the tokenizer does not "
                    "match the cache's vocabulary."
                )
        if np.isnan(r.topk_logprobs).any():
            raise DistillError(f"Record {r.key}: top-k logprobs contain NaN.")
        if spec.top_k > 1:
            # a repeated id would count its probability twice and understate the student's tail
            ids = np.sort(r.topk_ids, axis=1)
            repeated = np.flatnonzero((ids[:, 1:] == ids[:, :-1]).any(axis=1))
            if len(repeated):
                raise DistillError(
                    f"Record {r.key}: top-k ids repeat within a position ({len(repeated)} positions, first at "
                    f"completion token {repeated[0]}); each position needs k distinct token ids: check the engine "
                    "output."
                )
        if spec.top_k > 1:
            # the codec stores sorted rows as steps; order ties by id so the result is deterministic
            order = np.lexsort((r.topk_ids, -r.topk_logprobs), axis=1)
            r.topk_ids = np.take_along_axis(r.topk_ids, order, axis=1)
            r.topk_logprobs = np.take_along_axis(r.topk_logprobs, order, axis=1)
        return r

    def append(self, record: Record) -> None:
        """Add one record; flushes a shard when the buffer reaches `shard_bytes`."""
        record = self._check(record)
        if record.key in self._done:
            raise DistillError(f"Record {record.key} is already in cache {self.path}; each (prompt, sample) once.")
        fields = codec.encode_fields(record, self.spec)
        self._buffer.append((record, fields))
        self._buffer_bytes += sum(len(b) for b in fields.values())
        self._done.add(record.key)
        if self._buffer_bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        """Write buffered records as one shard, then list it in the index."""
        if not self._buffer:
            return
        blob, spans, lengths, metas = [], np.full((len(self._buffer), len(FIELDS), 2), -1, np.int64), [], []
        offset = 0
        for i, (record, fields) in enumerate(self._buffer):
            for j, name in enumerate(FIELDS):
                if name in fields:
                    spans[i, j] = (offset, len(fields[name]))
                    blob.append(fields[name])
                    offset += len(fields[name])
            lengths.append((len(record.prompt_ids), len(record.completion_ids)))
            metas.append(record.meta)
        tensors = {
            "blob": np.frombuffer(b"".join(blob), np.uint8) if blob else np.zeros(0, np.uint8),
            "spans": spans,
            "lengths": np.asarray(lengths, np.int64).reshape(-1, 2),
        }
        data = save_safetensors(tensors, metadata=shard_metadata(self.spec, metas))
        name = SHARD_PATTERN.format(len(self.index.shards))
        write_bytes_atomic(self.path / name, data)
        sha256, tokens = hashlib.sha256(data).hexdigest(), int(tensors["lengths"][:, 1].sum())
        self.index.shards.append(ShardEntry(name, len(data), sha256, len(self._buffer), tokens))
        # emptied before the index is written: a stop that lands in between (Ctrl-C, SIGTERM) can leave a shard
        # the index does not list (a rerun discards it and redoes its records), never one listed twice
        self._buffer, self._buffer_bytes = [], 0
        write_index(self.path, self.index)

    def adopt_shard(self, source: Path, entry: ShardEntry) -> None:
        """Copy a finished shard of another cache with the same spec (used by merge); its records
        must not be here yet. The copy is checked against the source index's checksum."""
        self.flush()
        data = Path(source).read_bytes()
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise DistillError(f"Shard {source} failed its checksum; run `distill cache verify` on its cache.")
        header = read_shard_header(Path(source))
        if header.format_version != FORMAT_VERSION:
            raise DistillError(
                f"Shard {source} is format version {header.format_version}, not {FORMAT_VERSION}; regenerate its "
                "cache with this distill before merging."
            )
        keys = [(str(m["prompt_id"]), int(m["sample_index"])) for m in header.metas]
        clash = [k for k in keys if k in self._done]
        if clash:
            raise DistillError(f"Record {clash[0]} of {source} is already in {self.path}; the caches overlap.")
        name = SHARD_PATTERN.format(len(self.index.shards))
        write_bytes_atomic(self.path / name, data)
        self.index.shards.append(replace(entry, name=name))
        self._done.update(keys)
        write_index(self.path, self.index)

    def finish(self, provenance: dict[str, Any] | None = None, tokenizer: Any = None) -> Path:
        """Flush, save the teacher's tokenizer (anything with `save_pretrained`) next to the shards,
        add final provenance, mark the cache complete. Returns the cache directory."""
        self.flush()
        if tokenizer is not None:
            tmp = self.path / (TOKENIZER_DIR + TMP_SUFFIX)
            shutil.rmtree(tmp, ignore_errors=True)
            tokenizer.save_pretrained(tmp)
            shutil.rmtree(self.path / TOKENIZER_DIR, ignore_errors=True)
            tmp.rename(self.path / TOKENIZER_DIR)
        self.index.provenance.update(provenance or {})
        self.index.complete = True
        self.index.finished = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_index(self.path, self.index)
        self._lock.release()
        return self.path

    def close(self) -> None:
        """Save every buffered record as a shard and release the cache; it stays incomplete."""
        try:
            if not self.index.complete:
                self.flush()
        finally:  # a flush that fails (a full disk) still releases the cache
            self._lock.release()
        # a writer that wrote nothing leaves nothing behind (no empty directory that looks like a cache)
        if not (self.path / INDEX_NAME).exists() and {f.name for f in self.path.iterdir()} <= {LOCK_NAME}:
            shutil.rmtree(self.path, ignore_errors=True)

    # Leaving a `with` block on an error still saves every finished record (nothing computed is lost).
    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()
