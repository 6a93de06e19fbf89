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

`--domain add|mul` trains a specialist on one domain's `arith:train` problems only (see distill.tasks.arith:
`add` has no multiplication, `mul` has one), installed as `teachers/arith-teacher-DOMAIN/` with its preset YAML
(`--name` to call it otherwise). A specialist reuses the bundled teacher's tokenizer instead of training one, so
every arith model shares one tokenizer and a student distils from any mix of them without --cross-tokenizer; and
it draws more reference traces per problem (default: as many traces in all as the generalist's 4 × 4,000), so it
takes as many optimiser steps on its domain as the generalist takes on the whole task:

    python scripts/train_arith_teacher.py --domain add --install     # teachers/arith-teacher-add
    python scripts/train_arith_teacher.py --domain mul --install     # teachers/arith-teacher-mul
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
GENERALIST_TRACES = 4 * 4000  # reference traces the generalist trains on per epoch (4 variants of arith:train)


def corpus() -> list[str]:
    from distill.presets import R1_INSTRUCTION
    from distill.tasks import arith

    rows = arith.problems("train", variants=4)
    return [f"{r['prompt']}\n{R1_INSTRUCTION}\n{r['completion']}" for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--variants", type=int, help="reference traces per problem, forks drawn anew [4; a specialist: as many traces "
        "in all as the generalist's]"
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--domain", choices=("add", "mul"), help="train a specialist on this domain's problems only")
    parser.add_argument("--name", help="install name under teachers/ [arith-teacher, or arith-teacher-DOMAIN]")
    parser.add_argument("--work", type=Path, help="working directory [runs/NAME]")
    parser.add_argument("--install", action="store_true", help="copy the result into teachers/")
    parser.add_argument("--only-install", action="store_true", help="install the model already trained in --work")
    args = parser.parse_args()
    args.name = args.name or ("arith-teacher" + (f"-{args.domain}" if args.domain else ""))

    work = (args.work or REPO / "runs" / args.name).resolve()
    if not args.only_install:
        train(work, args)
    if args.install or args.only_install:
        install(work, args.name, args.domain)


def train(work: Path, args: argparse.Namespace) -> None:
    from distill.models.tiny import build_tiny_model
    from distill.tasks import arith

    shutil.rmtree(work, ignore_errors=True)
    if args.domain:  # the bundled teacher's tokenizer: every arith model then shares one
        from transformers import AutoTokenizer

        shared = AutoTokenizer.from_pretrained(REPO / "teachers" / "arith-teacher")
        init = build_tiny_model(work / "init", seed=args.seed, tokenizer=shared, max_position_embeddings=512, **TEACHER)
        problems = [q for q in arith.problems("train") if q["domain"] == args.domain]
        variants = args.variants or round(GENERALIST_TRACES / len(problems))
    else:
        init = build_tiny_model(
            work / "init", vocab_size=VOCAB, seed=args.seed, corpus=corpus(), max_position_embeddings=512, **TEACHER
        )
        variants = args.variants or 4
    traces = work / "traces.jsonl"
    rows = arith.problems("train", variants=variants)  # seed 0: the arith:train split itself
    rows = [r for r in rows if r["domain"] == args.domain] if args.domain else rows
    print(f"{len(rows) // variants} problems × {variants} reference traces", flush=True)
    traces.write_text("".join(json.dumps({**r, "id": f"{r['id']}-{i % variants}"}) + "\n" for i, r in enumerate(rows)))
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


def install(work: Path, name: str, domain: str | None) -> None:
    """Copy the trained teacher into teachers/NAME (and, for a specialist, write its preset teachers/NAME.yaml: the
    bundled teacher's settings under its own name).

    Its `distill_train.json` needs no editing: `distill train` records paths relative to the directory
    it ran in (or just their names), never this machine's absolute paths.
    """
    target = REPO / "teachers" / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(work / "run" / "model", target)
    if domain is None:
        print(f"installed {target}; now run scripts/pretrain_arith_student.py --install")
        return
    lines = (REPO / "teachers" / "arith-teacher.yaml").read_text().splitlines(keepends=True)
    settings = "".join(line for line in lines if not line.startswith("#"))
    kind = {"add": "additive (+ and − only)", "mul": "multiplicative (with ×)"}[domain]
    (REPO / "teachers" / f"{name}.yaml").write_text(
        f"# A specialist teacher of the embedded default: the arith teacher's architecture and tokenizer, trained by\n"
        f"# scripts/train_arith_teacher.py --domain {domain} on the {kind} problems of arith:train only, so it is\n"
        f"# weak on the other domain. Its weights live in the {name}/ directory beside this file.\n"
        + settings.replace("name: arith-teacher\n", f"name: {name}\n", 1)
        .replace("hub_id: arith-teacher\n", f"hub_id: {name}\n", 1)
        .replace("bundled tiny teacher of the arith task", f"{kind} specialist teacher of the arith task", 1)
    )
    print(f"installed {target} and {target}.yaml")


if __name__ == "__main__":
    main()
