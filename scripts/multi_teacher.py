"""Two specialist teachers, one student: the embedded default's multi-teacher comparison, end to end.

The specialists (made and installed by scripts/train_arith_teacher.py --domain add|mul --install) each know one
domain of the arith task: arith-teacher-add the problems with + and − only, arith-teacher-mul those that
multiply. Per seed this script distils the bundled base student (arith-student) four ways, each with the demo's
settings (reverse KL, α 0.5, τ 1, top-20 + tail, 3,000 steps of 4 rows, the preset's lr, on the teacher's
verified-correct traces):

- two-teacher: `distill train --cache ADD:correct --cache MUL:correct`, where each specialist answered its own
  domain's prompts only: a user with a math teacher and a code teacher routes each prompt to the teacher of its
  domain, and pays each teacher only for the prompts it is good at (one trace per prompt, as every other student);
- add-only, mul-only: the student of one specialist alone, which answered every prompt (a user with one teacher
  runs it on all the prompts there are; the filter keeps what it got right, out of its domain too);
- generalist: the student of the bundled generalist arith-teacher, which answered every prompt.

Then every student and teacher is evaluated on arith:test, pass@1 per domain and overall (`distill eval` reports
the domains of the task's prompts). Every stage is a `distill` command, skipped when its output exists (a stopped
training resumes from its last checkpoint), so a rerun picks up where a stopped one ended. Prints the table and
writes OUT/results.json and OUT/table.md.

    python scripts/multi_teacher.py [--seeds 0 1 2] [--out runs/multi-teacher] [--steps 3000] [--prompts 4000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from distill.demo import BATCH_ROWS, train_side_by_side
from distill.tasks import arith

TEACHERS = {"add": "arith-teacher-add", "mul": "arith-teacher-mul", "generalist": "arith-teacher"}
STUDENTS = ("two-teacher", "add-only", "mul-only", "generalist")
DOMAINS = ("add", "mul")


def distill(*args: str) -> str:
    """Run one `distill` command (its logs pass through); its last stdout line."""
    out = subprocess.run([sys.executable, "-m", "distill", *args], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        sys.exit(f"`distill {' '.join(args)}` failed (exit {out.returncode})")
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def prompt_files(out: Path, count: int) -> dict[str, str]:
    """The arith:distill prompts as sources: all of them (the task itself), and one JSONL file per domain."""
    rows = [{k: q[k] for k in ("id", "prompt", "answer", "domain")} for q in arith.problems("distill", count)]
    out.mkdir(parents=True, exist_ok=True)
    sources = {"all": "arith:distill"}
    for domain in DOMAINS:
        path = out / f"{domain}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["domain"] == domain))
        sources[domain] = str(path)
    return sources


def cache(teacher: str, prompts: str, count: int, seed: int) -> str:
    """The teacher's cache of `prompts` (generated once: a rerun is a cache hit), filtered to its correct traces."""
    limit = ["--limit", str(count)] if prompts.startswith("arith:") else []
    path = distill("generate", "--teacher", teacher, "--prompts", prompts, *limit, "--samples-per-prompt", "1",
                   "--top-k", "20", "--max-new-tokens", "96", "--seed", str(seed), "--dtype", "float32")  # fmt: skip
    if not (Path(path) / "views" / "correct.json").is_file():
        distill("filter", path, "--verifiers", "math,format", "--name", "correct")
    return path


def evaluate(model: str, path: Path, problems: int, seed: int) -> dict[str, Any]:
    """pass@1 overall and per domain on arith:test (`problems` problems × 4 samples), evaluated once."""
    if not path.is_file():
        distill("eval", "--model", model, "--prompts", "arith:test", "--limit", str(problems), "--samples", "4",
                "--max-new-tokens", "96", "--seed", str(seed), "--dtype", "float32", "--out", str(path))  # fmt: skip
    s = json.loads(path.read_text())["summary"]
    return {"all": s["pass@1"], **{d: s["domains"][d]["pass@1"] for d in DOMAINS}}


