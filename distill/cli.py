"""The `distill` command line: one typed function per command, registered in one table.

    distill generate   teacher traces + top-k logprobs into a cache      (vLLM)
    distill score      teacher-forced logprobs over existing traces       (vLLM)
    distill filter     keep verified-correct traces (a view of a cache)
    distill train      student on CE + KL to the cached teacher
    distill grpo       polish the student with verifier rewards
    distill eval       pass@1 / cons@n with the same verifiers
    distill cache      ls | info | verify | gc
    distill demo       the whole pipeline on the embedded default

Heavy imports (torch, vllm, transformers) happen inside the command that needs them, so
`distill --help` is instant. A `DistillError` is printed as one sentence with a non-zero exit.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from distill.errors import DistillError

app = typer.Typer(
    help="Distil the reasoning of a large teacher model into a small student.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
cache_app = typer.Typer(help="Inspect and maintain teacher caches.", no_args_is_help=True)


# options the teacher-side commands (generate, score) share
ExtraSamples = Annotated[
    int,
    typer.Option(
        help="Tokens drawn per position from the teacher's full distribution, with their logprobs, for "
        "`train --kd sampled` (--backend hf: vLLM returns the top-k alone)."
    ),
]
ExtraTemperature = Annotated[
    float, typer.Option(help="Temperature the extra tokens are drawn at (= the training --temperature).")
]


def generate(
    teacher: Annotated[str, typer.Option(help="Teacher preset name, preset YAML, model directory or hub id.")],
    prompts: Annotated[
        str,
        typer.Option(
            help="File (.jsonl/.json/.parquet/.csv), built-in set (gsm8k, math500, ...), hub org/name, task:split."
        ),
    ],
    samples_per_prompt: Annotated[int | None, typer.Option(help="Completions per prompt [preset].")] = None,
    top_k: Annotated[int | None, typer.Option(help="Teacher logprobs kept per position; 0 = none [preset].")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Completion length limit [preset].")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature [preset].")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling threshold [preset].")] = None,
    seed: Annotated[int, typer.Option(help="Base seed; every (prompt, sample) derives its own from it.")] = 0,
    backend: Annotated[str, typer.Option(help="vllm, or hf (transformers generation, no vLLM needed).")] = "vllm",
    limit: Annotated[int | None, typer.Option(help="Use only the first N prompts.")] = None,
    shard_index: Annotated[int, typer.Option(help="This worker's slice of the prompts (0-based).")] = 0,
    num_shards: Annotated[int, typer.Option(help="Number of workers slicing the prompts.")] = 1,
    prompt_field: Annotated[str | None, typer.Option(help="Column holding the problem [auto].")] = None,
    answer_field: Annotated[str | None, typer.Option(help="Column holding the gold answer [auto].")] = None,
    mapping: Annotated[str | None, typer.Option(help="Built-in mapping (e.g. gsm8k) for a local file.")] = None,
    out: Annotated[Path | None, typer.Option(help="Cache directory [$DISTILL_HOME/caches/KEY].")] = None,
    dtype: Annotated[str | None, typer.Option(help="Model dtype: auto, bfloat16, float16, float32 [preset].")] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Context length for the engine [preset].")] = None,
    tensor_parallel_size: Annotated[int | None, typer.Option(help="GPUs per engine (vLLM) [preset].")] = None,
    precision: Annotated[str, typer.Option(help="Logprob storage: compact (quantised) or fp32 (exact).")] = "compact",
    long_prompts: Annotated[str, typer.Option(help="Prompts over the context: skip (counted) or fail.")] = "skip",
    extra_samples: ExtraSamples = 0,
    extra_temperature: ExtraTemperature = 1.0,
    shard_size_mb: Annotated[float, typer.Option(help="Cache shard size in MiB.")] = 64.0,
    flush_every_s: Annotated[float, typer.Option(help="Also flush a shard this often (bounds loss on kill).")] = 300.0,
) -> None:
    """Teacher traces + top-k logprobs into a cache (vLLM)."""
    from distill.generate import GenerateConfig, run_generate

    run_generate(GenerateConfig(**{k: v for k, v in locals().items() if k not in ("GenerateConfig", "run_generate")}))


def score(
    teacher: Annotated[str, typer.Option(help="Teacher preset name, preset YAML, model directory or hub id.")],
    traces: Annotated[
        str, typer.Option(help="A cache (path or key), or a file: prompt + completion columns, or chat rows.")
    ],
    view: Annotated[str | None, typer.Option(help="Score only the records of this view of the cache.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Teacher logprobs kept per position [preset].")] = None,
    backend: Annotated[str, typer.Option(help="vllm (prompt-logprobs path) or hf (forward pass).")] = "vllm",
    out: Annotated[Path | None, typer.Option(help="Cache directory [$DISTILL_HOME/caches/KEY].")] = None,
    dtype: Annotated[str | None, typer.Option(help="Model dtype [preset].")] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Context length for the engine [preset].")] = None,
    tensor_parallel_size: Annotated[int | None, typer.Option(help="GPUs per engine (vLLM) [preset].")] = None,
    precision: Annotated[str, typer.Option(help="Logprob storage: compact (quantised) or fp32 (exact).")] = "compact",
    prompt_field: Annotated[str | None, typer.Option(help="Trace file: column holding the problem [auto].")] = None,
    completion_field: Annotated[str | None, typer.Option(help="Trace file: completion column [auto].")] = None,
    extra_samples: ExtraSamples = 0,
    extra_temperature: ExtraTemperature = 1.0,
    limit: Annotated[int | None, typer.Option(help="Score only the first N traces.")] = None,
    shard_size_mb: Annotated[float, typer.Option(help="Cache shard size in MiB.")] = 64.0,
    flush_every_s: Annotated[float, typer.Option(help="Also flush a shard this often.")] = 300.0,
) -> None:
    """Teacher-forced logprobs over existing traces."""
    from distill.score import ScoreConfig, run_score

    run_score(ScoreConfig(**{k: v for k, v in locals().items() if k not in ("ScoreConfig", "run_score")}))


def filter_(
    cache: Annotated[str, typer.Argument(help="Teacher cache (path or key) to filter.")],
    verifiers: Annotated[
        str,
        typer.Option(
            help="Comma-separated verifiers every kept trace must pass: math, code, format, lang, repetition."
        ),
    ] = "math,format",
    name: Annotated[str | None, typer.Option(help="View name [the verifier names joined by '+'].")] = None,
    keep: Annotated[
        str, typer.Option(help="all passing traces, the first per prompt, or best-of-n per prompt.")
    ] = "all",
    workers: Annotated[int | None, typer.Option(help="Worker processes for the checks [core count].")] = None,
) -> None:
    """Keep verified-correct traces (a view of a cache)."""
    from distill.filter import FilterConfig, run_filter

    run_filter(FilterConfig(cache=cache, verifiers=verifiers, name=name, keep=keep, workers=workers))


def train(
    student: Annotated[
        str, typer.Option(help="Student preset name (qwen-1.5b, ...), preset YAML, model directory or hub id.")
    ],
    cache: Annotated[str | None, typer.Option(help="Teacher cache (path or key) to distil from.")] = None,
    view: Annotated[
        str | None, typer.Option(help="Train only on the records of this view (from distill filter).")
    ] = None,
    traces: Annotated[
        str | None, typer.Option(help="Plain trace file (prompt + completion, or chat rows) for SFT without a cache.")
    ] = None,
    alpha: Annotated[
        float, typer.Option(help="Weight of cross-entropy; 1 - alpha weighs the KD term (1 = SFT).")
    ] = 0.5,
    kd: Annotated[
        str,
        typer.Option(
            help="KD divergence over the teacher's top-k: forward, reverse or jsd; or sampled (unbiased KL from "
            "tokens drawn from the teacher: a cache made by `distill score --extra-samples M`)."
        ),
    ] = "forward",
    tail: Annotated[
        str,
        typer.Option(
            help="Teacher mass outside the top-k: bucket (one extra class, exact; τ = 1 only) or renorm (both "
            "sides renormalised over the top-k; exact at any τ)."
        ),
    ] = "bucket",
    temperature: Annotated[
        float,
        typer.Option(
            help="Distillation temperature τ (both sides softened, KD weighted by τ²). τ ≠ 1 needs --tail renorm, "
            "or --kd sampled from samples drawn at τ."
        ),
    ] = 1.0,
    beta: Annotated[float, typer.Option(help="Mixing weight of the generalised JSD.")] = 0.5,
    lora: Annotated[bool, typer.Option(help="Train LoRA adapters (merged on export) instead of all weights.")] = False,
    epochs: Annotated[int | None, typer.Option(help="Passes over the records [preset].")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps (instead of --epochs).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate [preset].")] = None,
    warmup_ratio: Annotated[float | None, typer.Option(help="Fraction of steps warming up [preset].")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay [preset].")] = None,
    max_length: Annotated[int | None, typer.Option(help="Tokens per packed row [preset].")] = None,
    batch_rows: Annotated[int, typer.Option(help="Packed rows per optimizer step, over all processes.")] = 8,
    micro_rows: Annotated[int, typer.Option(help="Rows per forward pass per process (the rest accumulates).")] = 1,
    grad_clip: Annotated[float, typer.Option(help="Gradient norm clip.")] = 1.0,
    chunk_size: Annotated[
        int | None, typer.Option(help="Tokens per chunk of the output-layer loss [auto: 64 MiB].")
    ] = None,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute activations in backward.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and data order.")] = 0,
    out: Annotated[Path, typer.Option(help="Run directory (checkpoints, metrics, model/).")] = Path("runs/student"),
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 50,
    init: Annotated[str | None, typer.Option(help="pretrained weights, or random (config only) [preset].")] = None,
) -> None:
    """Train a student: CE + KL to the cached teacher.

    Loss: alpha·CE + (1 − alpha)·τ²·KD, per completion token. What is exact at which temperature:

    \b
    --kd forward|reverse|jsd --tail bucket   τ = 1 only (the tempered tail mass is unknown)
    --kd forward|reverse|jsd --tail renorm   any τ (the top-k tempers exactly)
    --kd sampled                             τ = the cache's --extra-temperature (unbiased KL)
    --alpha 1                                SFT: any cache, or --traces without one
    """
    from distill.train import TrainConfig, run_train

    run_train(TrainConfig(**{k: v for k, v in locals().items() if k not in ("TrainConfig", "run_train")}))


def grpo(
    policy: Annotated[
        str, typer.Option(help="Model to polish: a `distill train` OUT/model directory, a preset name or a hub id.")
    ],
    prompts: Annotated[
        str, typer.Option(help="Prompts with gold answers: file, gsm8k, math500, arith:train, ... (as for eval).")
    ],
    group_size: Annotated[int, typer.Option(help="G: completions per prompt, compared with each other (≥ 2).")] = 8,
    batch_size: Annotated[
        int, typer.Option(help="Completions per step, a multiple of G (prompts per step = batch size / G).")
    ] = 64,
    micro_batch: Annotated[int, typer.Option(help="Completions per forward/backward (the rest accumulates).")] = 16,
    beta: Annotated[
        float, typer.Option(help="Weight of the k3 KL to the initial policy (0: no reference model).")
    ] = 0.04,
    epsilon: Annotated[
        float, typer.Option(help="Clip range of the ratio π/π_old below 1 (and above, by default).")
    ] = 0.2,
    epsilon_high: Annotated[
        float | None, typer.Option(help="Clip range above 1 (DAPO clip-higher, e.g. 0.28) [--epsilon].")
    ] = None,
    iterations: Annotated[int, typer.Option(help="μ: optimiser steps per batch of rollouts (1 = on-policy).")] = 1,
    loss: Annotated[
        str,
        typer.Option(
            help="Token aggregation: grpo (mean per sequence, then over sequences), dapo (mean over all tokens), "
            "dr_grpo (sum / (batch size × max new tokens))."
        ),
    ] = "grpo",
    scale_rewards: Annotated[
        str | None,
        typer.Option(
            help="group: divide advantages by the group's reward std; none: mean-only [group; dr_grpo: none]."
        ),
    ] = None,
    rewards: Annotated[
        str, typer.Option(help="Comma-separated verifiers that make the reward: math, code, format, lang, repetition.")
    ] = "math,format",
    reward_weights: Annotated[
        str | None, typer.Option(help="Comma-separated weight per reward, e.g. 1,0.2 [all 1].")
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Completion length limit [preset].")] = None,
    temperature: Annotated[float, typer.Option(help="Rollout sampling temperature (top-p is 1).")] = 1.0,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (constant).")] = 1e-6,
    grad_clip: Annotated[float, typer.Option(help="Gradient norm clip.")] = 1.0,
    steps: Annotated[
        int, typer.Option(help="Rollout steps; each samples one batch and makes μ optimiser steps.")
    ] = 100,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps (and at the end).")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of prompt order and sampling.")] = 0,
    out: Annotated[Path, typer.Option(help="Run directory (checkpoints, metrics.jsonl, model/).")] = Path("runs/grpo"),
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    backend: Annotated[str, typer.Option(help="Rollout engine: vllm, or hf (transformers generation).")] = "vllm",
    limit: Annotated[int | None, typer.Option(help="Use only the first N prompts.")] = None,
    mapping: Annotated[str | None, typer.Option(help="Built-in mapping (e.g. gsm8k) for a local file.")] = None,
    dtype: Annotated[str | None, typer.Option(help="Engine dtype [preset].")] = None,
    gpu_memory_utilization: Annotated[
        float, typer.Option(help="Share of the GPU the colocated vLLM engine takes; the trainer needs the rest.")
    ] = 0.3,
) -> None:
    """Polish a policy with GRPO on verifier rewards."""
    from distill.grpo import GRPOConfig, run_grpo

    run_grpo(GRPOConfig(**{k: v for k, v in locals().items() if k not in ("GRPOConfig", "run_grpo")}))


def eval_(
    model: Annotated[
        str, typer.Option(help="Model directory, preset name or hub id (a trained student's model/ dir).")
    ],
    prompts: Annotated[
        str, typer.Option(help="Same sources as generate: file, math500, aime24, gsm8k, arith:test, ...")
    ],
    samples: Annotated[int, typer.Option(help="Samples per problem (pass@1 averages them; cons@N votes).")] = 4,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (R1 protocol: 0.6; 0 = greedy).")] = 0.6,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling threshold.")] = 0.95,
    max_new_tokens: Annotated[int, typer.Option(help="Completion length limit.")] = 4096,
    backend: Annotated[str, typer.Option(help="vllm or hf.")] = "vllm",
    verifier: Annotated[str, typer.Option(help="Verifier that decides correctness.")] = "math",
    limit: Annotated[int | None, typer.Option(help="Use only the first N problems.")] = None,
    seed: Annotated[int, typer.Option(help="Base seed; every (problem, sample) derives its own.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write per-problem results and the summary as JSON here.")] = None,
    dtype: Annotated[str | None, typer.Option(help="Model dtype [preset].")] = None,
    mapping: Annotated[str | None, typer.Option(help="Built-in mapping (e.g. gsm8k) for a local file.")] = None,
) -> None:
    """Evaluate a model: pass@1, cons@n, pass@k."""
    from distill.evaluate import EvalConfig, run_eval

    run_eval(EvalConfig(**{k: v for k, v in locals().items() if k not in ("EvalConfig", "run_eval")}))


def demo(
    out: Annotated[Path, typer.Option(help="Directory for the demo's caches, students, evals and report.")] = Path(
        "demo-out"
    ),
    seed: Annotated[int, typer.Option(help="Seed for generation, training and evaluation.")] = 0,
    prompts: Annotated[int, typer.Option(help="arith:distill prompts the teacher answers (one sample each).")] = 4000,
    steps: Annotated[int, typer.Option(help="Training steps of each student.")] = 1500,
    eval_problems: Annotated[int, typer.Option(help="arith:test problems to evaluate on (4 samples each).")] = 200,
    kd_temperature: Annotated[
        float,
        typer.Option(
            help="KD temperature τ of the KD student (1: the exact tail bucket; else the renormalised top-20)."
        ),
    ] = 1.0,
    kd_alpha: Annotated[float, typer.Option(help="α of the KD student (weight of CE; 1 − α weighs KD).")] = 0.5,
) -> None:
    """The whole pipeline on the embedded default."""
    from distill.demo import run_demo

    run_demo(
        out,
        seed,
        prompts=prompts,
        steps=steps,
        eval_problems=eval_problems,
        kd_temperature=kd_temperature,
        kd_alpha=kd_alpha,
    )


# ---------------------------------------------------------------------------------------------
# cache


def cache_ls(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list instead of a table.")] = False,
) -> None:
    """List caches: size, records, tokens, teacher.

    Caches live under $DISTILL_HOME/caches (default ~/.cache/distill/caches).
    """
    from distill.cache.admin import list_caches
    from distill.paths import cache_root

    rows = list_caches(cache_root())
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no caches under {cache_root()}")
        return
    typer.echo(f"{'key':<22}{'size':>10}{'records':>10}{'tokens':>12}  {'state':<10}teacher")
    for r in rows:
        if "error" in r:
            typer.echo(f"{r['key']:<22}{'?':>10}{'?':>10}{'?':>12}  {'unreadable':<10}{r['error']}")
            continue
        state = "complete" if r["complete"] else "partial"
        typer.echo(
            f"{r['key']:<22}{_human_bytes(r['bytes_on_disk']):>10}{r['records']:>10}{r['tokens']:>12}  "
            f"{state:<10}{r['teacher']}"
        )


def cache_info(
    path: Annotated[str, typer.Argument(help="Cache directory, or a cache key (prefix) under the cache root.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (format_version, records, tokens, ...).")] = False,
) -> None:
    """Summarise one cache.

    Records, tokens, top-k, bytes per token, teacher, tokenizer, views (--json for scripts).
    """
    from distill.cache.admin import cache_info as info

    d = info(path)
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    for key in ("path", "key", "complete", "records", "tokens", "top_k", "precision", "vocab_size", "shards"):
        typer.echo(f"{key:<22}{d[key]}")
    typer.echo(f"{'bytes_on_disk':<22}{_human_bytes(d['bytes_on_disk'])} ({d['bytes_per_token']} bytes/token)")
    typer.echo(f"{'teacher':<22}{d['teacher']}")
    typer.echo(f"{'tokenizer':<22}{d['tokenizer_fingerprint']}")
    views = ", ".join(f"{k} ({v} kept)" for k, v in d["views"].items()) or "none"
    typer.echo(f"{'views':<22}{views}")


def cache_verify(
    path: Annotated[str, typer.Argument(help="Cache directory, or a cache key (prefix) under the cache root.")],
) -> None:
    """Check sizes, checksums and every record.

    Exits 1 naming each broken shard.
    """
    from distill.cache.reader import TeacherCache

    cache = TeacherCache(path, allow_incomplete=True, check=False)
    problems = cache.verify()
    if not cache.complete:
        problems.append(f"{cache.path} is incomplete: its generation was interrupted (rerun it to finish)")
    if problems:
        for p in problems:
            typer.echo(f"FAIL {p}", err=True)
        raise typer.Exit(1)
    typer.echo(f"OK {cache.path}: {len(cache)} records, {cache.num_tokens} tokens, {len(cache.index['shards'])} shards")


def cache_gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    incomplete: Annotated[
        bool, typer.Option("--incomplete", help="Also remove unfinished caches (interrupted generations).")
    ] = False,
) -> None:
    """Remove leftovers of crashed writers.

    Temp files and shards no index lists; caches being written are skipped.
    """
    from distill.cache.admin import garbage, remove
    from distill.paths import cache_root

    found = garbage(cache_root(), incomplete=incomplete)
    for p in found:
        typer.echo(f"{'would remove' if dry_run else 'remove'} {p}")
    if not dry_run:
        typer.echo(f"freed {_human_bytes(remove(found))}")


def cache_merge(
    caches: Annotated[list[str], typer.Argument(help="Caches made by slices of one run (--shard-index/--num-shards).")],
    out: Annotated[Path | None, typer.Option(help="Merged cache directory [$DISTILL_HOME/caches/KEY].")] = None,
) -> None:
    """Join slices of one run into one cache.

    The slices' fingerprints must agree; the last line printed is the merged cache.
    """
    from distill.cache.admin import cache_info, merge_caches

    path = merge_caches(caches, out)
    info = cache_info(path)
    typer.echo(f"merged {len(caches)} caches: {info['records']} records, {info['tokens']} tokens")
    typer.echo(str(path))


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ---------------------------------------------------------------------------------------------
# the table

# name → (function, takes arbitrary arguments); the order is the order of `distill --help`
COMMANDS = {
    "generate": generate,
    "score": score,
    "filter": filter_,
    "train": train,
    "grpo": grpo,
    "eval": eval_,
    "demo": demo,
}
CACHE_COMMANDS = {"ls": cache_ls, "info": cache_info, "verify": cache_verify, "gc": cache_gc, "merge": cache_merge}

for name, fn in COMMANDS.items():
    app.command(name)(fn)
for name, fn in CACHE_COMMANDS.items():
    cache_app.command(name)(fn)
app.add_typer(cache_app, name="cache")


def main() -> None:
    """Entry point of the `distill` console script."""
    code: int | str | None
    try:
        app()
    except DistillError as e:
        typer.echo(f"error: {e}", err=True)
        code = e.exit_code
    except SystemExit as e:  # click ends every run with one
        code = e.code
    else:
        code = 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _leave_rank(code)
    sys.exit(code)


def _leave_rank(code: int | str | None) -> NoReturn:
    """End a torchrun rank without interpreter teardown.

    FSDP2's process group outlives `destroy_process_group` (DTensor's caches hold its device
    mesh), so its gloo worker threads still run while Python shuts down. A worker that then frees
    a collective's buffer needs the GIL, and the rank dies with SIGABRT ("terminate called without
    an active exception") after all its work is done. Every file is closed by now: flush the
    streams and leave.
    """
    if isinstance(code, str):
        print(code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)
