"""What the teacher-side stages (generate, score) share: loading the teacher's tokenizer, turning
engine completions into cache records, and streaming them into a cache with a progress bar.

Kept out of the stages themselves because stages never import each other.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.cache import CacheWriter, Record
from distill.engines import Completion
from distill.errors import DistillError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
)


def load_tokenizer(model: str, revision: str | None = None) -> Any:
    """The model's Hugging Face tokenizer, or a sentence saying why it cannot be had."""
    from transformers import AutoTokenizer

    if Path(model).is_absolute() and not Path(model).exists():
        raise DistillError(
            f"Model directory {model} does not exist (the bundled arith teacher and student are made by "
            "`python scripts/train_arith_teacher.py --install`)."
        )
    try:
        return AutoTokenizer.from_pretrained(model, revision=revision)
    except Exception as e:  # OSError, ValueError, hub errors: all mean "not loadable"
        raise DistillError(
            f"Cannot load the tokenizer of {model}: {e}. Check the path or hub id (without hub access, "
            "download the model elsewhere and pass its directory)."
        ) from e


def stop_token_ids(tokenizer: Any, model: str) -> list[int]:
    """Tokens that end a completion: the tokenizer's eos plus the generation config's eos ids."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = Path(model) / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return sorted(ids)


def extra_sample_problems(extra_samples: int, extra_temperature: float, backend: str) -> list[str]:
    """What is wrong with `--extra-samples` / `--extra-temperature` for this backend, as sentences."""
    out = []
    if extra_samples < 0:
        out.append(f"--extra-samples must be ≥ 0, got {extra_samples}")
    if not extra_temperature > 0:
        out.append(f"--extra-temperature must be > 0, got {extra_temperature}")
    if extra_samples > 0 and backend != "hf":
        out.append(
            "--extra-samples draws from the teacher's full distribution, which vLLM does not expose (it returns the "
            "top-k only); use --backend hf"
        )
    return out


def decode_completion(tokenizer: Any, completion_ids: Any, prompt_ids: Any = None) -> str:
    """A completion as text for the verifiers: special tokens kept (</think> is one), the trailing
    end-of-sequence token dropped, and the `<think>` the prompt primed put back in front."""
    text = tokenizer.decode(list(completion_ids), skip_special_tokens=False)
    for stop in (tokenizer.eos_token, tokenizer.pad_token):
        if stop and text.endswith(stop):
            text = text[: -len(stop)]
    if prompt_ids is not None:
        primed = tokenizer.decode(list(prompt_ids[-8:]), skip_special_tokens=False)
        if primed.rstrip().endswith("<think>") and "<think>" not in text.split("</think>")[0]:
            text = "<think>\n" + text
    return text


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

    stats, start, last_flush = StreamStats(), time.perf_counter(), time.perf_counter()
    with tqdm(total=total, desc=desc, unit="sample", dynamic_ncols=True) as bar:
        for c in completions:
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
    stats.seconds = time.perf_counter() - start
    return stats


def summary_lines(path: Path, stats: StreamStats, info: dict[str, Any], skipped: int = 0) -> list[str]:
    """The end-of-run summary; the cache path is the last line."""
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(stats.finish_reasons.items())) or "none new"
    rate = f"{stats.tokens / stats.seconds:,.0f}" if stats.seconds else "-"
    lines = [
        f"this run: {stats.records} records, {stats.tokens} tokens in {stats.seconds:.1f}s ({rate} tokens/s)",
        f"finish reasons: {reasons}",
        f"cache: {info['records']} records, {info['tokens']} tokens, top-{info['top_k']}, "
        f"{info['bytes_per_token']} bytes/token",
    ]
    if skipped:
        lines.append(f"skipped {skipped} prompts longer than the model's context (listed in the cache provenance)")
    return [*lines, str(path)]