def run_seed(args: argparse.Namespace, seed: int, sources: dict[str, str]) -> dict[str, Any]:
    out = args.out / f"seed-{seed}"
    out.mkdir(parents=True, exist_ok=True)
    n = args.prompts
    teachers = args.teachers
    sources_of = {  # each student's (teacher, prompts): a specialist of both on its own domain, one alone on all
        "two-teacher": [(teachers[d], sources[d]) for d in DOMAINS],
        "add-only": [(teachers["add"], sources["all"])],
        "mul-only": [(teachers["mul"], sources["all"])],
        "generalist": [(teachers["generalist"], sources["all"])],
    }
    jobs = {}
    for name in args.students:
        if (out / name / "model").is_dir():
            continue
        caches = [f"{cache(t, p, n, seed)}:correct" for t, p in sources_of[name]]
        jobs[name] = ["train", "--student", "arith-student", *(x for c in caches for x in ("--cache", c)),
                      "--alpha", "0.5", "--kd", "reverse", "--temperature", "1", "--tail", "bucket",
                      "--max-steps", str(args.steps), "--seed", str(seed), "--out", str(out / name),
                      "--save-every", "500", "--batch-rows", str(BATCH_ROWS)]  # fmt: skip
        if (out / name / "checkpoints").is_dir():  # a stopped run goes on where it stopped (resume is exact)
            jobs[name].append("--resume")
    if jobs:
        print(f"== seed {seed}: training {', '.join(jobs)} side by side ({args.steps} steps each)", flush=True)
        train_side_by_side(jobs, out, args.steps, 1)  # one thread each: a result depends on its thread count
    if args.train_only:
        return {}
    scores = {f"teacher {name}": evaluate(t, out / f"eval-teacher-{name}.json", args.eval_problems, seed)
              for name, t in teachers.items()}  # fmt: skip
    for name in STUDENTS:
        scores[name] = evaluate(str(out / name / "model"), out / f"eval-{name}.json", args.eval_problems, seed)
    kept = {name: json.loads((out / name / "run.json").read_text())["summary"]["records"] for name in STUDENTS}
    return {"seed": seed, "pass1": scores, "train_records": kept}


def targets(r: dict[str, Any]) -> dict[str, Any]:
    """The issue's two targets for one seed: the two-teacher student keeps ≥ 0.9× each specialist's pass@1 on its
    domain (the specialist teacher's, and its own student's, for reference), and beats both one-specialist students
    overall."""
    p = r["pass1"]
    two = p["two-teacher"]
    return {
        **{f"keeps {d} vs teacher": two[d] / max(p[f"teacher {d}"][d], 1e-9) for d in DOMAINS},
        **{f"keeps {d} vs {d}-only student": two[d] / max(p[f"{d}-only"][d], 1e-9) for d in DOMAINS},
        "beats add-only": two["all"] > p["add-only"]["all"],
        "beats mul-only": two["all"] > p["mul-only"]["all"],
    }


def table(runs: list[dict[str, Any]]) -> str:
    """Markdown: one row per model, pass@1 (%) per domain and overall, per seed and mean."""
    models = [*(f"teacher {t}" for t in TEACHERS), *STUDENTS]
    head = "| model | " + " | ".join(f"{c} s{r['seed']}" for r in runs for c in ("add", "mul", "all"))
    head += " | add mean | mul mean | all mean |"
    lines = [head, "|---" * (2 + 3 * len(runs) + 2) + "|"]
    for m in models:
        cells = [f"{100 * r['pass1'][m][c]:.1f}" for r in runs for c in ("add", "mul", "all")]
        means = [f"{100 * statistics.fmean(r['pass1'][m][c] for r in runs):.1f}" for c in ("add", "mul", "all")]
        lines.append(f"| {m} | " + " | ".join(cells + means) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/multi-teacher"))
    parser.add_argument("--prompts", type=int, default=4000, help="arith:distill prompts (one trace each)")
    parser.add_argument("--steps", type=int, default=3000, help="training steps of every student")
    parser.add_argument("--eval-problems", type=int, default=200, help="arith:test problems (4 samples each)")
    for name, preset in TEACHERS.items():
        parser.add_argument(f"--{name}-teacher", default=preset, help=f"the {name} teacher [{preset}]")
    parser.add_argument("--students", nargs="+", choices=STUDENTS, default=list(STUDENTS), help="students to train")
    parser.add_argument("--train-only", action="store_true", help="train the students, evaluate nothing")
    args = parser.parse_args()
    args.teachers = {name: getattr(args, f"{name}_teacher") for name in TEACHERS}

    start = time.perf_counter()
    sources = prompt_files(args.out / "prompts", args.prompts)
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(args, seed, sources))
        if args.train_only:
            continue
        runs[-1]["targets"] = targets(runs[-1])
        results = {"runs": runs, "settings": vars(args)}
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        md = table(runs)
        (args.out / "table.md").write_text(md + "\n")
        print(f"\npass@1 on arith:test (%), after seed {seed}:\n{md}", flush=True)
        for key, value in runs[-1]["targets"].items():
            print(f"  seed {seed} {key}: {value if isinstance(value, bool) else f'{value:.2f}×'}")
    print(f"{time.perf_counter() - start:.0f} s; {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
