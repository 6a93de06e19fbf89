"""Recording teacher completions into a cache: what the teacher-side stages (generate, score) share.

An engine completion becomes a cache record (`to_record`); `stream_into_cache` appends them as they
arrive, with a progress bar and a time-based flush; `count_padding` makes it count, in the cache's
provenance and across resumed runs, the top-k entries of a padded vocabulary's padding rows that the
engine folded into the tail; `summary_lines` reports the run. Kept out of the stages themselves because
stages never import each other; the tokenizer side every stage shares (loading, stop tokens, decoding)
is `distill.models.tokenizer`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.cache import CacheWriter, Record
from distill.engines import Completion
from distill.stopping import StopRequest


def to_record(c: Completion, meta: dict[str, Any]) -> Record:
    """A cache record from an engine completion and its metadata."""
    return Record(
        prompt_ids=np.asarray(c.prompt_ids, np.int32),
        completion_ids=np.asarray(c.completion_ids, np.int32),
        topk_ids=np.asarray(c.topk_ids, np.int32),
        topk_logprobs=np.asarray(c.topk_logprobs, np.float32),
        sampled_logprobs=np.asarray(c.sampled_logprobs, np.float32),
        tail_logprobs=None if c.tail_logprobs is None else np.asarray(c.tail_logprobs, np.float32),
        extra_ids=None if c.extra_ids is None else np.asarray(c.extra_ids, np.int32),
        extra_logprobs=None if c.extra_logprobs is None else np.asarray(c.extra_logprobs, np.float32),
        # a scored trace keeps the finish reason it was generated with (meta), a new one gets the engine's
        meta={"finish_reason": c.finish_reason, **meta, "prompt_id": c.key[0], "sample_index": c.key[1]},
    )


@dataclass
class StreamStats:
    """What a teacher run produced."""

    records: int = 0
    tokens: int = 0
    seconds: float = 0.0
    finish_reasons: Counter = field(default_factory=Counter)


def stream_into_cache(
    writer: CacheWriter,
    completions: Iterable[Completion],
    metas: dict[tuple[str, int], dict[str, Any]],
    total: int,
    desc: str,
    flush_every_s: float = 300.0,
) -> StreamStats:
    """Append every completion to the cache as it arrives, with a progress bar (tokens/s, ETA).

    Shards are flushed by size and also every `flush_every_s` seconds, so a kill loses at most that
    much work however slow the teacher is.
    """
    from tqdm import tqdm

    padding = writer.index.provenance.get("padding")

    stats, start, last_flush = StreamStats(), time.perf_counter(), time.perf_counter()
    stop = StopRequest("after the record in progress, keeping every finished one")
    with tqdm(total=total, desc=desc, unit="sample", dynamic_ncols=True) as bar, stop:
        for c in completions:
            if padding is not None:
                # before the append: a shard it flushes is then listed with counts that include its records
                padding["folded_entries"] += c.folded
                padding["folded_positions"] += c.folded_positions
            writer.append(to_record(c, metas[c.key]))
            stats.records += 1
            stats.tokens += len(c.completion_ids)
            stats.finish_reasons[c.finish_reason] += 1
            elapsed = time.perf_counter() - start
            bar.set_postfix_str(f"{stats.tokens / max(elapsed, 1e-9):,.0f} tok/s", refresh=False)
            bar.update(1)
            if time.perf_counter() - last_flush > flush_every_s:
                writer.flush()
                last_flush = time.perf_counter()
            # Ctrl-C or SIGTERM: stop between records; leaving the writer's `with` saves every finished one
            if stop.signum is not None and stats.records < total:
                raise stop.stop_now(f"after {stats.records} of {total} records, every finished one saved")
    stats.seconds = time.perf_counter() - start
    return stats


def count_padding(writer: CacheWriter, tokens: int, rows: int) -> None:
    """Where the model has more rows than its tokenizer has tokens, give the cache a `padding` provenance entry
    (both sizes, and the folded counts so far: zero, or those of the run this one resumes), which
    `stream_into_cache` then counts up. It travels with every index write, so a killed and resumed run counts
    the records of its shards on disk once."""
    if rows > tokens:
        before = writer.index.provenance.get("padding", {})
        writer.index.provenance["padding"] = {
            "tokens": tokens,
            "model_rows": rows,
            "folded_entries": before.get("folded_entries", 0),
            "folded_positions": before.get("folded_positions", 0),
        }


def padding_line(padding: dict[str, int]) -> str:
    """One sentence on a padded vocabulary's folded top-k entries (what the summary and `cache info` print)."""
    return (
        f"padding: the model has {padding['model_rows']} rows for {padding['tokens']} tokens; "
        f"{padding['folded_entries']} top-k entries at {padding['folded_positions']} positions were padding rows, "
        "folded into the tail (each position keeps its best k real tokens)"
    )


def summary_lines(
    path: Path, stats: StreamStats, info: dict[str, Any], skipped: int = 0, notes: list[str] | None = None
) -> list[str]:
    """The end-of-run summary (`notes`: the engine's own lines, e.g. its teacher servers); the cache path is the
    last line."""
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(stats.finish_reasons.items())) or "none new"
    rate = f"{stats.tokens / stats.seconds:,.0f}" if stats.seconds else "-"
    lines = [
        f"this run: {stats.records} records, {stats.tokens} tokens in {stats.seconds:.1f}s ({rate} tokens/s)",
        f"finish reasons: {reasons}",
        f"cache: {info['records']} records, {info['tokens']} tokens, top-{info['top_k']}, "
        f"{info['bytes_per_token']} bytes/token",
    ]
    if info["provenance"].get("padding"):
        lines.append(padding_line(info["provenance"]["padding"]))
    if skipped:
        lines.append(f"skipped {skipped} prompts longer than the model's context (listed in the cache provenance)")
    return [*lines, *(notes or []), str(path)]
