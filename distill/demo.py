"""`distill demo`: the pipeline on the embedded default, as far as it is built.

Until every stage exists, the demo runs the ones that do on a tiny offline Qwen2 model and says
plainly which are not built yet; it never prints a made-up result.
"""

from __future__ import annotations

from pathlib import Path

import typer

PLANNED = [
    ("generate", "teacher traces + top-k logprobs into a cache (vLLM)"),
    ("filter", "keep verified-correct traces"),
    ("train", "KD student and SFT student from the same cache"),
    ("eval", "teacher vs KD student vs SFT student, pass@1"),
]


def run_demo(out: Path, seed: int) -> None:
    """Build the tiny model, then report each planned stage."""
    from distill.models.tiny import build_tiny_model

    out.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(out / "tiny-teacher", seed=seed)
    typer.echo(f"built a tiny Qwen2 teacher (random weights, byte-level BPE tokenizer) at {model}")
    for stage, what in PLANNED:
        typer.echo(f"  {stage:<9} {what}: not built yet")
    typer.echo("The teacher cache (`distill cache ls|info|verify|gc`) is built; the stages above are the next issues.")
