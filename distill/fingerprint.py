"""Fingerprints: short hashes that say whether two things are the same.

- tokenizer: vocabulary, added/special tokens and chat template (ids in a cache only mean
  something together with the tokenizer that made them);
- teacher weights: hub id + revision, or a hash of a local directory's weight and config files
  (memoised by path, size and mtime, because hashing 64 GB of weights takes a minute);
- prompt set: every prompt's id, text and gold answer, in order;
- files: `sha256_file`, streamed (shard checksums, weight hashes).

The cache key that combines them lives with the cache (distill.cache.key).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from distill.atomic import write_json_atomic
from distill.paths import distill_home

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
CONFIG_NAMES = ("config.json", "generation_config.json")


def canonical_hash(obj: Any) -> str:
    """Hex SHA-256 of `obj` as canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of a Hugging Face tokenizer's vocabulary, added and special tokens, and chat template."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return canonical_hash(
        {
            "vocab": sorted(tokenizer.get_vocab().items()),
            "added": sorted((int(i), str(t)) for i, t in added.items()),
            "special": sorted(str(t) for t in getattr(tokenizer, "all_special_tokens", [])),
            "chat_template": getattr(tokenizer, "chat_template", None),
        }
    )[:16]


def vocabulary_fingerprint(tokenizer: Any) -> str:
    """Hash of the regular vocabulary only (token → id, without added/special tokens).

    Two tokenizers with equal regular vocabularies map ordinary text to the same ids even when their
    special tokens or chat templates differ (R1-Distill-Qwen teachers vs Qwen2.5 students)."""
    added = set(str(t) for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values())
    return canonical_hash(sorted((t, i) for t, i in tokenizer.get_vocab().items() if t not in added))[:16]


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 * 2**20):
            h.update(chunk)
    return h.hexdigest()


def weights_fingerprint(model: str | Path, revision: str | None = None, extra_names: tuple[str, ...] = ()) -> str:
    """Hash identifying a model: of its local weight and config files (plus `extra_names`, e.g. the
    tokenizer's) if `model` is a directory, else of hub id + revision."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return canonical_hash({"hub_id": str(model), "revision": revision or "main"})[:16]
    names = CONFIG_NAMES + tuple(extra_names)
    files = sorted(f for f in path.iterdir() if f.suffix in WEIGHT_SUFFIXES or f.name in names)
    stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    memo_path = distill_home() / "fingerprints.json"
    memo_key = canonical_hash({"path": str(path.resolve()), "stamp": stamp})
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if memo_key not in memo:
        memo[memo_key] = canonical_hash([(f.name, sha256_file(f)) for f in files])[:16]
        try:
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(memo_path, memo)
        except OSError:
            pass  # a read-only home only costs a re-hash next time
    return memo[memo_key]


def prompt_set_fingerprint(prompts: Iterable[dict[str, Any]]) -> str:
    """Hash of a prompt set: (id, text, gold answer) of every prompt, in order."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps([p.get("id"), p.get("prompt"), p.get("answer")], default=str).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]
