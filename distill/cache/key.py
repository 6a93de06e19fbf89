"""The cache key: what makes two caches the same, built in one place, one typed builder per source.

A cache directory is addressed by a hash of everything that determines its records and of the format version
they are written in (an older version is never a "hit" for a newer writer). Same inputs, same key, same
directory: that is what makes `distill generate` a no-op the second time and lets every experiment reuse one
teacher run. Each source says what its records depend on:

- `GeneratedKey` (`distill generate`): the teacher's weights, the prompt set and its rendering, sampling, top-k,
  seed, engine, storage precision, extra samples, the worker's slice of the prompts;
- `ScoredKey` (`distill score`): the teacher's weights, the traces scored, top-k, engine, precision, extra samples;
- `OnPolicyKey` (`distill onpolicy`'s OUT/cache): the teacher's weights, the student, and the run's settings;
- `merged_key` (`distill cache merge`): the slices of one generate run merge into that run's own key (as if
  run whole); anything else gets a key of its members'.

`parts()` is what the index's provenance keeps as `key_parts` (merge compares them field by field). The
fingerprints the parts are made of (weights, tokenizer, prompt set) are distill.fingerprint's.

`backend` is the engine that computes the teacher's numbers (vllm or hf: their sampling and numerics differ), never
where it runs: a teacher behind vLLM servers (--teacher-url) is vllm, so a cache written through servers and one
written in-process are the same cache, each a hit for the other (tests/test_serve.py); the URLs, concurrency and
retries of a served run are in no key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from distill.cache.format import FORMAT_VERSION
from distill.fingerprint import canonical_hash

LOGPROB_MODE = "raw"  # logprobs before temperature and top-p: what every source records


def cache_key(**parts: Any) -> str:
    """The content key of a cache made of `parts` (20 hex digits)."""
    return canonical_hash({"format_version": FORMAT_VERSION, **parts})[:20]


@dataclass(frozen=True)
class GeneratedKey:
    """What the records of a `distill generate` cache depend on."""

    teacher: str
    """The teacher's weights fingerprint (tokenizer files included)."""
    prompts: str
    """The prompt set's fingerprint."""
    prompt_style: dict[str, Any]
    """How a problem becomes the teacher's input (instruction, system prompt, think prefix)."""
    sampling: dict[str, Any]
    """Temperature, top-p, completion length, samples per prompt."""
    top_k: int
    seed: int
    backend: str
    dtype: str
    precision: str
    extra: list[Any] | None
    """[extra samples, their temperature], or None."""
    slice: list[int] | None
    """[shard index, number of shards] of a worker's part of the prompts, or None (all of them)."""
    logprob_mode: str = LOGPROB_MODE

    def parts(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> str:
        return cache_key(**self.parts())


@dataclass(frozen=True)
class ScoredKey:
    """What the records of a `distill score` cache depend on."""

    teacher: str
    """The teacher's weights fingerprint (tokenizer files included)."""
    traces: str
    """The fingerprint of the traces scored (their keys and token ids)."""
    top_k: int
    backend: str
    dtype: str
    precision: str
    extra: list[Any] | None
    logprob_mode: str = LOGPROB_MODE
    stage: str = "score"

    def parts(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> str:
        return cache_key(**self.parts())


@dataclass(frozen=True)
class OnPolicyKey:
    """What the teacher's scores of an on-policy run's rollouts depend on."""

    teacher: str
    """The teacher's weights fingerprint (tokenizer files included), as generate and score key on."""
    student: str
    """The student's weights fingerprint: its rollouts are what the teacher scores."""
    settings: dict[str, Any]
    """The run's settings that shape rollouts and scores (not its length, output or trackers)."""
    stage: str = "onpolicy"

    def parts(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> str:
        return cache_key(**self.parts())


def merged_key(keys: list[str], parts: list[dict[str, Any]]) -> tuple[str, dict[str, Any] | None]:
    """The key of caches merged, and the key parts it stands for: the slices of one generate run, all of them,
    merge into the run's own key (parts with slice None); anything else into a key of its members' (no parts)."""
    slices = [p.get("slice") for p in parts]
    whole = (
        bool(parts[0])
        and all(slices)
        and len({s[1] for s in slices}) == 1
        and sorted(s[0] for s in slices) == list(range(slices[0][1]))
    )
    if whole:
        merged = {**parts[0], "slice": None}
        return cache_key(**merged), merged
    return cache_key(merged=sorted(keys)), None
