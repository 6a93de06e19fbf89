"""`distill score`: teacher-forced top-k logprobs over traces that already exist, as a cache.

Two uses:
- distil from an existing trace dataset (JSONL/Parquet/... with a prompt and a completion column,
  or chat rows: a `messages` list of {role, content} or a ShareGPT `conversations` list of
  {from, value}: the last assistant turn is the completion, the user turn before it the prompt);
- `generate --top-k 0` (cheap) → `filter` → `score --traces CACHE --view NAME` pays the teacher's
  logprob cost only for the traces that survived.

Scoring runs the teacher over prompt + completion in one pass (vLLM's prompt-logprobs path, or a
transformers forward pass) and writes records of the same format as `generate`, keyed the same
way, so everything downstream treats both alike. Content-addressed and resumable like generate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from distill.cache import CacheSpec, CacheWriter, TeacherCache, view_indices
from distill.cache.admin import cache_info
from distill.cache.format import INDEX_NAME, read_index
from distill.cache.key import ScoredKey
from distill.configs import ScoreConfig
from distill.engines import Request, open_teacher, request_seed
from distill.errors import DistillError
from distill.fingerprint import canonical_hash, tokenizer_fingerprint, weights_fingerprint
from distill.models.tokenizer import TOKENIZER_FILES, load_tokenizer
from distill.paths import cache_root
from distill.presets import resolve_preset
from distill.prompts import load_traces, record_meta, render_prompt
from distill.recording import count_padding, stream_into_cache, summary_lines


@dataclass
class Trace:
    """One trace to score: token ids and the metadata its record will carry."""

    key: tuple[str, int]
    prompt_ids: list[int]
    completion_ids: list[int]
    meta: dict[str, Any]


def _is_cache(source: str) -> bool:
    return (Path(source).expanduser() / INDEX_NAME).is_file()


def traces_from_cache(cfg: ScoreConfig, tokenizer_fp: str) -> tuple[list[Trace], str]:
    """Traces of a cache (through a view if given); the cache must share the teacher's tokenizer."""
    if cfg.domain_field:  # the records carry the domain their prompts had (distill.prompts.record_meta)
        raise DistillError(
            f"--domain-field names a column of a trace file, and {cfg.traces} is a cache: its records keep the "
            "domain they were generated with; drop --domain-field."
        )
    cache = TeacherCache(cfg.traces)
    theirs = cache.provenance.get("tokenizer_fingerprint")
    if theirs != tokenizer_fp:
        raise DistillError(
            f"Cache {cache.path} was tokenized with tokenizer {theirs}, the scoring teacher uses {tokenizer_fp}; "
            "its token ids would mean other tokens. Score with a teacher of the same tokenizer family."
        )
    indices = view_indices(cache, cfg.view) if cfg.view else range(len(cache))
    if cfg.limit:
        indices = indices[: cfg.limit]
    traces = []
    for rec in cache.records(list(indices)):
        meta = {k: v for k, v in rec.meta.items() if k not in ("prompt_id", "sample_index")}
        traces.append(Trace(rec.key, rec.prompt_ids.tolist(), rec.completion_ids.tolist(), meta))
    if not traces:
        raise DistillError(f"Nothing to score: {'view ' + repr(cfg.view) if cfg.view else 'cache'} is empty.")
    fingerprint = canonical_hash({"cache": cache.key, "view": cfg.view, "records": [list(t.key) for t in traces]})
    return traces, fingerprint[:16]


def traces_from_file(cfg: ScoreConfig, tokenizer: Any, style: Any) -> tuple[list[Trace], str]:
    """Traces of a dataset with a prompt and a completion column (or chat rows), rendered for the teacher."""
    rows, _ = load_traces(cfg.traces, cfg.prompt_field, cfg.completion_field, cfg.limit, cfg.domain_field)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    traces = []
    for q in rows:
        # a trace that opens its own think block must not get the primed "<think>" twice
        prefix = "" if q["completion"].lstrip().startswith(style.think_prefix.strip()) else style.think_prefix
        prompt = render_prompt(tokenizer, q["prompt"], style.instruction, style.system_prompt, prefix)
        ids = tokenizer(q["completion"], add_special_tokens=False)["input_ids"] + eos  # the student must learn to stop
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        traces.append(Trace((q["id"], 0), prompt_ids, ids, record_meta(q)))
    fingerprint = canonical_hash([[t.key, t.prompt_ids, t.completion_ids] for t in traces])
    return traces, fingerprint[:16]


