"""Train the bundled teacher of the embedded default: a ~1M-parameter Qwen2 on the `arith` task.

Reproducible by seed, CPU only: 30 epochs (2,760 steps) take 12–30 minutes on 2 cores. Steps:
1. a byte-level BPE tokenizer trained on the task's text (digits stay single tokens: Qwen's split);
2. a randomly initialised Qwen2 (hidden 128, 4 layers, 4 heads of 32 — vLLM's CPU backend needs
   head size ≥ 32);
3. SFT with distill's own trainer (`distill train --traces ... --alpha 1`) on the reference
   chains of thought of `arith:train`;
4. the result is copied to `teachers/arith-teacher/` (weights, tokenizer, generation config) and
   the student skeleton `students/arith-student/` (config + tokenizer, a quarter of the teacher's
   parameters, trained from random initialisation) is written beside it.

    python scripts/train_arith_teacher.py [--epochs 30] [--seed 0] [--work runs/arith-teacher] --install
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEACHER = dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=512)
STUDENT = dict(hidden_size=64, num_layers=4, num_heads=2, num_kv_heads=1, intermediate_size=256)
VOCAB = 320


def corpus() -> list[str]:
    from distill.presets import R1_INSTRUCTION
    from distill.tasks import arith

    rows = arith.problems("train")
    return [f"{r['prompt']}\n{R1_INSTRUCTION}\n{r['completion']}" for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "arith-teacher")
    parser.add_argument("--install", action="store_true", help="copy the result into teachers/ and students/")
    parser.add_argument("--only-install", action="store_true", help="install the model already trained in --work")
    args = parser.parse_args()

    work = args.work
    if not args.only_install:
        train(work, args)
    if args.install or args.only_install:
        install(work, args.seed)


def train(work: Path, args: argparse.Namespace) -> None:
    from distill.models.tiny import build_tiny_model
    from distill.tasks import arith

    shutil.rmtree(work, ignore_errors=True)
    init = build_tiny_model(
        work / "init", vocab_size=VOCAB, seed=args.seed, corpus=corpus(), max_position_embeddings=512, **TEACHER
    )
    traces = work / "traces.jsonl"
    traces.write_text("".join(json.dumps(r) + "\n" for r in arith.problems("train")))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "distill",
            "train",
            "--student",
            str(init),
            "--traces",
            str(traces),
            "--alpha",
            "1",
            "--epochs",
            str(args.epochs),
            "--lr",
            str(args.lr),
            "--warmup-ratio",
            "0.05",
            "--max-length",
            "512",
            "--batch-rows",
            "8",
            "--seed",
            str(args.seed),
            "--save-every",
            "1000000",
            "--out",
            str(work / "run"),
        ],
        check=True,
    )


def install(work: Path, seed: int) -> None:
    """Copy the trained teacher into teachers/ and write the config-only student into students/."""
    from distill.models.tiny import build_tiny_model

    target = REPO / "teachers" / "arith-teacher"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(work / "run" / "model", target)
    student = REPO / "students" / "arith-student"
    shutil.rmtree(student, ignore_errors=True)
    skeleton = build_tiny_model(
        work / "student", vocab_size=VOCAB, seed=seed, corpus=corpus(), max_position_embeddings=512, **STUDENT
    )
    student.mkdir(parents=True)
    for f in skeleton.iterdir():
        if f.name != "model.safetensors":  # the student starts from random weights: config only
            shutil.copy(f, student / f.name)
    print(f"installed {target} and {student}")


if __name__ == "__main__":
    main()
