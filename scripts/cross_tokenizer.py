"""Cross-tokenizer distillation on the embedded default: students of another tokenizer, three seeds.

Students (both Llama-shaped, arith-student's parameter count and pretraining, made by
`scripts/pretrain_arith_student.py`): `arith-student-bytes` reads bytes (digits as the teacher spells them,
words and operators in pieces) and `arith-student-bpe` a BPE of its own that spells numbers whole. From each
seed's demo cache (a `scripts/demo_seeds.py` directory) the student trains as the demo trains its students
(same steps, batch, seed, view `correct`), one run per variant:

- `kd`: `--cross-tokenizer` with the demo's KD kind, α and τ (merged spans: the span term, the default);
- `kd_uld`: the same with `--xt-merged uld` (TRL GOLD's sorted-probability L1 on merged spans);
- `sft`: SFT on the teacher's text re-tokenised (`--cross-tokenizer --alpha 1`).

The reference is the demo's own pair, the same size with the teacher's tokenizer (`arith-student`), read from
each seed's summary.json. Everything is evaluated as the demo evaluates (arith:test, 200 problems × 4 samples
at temperature 0.6), with room for 192 new tokens instead of 96: the bytes student spells a trace in 1.8× the
teacher's tokens (a budget that binds no student here). A run already evaluated
(OUT/STUDENT/seed-N/VARIANT/eval.json) is read, not retrained, so seeds can run in parallel processes and a
last call gathers them.

Writes OUT/STUDENT/results.json (per seed, means, each run's alignment report) and prints a table.

    OMP_NUM_THREADS=1 python scripts/cross_tokenizer.py --demos runs/demo-reverse \\
        [--student arith-student-bytes] [--variants kd sft] [--seeds 0 1 2] [--out runs/cross-tokenizer]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

VARIANTS = {"kd": [], "kd_uld": ["--xt-merged", "uld"], "sft": ["--alpha", "1"]}


def distill(*args: str) -> str:
    """One `distill` command; returns its last stdout line (progress passes through to stderr)."""
    out = subprocess.run([sys.executable, "-m", "distill", *args], stdout=subprocess.PIPE, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def evaluate(model: str, path: Path, seed: int, problems: int) -> float:
    if not path.is_file():
        distill(
            "eval", "--model", model, "--prompts", "arith:test", "--limit", str(problems), "--samples", "4",
            "--max-new-tokens", "192", "--seed", str(seed), "--dtype", "float32", "--out", str(path),
        )  # fmt: skip
    return json.loads(path.read_text())["summary"]["pass@1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demos", type=Path, required=True, help="a scripts/demo_seeds.py --out directory")
    parser.add_argument("--student", default="arith-student-bytes")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["kd", "sft"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-problems", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("runs/cross-tokenizer"))
    args = parser.parse_args()

    root = args.out / args.student
    root.mkdir(parents=True, exist_ok=True)
    base = evaluate(args.student, root / "base-eval.json", 0, args.eval_problems)
    runs = []
    for seed in args.seeds:
        demo = args.demos / f"seed-{seed}"
        summary = json.loads((demo / "summary.json").read_text())
        common = ["--student", args.student, "--cache", str(demo / "cache"), "--view", "correct", "--cross-tokenizer"]
        common += ["--max-steps", str(summary["steps"]), "--batch-rows", str(summary["batch_rows"])]
        common += ["--save-every", str(summary["steps"]), "--seed", str(seed)]
        kd = ["--kd", summary["kd_kind"], "--alpha", str(summary["kd_alpha"]), "--tail", summary["kd_tail"]]
        kd += ["--temperature", str(summary["kd_temperature"])]
        row = {"seed": seed, "teacher": summary["teacher_pass1"], "ref_kd": summary["kd_pass1"]}
        row["ref_sft"] = summary["sft_pass1"]
        for name in args.variants:
            out = root / f"seed-{seed}" / name
            print(f"== {args.student}, seed {seed}: {name}", flush=True)
            model = out / "model"
            if not (out / "eval.json").is_file():
                loss = VARIANTS[name] if name == "sft" else kd + VARIANTS[name]
                model = Path(distill("train", *common, *loss, "--out", str(out)))
            row[name] = evaluate(str(model), out / "eval.json", seed, args.eval_problems)
            manifest = json.loads((out / "run.json").read_text())
            row[f"{name}_alignment"] = manifest["summary"]["cross_tokenizer"]
            row[f"{name}_final"] = manifest["metrics"]
            print(f"   pass@1 {100 * row[name]:.1f}", flush=True)
        runs.append(row)

    names = ["teacher", "ref_kd", "ref_sft", *args.variants]
    spread = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731 - sample std, as demo_seeds.py
    stats = {n: {"mean": statistics.mean(v), "std": spread(v)} for n in names for v in [[100 * r[n] for r in runs]]}
    (root / "results.json").write_text(json.dumps({"runs": runs, "pass1": stats, "base_pass1": base}, indent=2))
    print(f"\npass@1 on arith:test (%), seeds {args.seeds}; {args.student} before distillation: {100 * base:.1f}")
    labels = {
        "teacher": "teacher",
        "ref_kd": "KD, teacher's tokenizer (arith-student)",
        "ref_sft": "SFT, teacher's tokenizer (arith-student)",
        "kd": f"cross-tokenizer KD, span term ({args.student})",
        "kd_uld": f"cross-tokenizer KD, ULD ({args.student})",
        "sft": f"SFT on the re-tokenised text ({args.student})",
    }
    for n in names:
        per_seed = ", ".join(f"{100 * r[n]:.1f}" for r in runs)
        print(f"{labels[n]:<52}{stats[n]['mean']:>6.1f} ± {stats[n]['std']:.1f}   ({per_seed})")
    print("alignment (seed 0):", json.dumps(runs[0][f"{args.variants[0]}_alignment"]))


if __name__ == "__main__":
    main()
