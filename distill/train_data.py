"""What `distill train` reads: its caches (each through its view, checked against the loss, aligned to the
student's tokenizer with --cross-tokenizer) or plain traces, as feeds, and the one loader that packs them.

`load_train_data` is the whole of it: a run's data is decided before its model loads, so bad input (a cache
without teacher logprobs, caches of different tokenizers, prompts longer than --max-length) stops the run
before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from distill.cache import Record, TeacherCache, view_indices
from distill.cache.format import V1_TAIL_NOTE
from distill.configs import TrainConfig
from distill.data import PackedLoader
from distill.errors import DistillError
from distill.mixing import CacheFeed, MixedLoader, name_feeds, record_weights
from distill.presets import StudentPreset
from distill.retokenize import collate_aligned, retokenize, student_vocab_map
from distill.vocab import reconcile

Log = Callable[[str], None]


@dataclass
class TrainData:
    """A run's data: the feeds (one per --cache, or the --traces), the tokenizer the student trains with, the
    loader over all feeds and how many steps it makes of them."""

    feeds: list[CacheFeed]
    tokenizer: Any
    top_k: int | str  # the caches' k ("20/64" when they differ; 0 for traces)
    source: dict[str, Any]  # for the exported model's record
    records: int
    loader: PackedLoader | MixedLoader
    total_steps: int


def load_train_data(cfg: TrainConfig, preset: StudentPreset, rank: int, world: int, log: Log) -> TrainData:
    from distill.models.tokenizer import load_tokenizer

    student_tok = load_tokenizer(preset.hub_id, preset.revision)
    if cfg.cache:
        feeds = name_feeds([open_feed(cfg, path, view, log) for path, view in cfg.cache_views()])
        if cfg.cross_tokenizer:
            tokenizer = student_tok
            for feed in feeds:
                align_feed(feed, tokenizer, len(feeds) > 1, log)
        else:
            tokenizer = shared_tokenizer(student_tok, feeds, preset.name, log)
        top_ks = [f.cache.spec.top_k for f in feeds]
        top_k: int | str = top_ks[0] if len(set(top_ks)) == 1 else "/".join(map(str, top_ks))
        source = (
            {"cache": str(feeds[0].cache.path), "cache_key": feeds[0].cache.key, "view": feeds[0].view}
            if len(feeds) == 1
            else {"caches": [f.describe() for f in feeds]}
        )
    else:
        tokenizer = student_tok
        records = traces_to_records(cfg.traces, student_tok)
        lengths = np.array([[len(r.prompt_ids), len(r.completion_ids)] for r in records])
        feeds = [CacheFeed("traces", None, None, records, np.arange(len(records)), lengths, 0, 0)]
        top_k, source = 0, {"traces": str(cfg.traces)}
    count = sum(len(f.indices) for f in feeds)
    max_length = cfg.max_length or preset.train.max_length
    no_room = sum(int((f.lengths[np.asarray(f.indices), 0] >= max_length).sum()) for f in feeds)
    if no_room == count:
        raise DistillError(
            f"Every record's prompt is at least --max-length {max_length} tokens, leaving no completion "
            "token to learn from; raise --max-length."
        )
    if no_room:
        log(f"note: {no_room} of {count} records have prompts of ≥ {max_length} tokens and are skipped")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    aligned = (lambda rows: collate_aligned(rows, max_length, pad)) if cfg.cross_tokenizer else None
    loaders = [
        PackedLoader(
            f.records,
            f.indices,
            f.lengths,
            max_length,
            cfg.batch_rows,
            cfg.micro_rows,
            cfg.seed,
            pad,
            f.top_k if cfg.uses_teacher else 0,
            f.extra_k if cfg.kd == "sampled" else 0,
            rank,
            world,
            collate_rows=aligned,
        )
        for f in feeds
    ]
    if len(loaders) == 1:  # one cache reads exactly as it always has
        loader: PackedLoader | MixedLoader = loaders[0]
    else:
        weights = record_weights([len(f.indices) for f in feeds], cfg.mixing_weights())
        for f, w in zip(feeds, weights, strict=True):
            f.weight = float(w)
        loader = MixedLoader(loaders, weights, cfg.batch_rows, cfg.micro_rows, cfg.seed, rank, world)
        mix = ", ".join(f"{f.name} {len(f.indices)} ({f.weight:.0%})" for f in feeds)
        log(f"caches: {mix} of every epoch's records")
    epochs = cfg.epochs if cfg.epochs is not None else preset.train.epochs
    total_steps = cfg.max_steps or epochs * loader.steps_per_epoch
    log(f"data: {count} records, {loader.steps_per_epoch} steps/epoch, {total_steps} steps")
    return TrainData(feeds, tokenizer, top_k, source, count, loader, total_steps)


def open_feed(cfg: TrainConfig, path: str, view: str | None, log: Log) -> CacheFeed:
    """One --cache, checked against the loss settings, through its view."""
    cache = TeacherCache(path)
    if cfg.uses_teacher and cache.spec.top_k == 0:
        raise DistillError(f"Cache {cache.path} holds no teacher logprobs (top-k 0); use --alpha 1 or score it.")
    if cfg.kd == "sampled" and cfg.uses_teacher and cache.spec.extra_k == 0:
        raise DistillError(
            f"--kd sampled needs tokens drawn from the teacher, and cache {cache.path} has none; make one "
            f"with `distill score --backend hf --extra-samples 8 --extra-temperature {cfg.temperature}`."
        )
    if cfg.kd == "sampled" and cfg.uses_teacher and cache.spec.extra_temperature != cfg.temperature:
        raise DistillError(
            f"Cache {cache.path} drew its extra samples at temperature {cache.spec.extra_temperature}, so "
            f"--kd sampled estimates the KL at that temperature only; pass --temperature "
            f"{cache.spec.extra_temperature} or score again with --extra-temperature {cfg.temperature}."
        )
    if cache.format_version == 1 and cfg.uses_teacher:  # V1_TAIL_NOTE is about version 1 only
        log("note: " + V1_TAIL_NOTE.format(path=cache.path))
    indices = view_indices(cache, view) if view else np.arange(len(cache))
    if len(indices) == 0:
        raise DistillError(f"View {view!r} of {cache.path} keeps no records; nothing to train on.")
    spec = cache.spec
    return CacheFeed("", cache, view, cache, indices, cache.lengths(), spec.top_k, spec.extra_k)


def shared_tokenizer(student_tok: Any, feeds: list[CacheFeed], student: str, log: Log) -> Any:
    """The tokenizer the student trains with, when the caches' ids are to be read as they are: every cache's
    teacher tokenizer the first's, and the student's compatible with it (distill.vocab)."""
    from distill.fingerprint import tokenizer_fingerprint
    from distill.models.tokenizer import cache_tokenizer

    first = feeds[0].cache
    teacher_tok = cache_tokenizer(first)
    expected = first.provenance.get("tokenizer_fingerprint") or tokenizer_fingerprint(teacher_tok)
    for feed in feeds[1:]:
        theirs = feed.cache.provenance.get("tokenizer_fingerprint")
        theirs = theirs or tokenizer_fingerprint(cache_tokenizer(feed.cache))
        if theirs != expected:
            raise DistillError(
                f"Cache {feed.cache.path} was made with another tokenizer ({feed.name}) than cache {first.path} "
                f"({feeds[0].name}), so their token ids mean different tokens; pass --cross-tokenizer to align "
                "each cache to the student's tokenizer by the traces' text."
            )
    decision = reconcile(student_tok, teacher_tok, student, str(first.provenance.get("teacher")))
    if decision.adopted_teacher:
        log(f"note: {decision.message}")
    return decision.tokenizer


def align_feed(feed: CacheFeed, tokenizer: Any, named: bool, log: Log) -> None:
    """--cross-tokenizer: the feed's kept records in the student's tokens, aligned to the teacher's, with their
    (prompt, completion) lengths and vocabulary map; logs the alignment report (and warns when it is poor)."""
    from distill.models.tokenizer import cache_tokenizer

    teacher_tok = cache_tokenizer(feed.cache)
    feed.vmap = student_vocab_map(teacher_tok, tokenizer)
    aligned = retokenize(feed.cache, teacher_tok, tokenizer, feed.indices, feed.vmap)  # rows stay on disk
    feed.records, feed.indices, feed.lengths = aligned, np.arange(len(aligned)), aligned.lengths()
    feed.alignment = aligned.report
    where = f" ({feed.name})" if named else ""
    log(f"cross-tokenizer{where}: {feed.alignment.summary()}")
    for warning in feed.alignment.warnings():
        log(f"warning{where}: {warning}")


def traces_to_records(path: str, tokenizer: Any) -> list[Record]:
    """Plain traces (prompt + completion text, no teacher logprobs) as records, for SFT (α = 1)."""
    from distill.presets import R1_INSTRUCTION
    from distill.prompts import load_traces, record_meta, render_prompt

    traces, _ = load_traces(path)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out = []
    for q in traces:
        text = render_prompt(tokenizer, q["prompt"], R1_INSTRUCTION, None, "")
        prompt_ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], np.int32)
        completion = np.asarray(tokenizer(q["completion"], add_special_tokens=False)["input_ids"] + eos, np.int32)
        t = len(completion)
        out.append(
            Record(
                prompt_ids,
                completion,
                np.zeros((t, 0), np.int32),
                np.zeros((t, 0), np.float32),
                np.full(t, np.nan, np.float32),
                {"prompt_id": q["id"], "sample_index": 0, **record_meta(q)},
            )
        )
    return out
