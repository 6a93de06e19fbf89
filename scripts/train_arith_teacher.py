"""Train the bundled teacher of the embedded default: a ~1M-parameter Qwen2 on the `arith` task.

Reproducible by seed, CPU only: 8 epochs over 4 reference traces per problem (about 3,000 steps)
take 15–30 minutes on 2 cores. Steps:
1. a byte-level BPE tokenizer trained on the task's text (digits stay single tokens: Qwen's split);
2. a randomly initialised Qwen2 (hidden 128, 4 layers, 4 heads of 32 — vLLM's CPU backend needs
   head size ≥ 32);
3. SFT with distill's own trainer (`distill train --traces ... --alpha 1`) on `--variants` reference
   chains of thought per problem of `arith:train`, each drawn with the task's forks (order, operand
   order, connectives, check line, phrasing), so the teacher learns to spread its mass over the
   valid continuations instead of one string;
4. `--install` copies the result to `teachers/arith-teacher/` (weights, tokenizer, generation
   config). The bundled student is pretrained from this tokenizer by scripts/pretrain_arith_student.py.

    python scripts/train_arith_teacher.py [--epochs 8] [--variants 4] [--seed 0] [--work runs/arith-teacher] --install
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
VOCAB = 512  # room for the forks' words ("then", "verify", ...) to be single tokens


def corpus() -> list[str]:
    from distill.presets import R1_INSTRUCTION
    from distill.tasks import arith

    rows = arith.problems("train", variants=4)
    return [f"{r['prompt']}\n{R1_INSTRUCTION}\n{r['completion']}" for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--variants", type=int, default=4, help="reference traces per problem, forks drawn anew")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "arith-teacher")
    parser.add_argument("--install", action="store_true", help="copy the result into teachers/ and students/")
    parser.add_argument("--only-install", action="store_true", help="install the model already trained in --work")
    args = parser.parse_args()

    work = args.work.resolve()
    if not args.only_install:
        train(work, args)
    if args.install or args.only_install:
        install(work)


def train(work: Path, args: argparse.Namespace) -> None:
    from distill.models.tiny import build_tiny_model
    from distill.tasks import arith

    shutil.rmtree(work, ignore_errors=True)
    init = build_tiny_model(
        work / "init", vocab_size=VOCAB, seed=args.seed, corpus=corpus(), max_position_embeddings=512, **TEACHER
    )
    traces = work / "traces.jsonl"
    rows = arith.problems("train", variants=args.variants)  # seed 0: the arith:train split itself
    traces.write_text(
        "".join(json.dumps({**r, "id": f"{r['id']}-{i % args.variants}"}) + "\n" for i, r in enumerate(rows))
    )
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
        cwd=REPO,  # the run's record then names its inputs relative to the checkout: runs/arith-teacher/init
    )


def install(work: Path) -> None:
    """Copy the trained teacher into teachers/arith-teacher.

    Its `distill_train.json` needs no editing: `distill train` records paths relative to the directory
    it ran in (or just their names), never this machine's absolute paths.
    """
    target = REPO / "teachers" / "arith-teacher"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(work / "run" / "model", target)
    print(f"installed {target}; now run scripts/pretrain_arith_student.py --install")


if __name__ == "__main__":
    main()
