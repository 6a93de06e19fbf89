"""Training batches straight from a teacher cache: records packed into rows, teacher top-k aligned.

Choices:
- a record becomes prompt + completion tokens; the loss is on completion tokens only. Position j
  predicts token j+1, so the teacher's top-k for completion token t sits at position P+t-1;
- several records share a row (packing), with position ids restarting at every record: transformers
  then builds a block-diagonal causal mask, so no token attends across records;
- the order is a deterministic shuffle by (seed, epoch); rows are planned per epoch before training,
  so the number of loss tokens of every optimizer step is known before its first forward pass
  (needed to weight micro-batches and ranks exactly), and the loader's state is just
  (epoch, step) — saved with checkpoints, restored on resume;
- each optimizer step takes `rows_per_step` rows; rank r of W takes rows r, r+W, ... of them, so
  any world size sees the same global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from distill.cache import Record
from distill.cache.format import topk_tail_logprobs
from distill.losses import IGNORE_INDEX
from distill.losses.cross_tokenizer import AlignedTeacher


@dataclass
class Batch:
    """A micro-batch of packed rows."""

    input_ids: torch.Tensor
    """(rows, length) long"""
    position_ids: torch.Tensor
    """(rows, length) long, restarting at 0 for every record"""
    targets: torch.Tensor
    """(rows, length) long: the token position j must predict, IGNORE_INDEX where there is no loss"""
    topk_ids: torch.Tensor | None
    """(rows, length, k) long teacher top-k at each position (zeros where no loss), or None"""
    topk_logprobs: torch.Tensor | None
    """(rows, length, k) float32 teacher raw logprobs"""
    tail_logprobs: torch.Tensor | None
    """(rows, length) float32 log of the teacher's mass outside its top-k (0 where no loss), or None"""
    extra_ids: torch.Tensor | None
    """(rows, length, M) long tokens drawn from the teacher, or None"""
    extra_logprobs: torch.Tensor | None
    """(rows, length, M) float32 teacher logprobs of `extra_ids`, or None"""
    aligned: AlignedTeacher | None = None
    """cross-tokenizer: the teacher's rows of these records, aligned to the student's loss positions, or None"""
    source: int = 0
    """which cache the rows' records come from (their index in `train --cache`; distill.mixing): a batch never
    mixes caches"""

    @property
    def num_tokens(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


def plan_rows(lengths: Sequence[int], max_length: int, seed: int, epoch: int) -> list[list[int]]:
    """Record indices packed into rows of at most `max_length` tokens, in a seeded shuffle order.

    `lengths[i]` is record i's prompt + completion length (longer ones are truncated to a row).
    Greedy next-fit: deterministic, and rows stay in shuffle order.
    """
    return pack_rows(np.random.default_rng([seed, epoch]).permutation(len(lengths)), lengths, max_length)


def pack_rows(order: Sequence[int], lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Indices `order` (into `lengths`) packed into rows of at most `max_length` tokens, greedy next-fit in that
    order."""
    rows: list[list[int]] = []
    used = max_length + 1
    for i in order:
        n = min(int(lengths[i]), max_length)
        if used + n > max_length:
            rows.append([])
            used = 0
        rows[-1].append(int(i))
        used += n
    return rows


def collate(records: Sequence[Sequence[Record]], max_length: int, pad_id: int, top_k: int, extra_k: int) -> Batch:
    """Pack rows of records into one batch (every row padded to the longest)."""
    width = max(min(sum(len(r.prompt_ids) + len(r.completion_ids) for r in row), max_length) for row in records)
    n = len(records)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    targets = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    topk_ids = torch.zeros((n, width, top_k), dtype=torch.long) if top_k else None
    topk_lp = torch.zeros((n, width, top_k), dtype=torch.float32) if top_k else None
    tail_lp = torch.zeros((n, width), dtype=torch.float32) if top_k else None
    extra_ids = torch.zeros((n, width, extra_k), dtype=torch.long) if extra_k else None
    extra_lp = torch.zeros((n, width, extra_k), dtype=torch.float32) if extra_k else None
    for b, row in enumerate(records):
        at = 0
        for rec in row:
            seq = np.concatenate([rec.prompt_ids, rec.completion_ids])[: width - at]
            p, length = len(rec.prompt_ids), len(seq)
            input_ids[b, at : at + length] = torch.from_numpy(seq.astype(np.int64))
            position_ids[b, at : at + length] = torch.arange(length)
            # completion token t (sequence index p+t) is predicted at position p+t-1
            t = max(length - p, 0)
            if t:
                lo = at + p - 1
                targets[b, lo : lo + t] = torch.from_numpy(rec.completion_ids[:t].astype(np.int64))
                if topk_ids is not None:
                    topk_ids[b, lo : lo + t] = torch.from_numpy(rec.topk_ids[:t].astype(np.int64))
                    topk_lp[b, lo : lo + t] = torch.from_numpy(rec.topk_logprobs[:t])
                    tail = rec.tail_logprobs if rec.tail_logprobs is not None else topk_tail_logprobs(rec.topk_logprobs)
                    tail_lp[b, lo : lo + t] = torch.from_numpy(tail[:t])
                if extra_ids is not None and rec.extra_ids is not None:
                    extra_ids[b, lo : lo + t] = torch.from_numpy(rec.extra_ids[:t].astype(np.int64))
                    extra_lp[b, lo : lo + t] = torch.from_numpy(rec.extra_logprobs[:t])
            at += length
        # padding is a "record" of its own (positions restart), so nothing attends to it
        position_ids[b, at:] = torch.arange(width - at)
    return Batch(input_ids, position_ids, targets, topk_ids, topk_lp, tail_lp, extra_ids, extra_lp)


class PackedLoader:
    """Steps of packed rows over selected cache records, deterministic and resumable.

    `step(s)` returns this rank's micro-batches for global optimizer step s (0-based, counted
    across epochs), so resuming at step s needs nothing but s.
    """

    def __init__(
        self,
        cache: Sequence[Record],
        indices: Sequence[int],
        lengths: np.ndarray,
        max_length: int,
        rows_per_step: int,
        micro_rows: int,
        seed: int,
        pad_id: int,
        top_k: int,
        extra_k: int = 0,
        rank: int = 0,
        world_size: int = 1,
        collate_rows: Callable[[list[list[Any]]], Batch] | None = None,
    ) -> None:
        if rows_per_step % world_size:
            raise ValueError(f"rows per step ({rows_per_step}) must be divisible by the world size ({world_size})")
        self.cache, self.indices = cache, list(indices)
        self.prompt_completion = np.asarray(lengths)  # (records, 2): prompt and completion tokens
        self.lengths = [int(self.prompt_completion[i].sum()) for i in self.indices]
        self.max_length, self.rows_per_step, self.micro_rows = max_length, rows_per_step, micro_rows
        self.seed, self.pad_id, self.top_k, self.extra_k = seed, pad_id, top_k, extra_k
        self.rank, self.world_size = rank, world_size
        # rows of records → a Batch; the default packs cache records with their top-k
        self.collate_rows = collate_rows or (lambda rows: collate(rows, max_length, pad_id, top_k, extra_k))
        self._plans: dict[int, list[list[int]]] = {}

    def _plan(self, epoch: int) -> list[list[int]]:
        if epoch not in self._plans:
            self._plans = {epoch: plan_rows(self.lengths, self.max_length, self.seed, epoch)}
        return self._plans[epoch]

    @property
    def steps_per_epoch(self) -> int:
        """Full steps per epoch (a last partial step is dropped so every step has the same shape)."""
        return max(len(self._plan(0)) // self.rows_per_step, 1)

    def step_rows(self, step: int) -> list[list[int]]:
        """All ranks' rows of global step `step`, as lists of record indices into the cache."""
        epoch, s = divmod(step, self.steps_per_epoch)
        plan = self._plan(epoch)
        rows = [plan[(s * self.rows_per_step + j) % len(plan)] for j in range(self.rows_per_step)]
        return [[self.indices[i] for i in row] for row in rows]

    def step(self, step: int) -> tuple[list[Batch], int]:
        """This rank's micro-batches for global step `step`, and the step's loss tokens over all ranks."""
        rows = self.step_rows(step)
        global_tokens = sum(self.row_tokens(row) for row in rows)
        mine = rows[self.rank :: self.world_size]
        batches = []
        for i in range(0, len(mine), self.micro_rows):
            chunk = mine[i : i + self.micro_rows]
            records = [[self.cache[j] for j in row] for row in chunk]
            batches.append(self.collate_rows(records))
        return batches, global_tokens

    def row_tokens(self, row: list[int]) -> int:
        """Loss tokens of a row from lengths alone (no decoding), truncated as `collate` truncates."""
        total, at = 0, 0
        for i in row:
            p, t = (int(x) for x in self.prompt_completion[i])
            length = min(p + t, self.max_length - at)
            total += max(length - p, 0)
            at += length
        return total
