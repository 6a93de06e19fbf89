"""`distill generate`: sample teacher traces and record the teacher's top-k logprobs into a cache.

The expensive stage, run once and reused for months, so:
- content-addressed: the cache directory is named by a hash of everything that determines its
  records (teacher files, prompts, prompt style, sampling, k, seed, backend, dtype, precision,
  slice). An identical rerun finds the finished cache and exits at once ("cache hit") without
  loading a tokenizer or starting an engine. Where the teacher runs is not in it: through vLLM
  servers (--teacher-url, checked to serve this teacher first) it is the in-process vLLM cache;
- resumable: a rerun after a crash or kill -9 generates only the (prompt, sample) pairs that are
  not in a finished shard; each pair has its own seed, so it draws what it would have drawn;
- streamed: completions go to the cache writer as they finish, memory bounded by the in-flight
  window and one shard;
- sliceable: `--shard-index I --num-shards N` takes every N-th prompt, one slice per Slurm array
  task or node; `distill cache merge` joins the slices into the cache one run would have made.

The cache path is the last line of stdout, so scripts can do `cache=$(distill generate ... | tail -1)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer

from distill.cache import CacheSpec, CacheWriter
from distill.cache.admin import cache_info
from distill.cache.format import INDEX_NAME, read_index
from distill.cache.key import GeneratedKey
from distill.configs import GenerateConfig
from distill.engines import Request, SamplingSpec, open_teacher, request_seed
from distill.errors import DistillError
from distill.fingerprint import prompt_set_fingerprint, tokenizer_fingerprint, weights_fingerprint
from distill.models.tokenizer import TOKENIZER_FILES, load_tokenizer, stop_token_ids
from distill.paths import cache_root
from distill.presets import TeacherPreset, resolve_preset
from distill.prompts import load_prompts, record_meta, render_prompt, shard_slice
from distill.recording import count_padding, stream_into_cache, summary_lines


@dataclass
class Plan:
    """The resolved run: effective settings, prompts of this slice, and the cache key."""

    preset: TeacherPreset
    sampling: dict[str, Any]
    top_k: int
    prompts: list[dict[str, Any]]
    prompts_where: str
    key_parts: dict[str, Any]
    key: str
    path: Path


def plan(cfg: GenerateConfig) -> Plan:
    """Resolve preset, prompts and key; cheap (no tokenizer, no engine), so cache hits are instant."""
    preset = resolve_preset(cfg.teacher, "teacher")
    defaults = asdict(preset.sampling)
    sampling = {k: getattr(cfg, k) if getattr(cfg, k) is not None else v for k, v in defaults.items()}
    top_k = cfg.top_k if cfg.top_k is not None else preset.top_k
    prompts, where = load_prompts(
        cfg.prompts, cfg.prompt_field, cfg.answer_field, cfg.mapping, cfg.limit, cfg.domain_field
    )
    source = GeneratedKey(
        teacher=weights_fingerprint(preset.hub_id, preset.revision, extra_names=TOKENIZER_FILES),
        prompts=prompt_set_fingerprint(prompts),
        prompt_style=asdict(preset.prompt),
        sampling=sampling,
        top_k=top_k,
        seed=cfg.seed,
        backend=cfg.backend,
        dtype=cfg.dtype or preset.engine.dtype,
        precision=cfg.precision,
        extra=[cfg.extra_samples, cfg.extra_temperature] if cfg.extra_samples else None,
        slice=None if cfg.num_shards == 1 else [cfg.shard_index, cfg.num_shards],
    )
    key_parts, key = source.parts(), source.key()
    mine = shard_slice(prompts, cfg.shard_index, cfg.num_shards)
    return Plan(preset, sampling, top_k, mine, where, key_parts, key, Path(cfg.out) if cfg.out else cache_root() / key)


def _is_complete(path: Path, key: str) -> bool:
    if not (path / INDEX_NAME).is_file():
        return False
    index = read_index(path)
    if index.key != key:
        raise DistillError(f"{path} holds another cache (key {index.key}); choose another --out or delete it.")
    return index.complete


def run_generate(cfg: GenerateConfig) -> Path:
    """Generate (or resume, or find) the cache; prints a summary with the cache path last."""
    p = plan(cfg)
    if _is_complete(p.path, p.key):
        typer.echo(f"cache hit: {len(p.prompts)} prompts × {p.sampling['samples_per_prompt']} samples already done")
        typer.echo(str(p.path))
        return p.path

    preset = p.preset
    tokenizer = load_tokenizer(preset.hub_id, preset.revision)
    vocab_size = len(tokenizer)
    if p.top_k > vocab_size:
        raise DistillError(f"--top-k {p.top_k} is larger than the teacher's vocabulary ({vocab_size} tokens).")
    style = preset.prompt
    rendered = {
        q["id"]: tokenizer(
            render_prompt(tokenizer, q["prompt"], style.instruction, style.system_prompt, style.think_prefix),
            add_special_tokens=False,
        )["input_ids"]
        for q in p.prompts
    }
    provenance = {
        "teacher": preset.name,
        "teacher_model": preset.hub_id,
        "teacher_revision": preset.revision,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "prompt_source": p.prompts_where,
        "key_parts": p.key_parts,
        "stage": "generate",
    }
    spec = CacheSpec(
        top_k=p.top_k,
        vocab_size=vocab_size,
        precision=cfg.precision,
        extra_k=cfg.extra_samples,
        extra_temperature=cfg.extra_temperature,
    )
    # the teacher first: a served one is checked to be this teacher before anything is written
    engine = open_teacher(cfg, preset, tokenizer, p.top_k, seed=cfg.seed)
    with CacheWriter(p.path, spec, p.key, provenance, shard_bytes=int(cfg.shard_size_mb * 2**20)) as writer:
        if writer.discarded:
            typer.echo(f"resuming: discarded {len(writer.discarded)} unfinished files of an interrupted run", err=True)
        done = writer.done_keys()
        n = p.sampling["samples_per_prompt"]
        todo = [(q, s) for q in p.prompts for s in range(n) if (q["id"], s) not in done]
        if done:
            typer.echo(f"resuming: {len(done)} samples already cached, {len(todo)} to go", err=True)
        count_padding(writer, vocab_size, engine.rows)
        too_long = sorted({q["id"] for q, _ in todo if len(rendered[q["id"]]) >= engine.max_model_len})
        if too_long and cfg.long_prompts == "fail":
            raise DistillError(
                f"{len(too_long)} prompts (first: {too_long[0]}) are at least {engine.max_model_len} tokens, the "
                "model's context; shorten them, raise --max-model-len, or pass --long-prompts skip."
            )
        skip = set(too_long)
        requests = [
            Request(
                key=(q["id"], s),
                prompt_ids=rendered[q["id"]],
                seed=request_seed(cfg.seed, q["id"], s),
                max_new_tokens=min(p.sampling["max_new_tokens"], engine.max_model_len - len(rendered[q["id"]])),
            )
            for q, s in todo
            if q["id"] not in skip
        ]
        by_id = {q["id"]: q for q in p.prompts}
        metas = {r.key: {**record_meta(by_id[r.key[0]]), "seed": r.seed} for r in requests}
        sampling = SamplingSpec(
            temperature=p.sampling["temperature"],
            top_p=p.sampling["top_p"],
            max_new_tokens=p.sampling["max_new_tokens"],
            top_k=p.top_k,
            stop_token_ids=stop_token_ids(tokenizer, preset.hub_id),
            extra_samples=cfg.extra_samples,
            extra_temperature=cfg.extra_temperature,
        )
        stats = stream_into_cache(
            writer, engine.generate(iter(requests), sampling), metas, len(requests), "generate", cfg.flush_every_s
        )
        writer.finish(
            tokenizer=tokenizer,
            provenance={"engine": engine.name, "engine_version": engine.version, "skipped_prompts": sorted(skip)},
        )
    served = engine.report() if cfg.teacher_url else []
    for line in summary_lines(p.path, stats, cache_info(p.path), len(skip), served):
        typer.echo(line)
    return p.path
