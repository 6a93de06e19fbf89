"""`distill demo`: the pipeline on the embedded default, as far as it is built.

Today that is the teacher stage on a tiny offline Qwen2 (random weights: its traces are noise, the
point is the machinery): generate with real vLLM (top-k logprobs into a cache), a second run that
is a cache hit, teacher-forced scoring of the traces, and a check that both agree. The stages not
built yet are named, never faked.

Each stage runs as its own `distill` command in a subprocess, exactly as a user would chain them:
stages talk through files on disk, never in memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import typer

NOT_BUILT = [
    ("filter", "keep verified-correct traces"),
    ("train", "KD student and SFT student from the same cache"),
    ("eval", "teacher vs KD student vs SFT student, pass@1"),
]


def _prompts(path: Path, seed: int, n: int = 16) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a, b, c = (int(x) for x in rng.integers(1, 50, 3))
        rows.append({"id": f"arith-{i}", "question": f"What is {a} + {b} * {c}?", "answer": str(a + b * c)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _distill(*args: str) -> str:
    """Run one `distill` command (its progress and logs pass through to stderr); returns its stdout."""
    out = subprocess.run([sys.executable, "-m", "distill", *args], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise typer.Exit(out.returncode)
    typer.echo(out.stdout.rstrip())
    return out.stdout.strip().splitlines()[-1]


def run_demo(out: Path, seed: int) -> None:
    """Build the tiny teacher, generate, hit the cache, score, compare; name what is not built."""
    from distill.cache import open_cache
    from distill.models.tiny import build_tiny_model

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(out / "tiny-teacher", seed=seed)
    prompts = _prompts(out / "prompts.jsonl", seed)
    typer.echo(f"[1/4] built a tiny Qwen2 teacher (random weights) at {model}")
    generate = [
        "generate",
        "--teacher",
        str(model),
        "--prompts",
        str(prompts),
        "--samples-per-prompt",
        "2",
        "--max-new-tokens",
        "48",
        "--top-k",
        "8",
        "--temperature",
        "0.6",
        "--seed",
        str(seed),
        "--dtype",
        "float32",
        "--out",
        str(out / "cache"),
    ]
    typer.echo("[2/4] distill generate (real vLLM on this machine)")
    cache_path = _distill(*generate)
    typer.echo("[3/4] the same command again")
    _distill(*generate)
    typer.echo("[4/4] distill score: teacher-forced logprobs over the generated traces")
    scored_path = _distill(
        "score",
        "--teacher",
        str(model),
        "--traces",
        cache_path,
        "--top-k",
        "8",
        "--dtype",
        "float32",
        "--out",
        str(out / "scored"),
    )
    generated = {r.key: r for r in open_cache(cache_path)}
    gaps = [np.abs(r.topk_logprobs - generated[r.key].topk_logprobs).max() for r in open_cache(scored_path)]
    typer.echo(f"score vs generate: largest top-k logprob difference {max(gaps):.2e} nats over {len(gaps)} traces")
    for stage, what in NOT_BUILT:
        typer.echo(f"not built yet: {stage:<7} {what}")
    typer.echo(f"demo finished in {time.perf_counter() - start:.0f}s; cache at {cache_path}")