def run_score(cfg: ScoreConfig) -> Path:
    """Score the traces into a cache; prints a summary with the cache path last."""
    preset = resolve_preset(cfg.teacher, "teacher")
    top_k = cfg.top_k if cfg.top_k is not None else preset.top_k
    if top_k < 1:
        raise DistillError(f"--top-k must be ≥ 1 for scoring, got {top_k}.")
    tokenizer = load_tokenizer(preset.hub_id, preset.revision)
    if top_k > len(tokenizer):
        raise DistillError(f"--top-k {top_k} is larger than the teacher's vocabulary ({len(tokenizer)} tokens).")
    tok_fp = tokenizer_fingerprint(tokenizer)
    if _is_cache(cfg.traces) or (not Path(cfg.traces).exists() and "/" not in cfg.traces):
        traces, traces_fp = traces_from_cache(cfg, tok_fp)
    else:
        traces, traces_fp = traces_from_file(cfg, tokenizer, preset.prompt)
    source = ScoredKey(
        teacher=weights_fingerprint(preset.hub_id, preset.revision, extra_names=TOKENIZER_FILES),
        traces=traces_fp,
        top_k=top_k,
        backend=cfg.backend,
        dtype=cfg.dtype or preset.engine.dtype,
        precision=cfg.precision,
        extra=[cfg.extra_samples, cfg.extra_temperature] if cfg.extra_samples else None,
    )
    key_parts, key = source.parts(), source.key()
    path = Path(cfg.out) if cfg.out else cache_root() / key
    if (path / INDEX_NAME).is_file() and (index := read_index(path)).complete and index.key == key:
        typer.echo(f"cache hit: {len(traces)} traces already scored")
        typer.echo(str(path))
        return path
    provenance = {
        "teacher": preset.name,
        "teacher_model": preset.hub_id,
        "tokenizer_fingerprint": tok_fp,
        "prompt_source": cfg.traces + (f" (view {cfg.view})" if cfg.view else ""),
        "key_parts": key_parts,
        "stage": "score",
    }
    spec = CacheSpec(
        top_k=top_k,
        vocab_size=len(tokenizer),
        precision=cfg.precision,
        extra_k=cfg.extra_samples,
        extra_temperature=cfg.extra_temperature,
    )
    # the teacher first: a served one is checked to be this teacher before anything is written
    engine = open_teacher(cfg, preset, tokenizer, top_k)
    with CacheWriter(path, spec, key, provenance, shard_bytes=int(cfg.shard_size_mb * 2**20)) as writer:
        done = writer.done_keys()
        todo = [t for t in traces if t.key not in done]
        count_padding(writer, len(tokenizer), engine.rows)
        too_long = [t for t in todo if len(t.prompt_ids) + len(t.completion_ids) > engine.max_model_len]
        if too_long:
            raise DistillError(
                f"{len(too_long)} traces (first: {too_long[0].key[0]}) are longer than the teacher's context "
                f"({engine.max_model_len} tokens); raise --max-model-len or drop them."
            )
        # every trace its own seed for the extra draws, so a resumed run draws what it would have drawn
        requests = (
            Request(t.key, t.prompt_ids, seed=request_seed(0, *t.key), completion_ids=t.completion_ids) for t in todo
        )
        metas = {t.key: t.meta for t in todo}
        scored = engine.score(requests, top_k, cfg.extra_samples, cfg.extra_temperature)
        stats = stream_into_cache(writer, scored, metas, len(todo), "score", cfg.flush_every_s)
        writer.finish(tokenizer=tokenizer, provenance={"engine": engine.name, "engine_version": engine.version})
    served = engine.report() if cfg.teacher_url else []
    for line in summary_lines(path, stats, cache_info(path), notes=served):
        typer.echo(line)
    return path
