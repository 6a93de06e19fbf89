"""Several teacher caches in one training run: their kept records mixed by weight, packed, resumable by step.

`distill train --cache A --cache B` reads each cache through a `PackedLoader` of its own (its records, its
top-k width, its collate function: the cross-tokenizer one when aligned); `MixedLoader` decides which of their
records each step trains on, and has PackedLoader's interface (`steps_per_epoch`, `step_rows`, `step`). Choices:

- a weight is a share of records: cache i gives a share w_i of every epoch's records, and an epoch has as many
  records as the caches keep together (N = Σ n_i). The default weights, n_i / N, read every record once per
  epoch, as a one-cache run does;
- each cache's records come from an endless stream of its own seeded permutations, so a down-weighted cache is
  read through before any record repeats and an up-weighted one cycles in a fresh order each pass; epochs
  0..e take exactly ⌊w_i · N · (e + 1)⌋ records of cache i (exact fractions), so the weights hold to one
  record over any number of steps;
- each cache's records of an epoch are packed into rows of their own (a row never mixes caches) and the rows of
  all caches are shuffled together: a step's rows mix caches, its micro-batches are split by cache, so each
  cache's loss uses its own teacher arrays (top-k width, vocabulary map across tokenizers) and is reported apart
  (`ce/NAME`, `kd/NAME` in metrics.jsonl);
- like PackedLoader's, every plan is a function of (seed, epoch): `step(s)` needs nothing but s, so a resumed run
  reads what an uninterrupted one reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from distill.cache import Record, TeacherCache
from distill.data import Batch, PackedLoader, pack_rows

_STREAM, _SHUFFLE = 1, 2  # seed tags: a cache's record stream, the shuffle of an epoch's rows


@dataclass
class CacheFeed:
    """One `train --cache` as the run reads it (or the `--traces`, with no cache)."""

    name: str
    """how metrics and listings call it: its teacher's name (`name_feeds`)"""
    cache: TeacherCache | None
    view: str | None
    records: Sequence[Record]
    """the cache's records, or (--cross-tokenizer) its kept ones re-tokenised for the student"""
    indices: np.ndarray
    """(kept,) the records trained on, indices into `records`"""
    lengths: np.ndarray
    """(len(records), 2) prompt and completion tokens of every record"""
    top_k: int
    extra_k: int
    vmap: Any = None
    """--cross-tokenizer: (V_teacher,) teacher id → student id"""
    alignment: Any = None
    """--cross-tokenizer: the alignment report of its records"""
    weight: float | None = None
    """its share of every epoch's records (several caches)"""

    def describe(self) -> dict[str, Any]:
        """What run manifests and `distill_train.json` record of it."""
        assert self.cache is not None
        return {"name": self.name, "cache": str(self.cache.path), "cache_key": self.cache.key, "view": self.view,
                "records": len(self.indices), "weight": self.weight}  # fmt: skip


def name_feeds(feeds: list[CacheFeed]) -> list[CacheFeed]:
    """Name each cache by its teacher (the last part of a path or hub id); teachers named twice get their position
    in --cache (1-based) appended."""
    base = [str(f.cache.provenance.get("teacher") or f.cache.key[:8]).rstrip("/").split("/")[-1] for f in feeds]
    for i, f in enumerate(feeds):
        f.name = base[i] if base.count(base[i]) == 1 else f"{base[i]}-{i + 1}"
    return feeds


def record_weights(counts: Sequence[int], weights: Sequence[float] | None = None) -> list[Fraction]:
    """Each cache's share of an epoch's records, exact: `weights` normalised, or by record count (`counts`)."""
    raw = [Fraction(n) for n in counts] if weights is None else [Fraction(w) for w in weights]
    total = sum(raw)
    return [w / total for w in raw]


class MixedLoader:
    """Steps of packed rows over several caches' records (one `PackedLoader` each), mixed by `weights`.

    `step(s)` returns this rank's micro-batches for global optimizer step s, each holding one cache's rows
    (`Batch.source` says which), and the step's loss tokens over all ranks.
    """

    def __init__(
        self,
        sources: Sequence[PackedLoader],
        weights: Sequence[Fraction],
        rows_per_step: int,
        micro_rows: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if rows_per_step % world_size:
            raise ValueError(f"rows per step ({rows_per_step}) must be divisible by the world size ({world_size})")
        self.sources, self.weights = list(sources), list(weights)
        self.rows_per_step, self.micro_rows, self.seed = rows_per_step, micro_rows, seed
        self.rank, self.world_size = rank, world_size
        self.epoch_records = sum(len(s.indices) for s in self.sources)  # N
        self._plans: dict[int, list[tuple[int, list[int]]]] = {}

    def picks(self, source: int, epoch: int) -> np.ndarray:
        """Positions into source `source`'s selected records (`indices`) that epoch `epoch` reads, in order."""
        n, share = len(self.sources[source].indices), self.weights[source] * self.epoch_records
        start, end = math.floor(share * epoch), math.floor(share * (epoch + 1))
        passes = range(start // n, (end - 1) // n + 1) if end > start else range(0)
        stream = [np.random.default_rng([self.seed, _STREAM, source, p]).permutation(n) for p in passes]
        offset = passes.start * n if passes else 0
        return np.concatenate(stream)[start - offset : end - offset] if stream else np.zeros(0, np.int64)

    def _plan(self, epoch: int) -> list[tuple[int, list[int]]]:
        """Epoch `epoch`'s rows as (source, record indices into that source's cache), shuffled across caches."""
        if epoch not in self._plans:
            rows = []
            for i, src in enumerate(self.sources):
                chosen = self.picks(i, epoch)
                for row in pack_rows(range(len(chosen)), [src.lengths[p] for p in chosen], src.max_length):
                    rows.append((i, [src.indices[chosen[j]] for j in row]))
            order = np.random.default_rng([self.seed, _SHUFFLE, epoch]).permutation(len(rows))
            self._plans = {epoch: [rows[j] for j in order]}
        return self._plans[epoch]

    @property
    def steps_per_epoch(self) -> int:
        """Full steps per epoch (a last partial step is dropped so every step has the same shape)."""
        return max(len(self._plan(0)) // self.rows_per_step, 1)

    def step_rows(self, step: int) -> list[tuple[int, list[int]]]:
        """All ranks' rows of global step `step`, as (source, record indices into that source's cache)."""
        epoch, s = divmod(step, self.steps_per_epoch)
        plan = self._plan(epoch)
        return [plan[(s * self.rows_per_step + j) % len(plan)] for j in range(self.rows_per_step)]

    def step(self, step: int) -> tuple[list[Batch], int]:
        """This rank's micro-batches for global step `step` (one cache each), and the step's loss tokens over all
        ranks."""
        rows = self.step_rows(step)
        global_tokens = sum(self.sources[i].row_tokens(row) for i, row in rows)
        mine = rows[self.rank :: self.world_size]
        batches = []
        for at in range(0, len(mine), self.micro_rows):
            chunk = mine[at : at + self.micro_rows]
            for i in dict.fromkeys(i for i, _ in chunk):  # the chunk's caches, in order of first appearance
                src = self.sources[i]
                batch = src.collate_rows([[src.cache[j] for j in row] for k, row in chunk if k == i])
                batch.source = i
                batches.append(batch)
        return batches, global_tokens
