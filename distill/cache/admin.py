"""Housekeeping over the cache root: list caches, summarise one, and clean up after crashes.

These back `distill cache ls | info | verify | gc`. They read index files and directory
listings only (no shard decoding), so they are fast on a root holding terabytes of caches.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from distill.atomic import TMP_SUFFIX
from distill.cache.format import FORMAT_VERSION, INDEX_NAME, SHARD_GLOB, read_index
from distill.cache.key import merged_key
from distill.cache.lock import LOCK_NAME, WriterLock
from distill.cache.reader import TeacherCache
from distill.cache.views import list_views
from distill.errors import DistillError


def directory_bytes(path: Path) -> int:
    """Bytes of every file under `path`."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def cache_info(path: str | Path) -> dict[str, Any]:
    """A summary of one cache (what `distill cache info --json` prints)."""
    cache = TeacherCache(path, allow_incomplete=True, check=False)
    prov = cache.provenance
    on_disk = directory_bytes(cache.path)
    return {
        "path": str(cache.path),
        "key": cache.key,
        "format_version": cache.format_version,
        "complete": cache.complete,
        "records": len(cache),
        "tokens": cache.num_tokens,
        "top_k": cache.spec.top_k,
        "extra_k": cache.spec.extra_k,
        "extra_temperature": cache.spec.extra_temperature,
        "precision": cache.spec.precision,
        "vocab_size": cache.spec.vocab_size,
        "shards": len(cache.index.shards),
        "bytes_on_disk": on_disk,
        "bytes_per_token": round(on_disk / cache.num_tokens, 3) if cache.num_tokens else None,
        "teacher": prov.get("teacher"),
        "tokenizer_fingerprint": prov.get("tokenizer_fingerprint"),
        "views": list_views(cache.path),
        "provenance": prov,
    }


def list_caches(root: Path) -> list[dict[str, Any]]:
    """One summary row per cache directory under `root` (unreadable ones say why)."""
    rows = []
    for d in sorted(p for p in Path(root).glob("*") if p.is_dir()) if Path(root).is_dir() else []:
        try:
            rows.append(cache_info(d))
        except DistillError as e:
            rows.append({"path": str(d), "key": d.name, "error": str(e)})
    return rows


def garbage(root: Path, incomplete: bool = False) -> list[Path]:
    """What `gc` would remove under `root`: leftovers of crashed writers, and with `incomplete`
    also whole caches that were never finished. Caches a live writer holds are skipped."""
    found: list[Path] = []
    for d in sorted(p for p in Path(root).glob("*") if p.is_dir()) if Path(root).is_dir() else []:
        with WriterLock(d, wait=False) as held:
            if not held:
                continue  # a generate is writing it right now
            if not (d / INDEX_NAME).exists():
                # a writer that died before its first shard left nothing worth keeping; a folder
                # holding anything else is not ours to delete
                if all(_is_writer_file(f) for f in d.iterdir()):
                    found.append(d)
                continue
            try:
                index = read_index(d)
            except DistillError:
                continue  # not ours to delete; `ls` reports it
            if incomplete and not index.complete:
                found.append(d)
                continue
            listed = {e.name for e in index.shards}
            for f in sorted(d.iterdir()):
                if f.name.endswith(TMP_SUFFIX) or (f.match(SHARD_GLOB) and f.name not in listed):
                    found.append(f)
    return found


def _is_writer_file(f: Path) -> bool:
    return f.name == LOCK_NAME or f.name.endswith(TMP_SUFFIX) or f.match(SHARD_GLOB)


def remove(paths: list[Path]) -> int:
    """Delete files and directories; returns the bytes freed."""
    freed = 0
    for p in paths:
        if p.is_dir():
            freed += directory_bytes(p)
            shutil.rmtree(p)
        elif p.exists():
            freed += p.stat().st_size
            p.unlink()
    return freed


def merge_caches(sources: list[str | Path], out: Path | None = None) -> Path:
    """Join caches made by slices of one run (`--shard-index/--num-shards`) into one cache.

    The inputs must agree on everything but the slice (spec, teacher, tokenizer, prompts, sampling);
    shards are copied byte for byte, never re-encoded. When the slices cover 0..N-1 exactly, the
    merged cache gets the key an unsliced run would have had, so that run is then a cache hit.
    """
    from distill.cache.writer import CacheWriter
    from distill.paths import cache_root

    if len(sources) < 2:
        raise DistillError("Give at least two caches to merge.")
    caches = [TeacherCache(s) for s in sources]
    for c in caches:  # shards are copied as they are, so they must all be of the version written here
        if c.format_version != FORMAT_VERSION:
            raise DistillError(
                f"Cannot merge: {c.path} is cache format version {c.format_version} and this distill merges version "
                f"{FORMAT_VERSION} only; regenerate it with this distill."
            )
    seen: dict[str, Path] = {}
    for c in caches:  # found before anything is written: `merge A A` used to leave a shard and an incomplete index
        if c.key in seen:
            same = f"{c.path} is the same cache as {seen[c.key]} (key {c.key})"
            raise DistillError(f"Cannot merge: {same}; give it once.")
        seen[c.key] = c.path
    first = caches[0]
    parts0 = dict(first.provenance.get("key_parts", {}))
    for c in caches[1:]:
        if c.spec != first.spec:
            raise DistillError(f"Cannot merge: {c.path} stores {c.spec}, {first.path} stores {first.spec}.")
        parts = dict(c.provenance.get("key_parts", {}))
        for name in sorted(set(parts0) | set(parts)):
            if name != "slice" and parts.get(name) != parts0.get(name):
                raise DistillError(
                    f"Cannot merge: {c.path} and {first.path} differ in {name} "
                    f"({parts.get(name)!r} vs {parts0.get(name)!r}); they are not slices of one run."
                )
        if c.provenance.get("tokenizer_fingerprint") != first.provenance.get("tokenizer_fingerprint"):
            raise DistillError(f"Cannot merge: {c.path} and {first.path} were made with different tokenizers.")
    key, whole = merged_key([c.key for c in caches], [dict(c.provenance.get("key_parts", {})) for c in caches])
    provenance = {**first.provenance, **({"key_parts": whole} if whole else {})}
    provenance["merged_from"] = [c.key for c in caches]
    if first.provenance.get("padding"):  # the slices' folded padding entries, summed (see distill.recording)
        counts = [c.provenance.get("padding", {}) for c in caches]
        provenance["padding"] = {
            **first.provenance["padding"],
            **{name: sum(p.get(name, 0) for p in counts) for name in ("folded_entries", "folded_positions")},
        }
    path = Path(out) if out else cache_root() / key
    fresh = not path.exists()
    writer = CacheWriter(path, first.spec, key, provenance)
    merged = None
    try:
        for c in caches:
            for entry in c.index.shards:
                writer.adopt_shard(c.path / entry.name, entry)
        tokenizer = _SavedTokenizer(first.tokenizer_path) if first.tokenizer_path else None
        merged = writer.finish(tokenizer=tokenizer)
        return merged
    finally:
        writer.close()
        if merged is None and fresh:  # a merge that fails (overlapping slices, a full disk) leaves no half cache
            shutil.rmtree(path, ignore_errors=True)


class _SavedTokenizer:
    """A tokenizer directory that `CacheWriter.finish` can "save" (copy) like a tokenizer object."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def save_pretrained(self, target: Path) -> None:
        shutil.copytree(self.path, target)
