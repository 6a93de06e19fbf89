"""On-policy distillation against GRPO and offline alternatives at equal rollouts, from the demo's students.

For every seed and start (the demo's SFT and KD students, `distill demo --seed N`, made here when missing) each
method spends the same number of student completions (`--completions`, rollout tokens as they fall), in
`--evals` segments; after each segment the model is evaluated on arith:test as the demo evaluates (temperature
0.6) and at the rollout temperature (top-p 1), and its reverse KL to the teacher is measured on arith:test
prompts (`distill onpolicy --lr 0`: the student's own samples scored by the teacher, nothing moves). Methods:

- `onpolicy:ARGS`: `distill onpolicy` with the bundled teacher, ARGS added (the batch size sets the steps);
- `grpo:ARGS`: `distill grpo` with the verifiers' rewards, ARGS added;
- `offline:ARGS`: offline on-policy distillation (scripts/offline_onpolicy.py): per segment the student samples
  the segment's completions once (`distill generate`), the teacher scores them (`distill score`), and
  `distill train --alpha 0` learns on them; ARGS are the script's options, then `--` and train's;
- `kd:ARGS`: the control, continued offline KD at the same budget: per segment the teacher writes as many fresh
  traces (with its top-k), the filter keeps the correct ones, and `distill train` learns on them (the same script,
  `--sampler teacher`; ARGS as for offline).

`--method NAME=KIND:ARGS` adds a method (the named ones below are the defaults); the diagnosis runs use it, e.g.
`--method 'r8=onpolicy:--batch-size 8 --lr 1e-4'`. Every run resumes or is skipped when its output exists, so an
interrupted comparison continues, and seeds can run as separate processes with one --out; a last run over all
seeds finds every result on disk and writes the combined table and plots.

    python scripts/onpolicy_vs_grpo.py [--seeds 0 1 2] [--starts sft kd] [--methods onpolicy grpo ...]
        [--method NAME=KIND:ARGS ...] [--completions 19200] [--evals 3] [--demos runs/demo-seeds]
        [--out runs/onpolicy-vs-grpo]

Writes OUT/results.json (per seed, start and method: the points — completions, rollout tokens, seconds,
pass@1 at 0.6 and at the rollout temperature, reverse KL — and seconds per step split into rollout / teacher /
update) and OUT/pass1_vs_tokens.png, OUT/pass1_vs_seconds.png, and prints the table the README shows.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EVAL = ["--prompts", "arith:test", "--limit", "200", "--samples", "4", "--max-new-tokens", "96", "--dtype", "float32"]
# fp32 engines: vLLM would run a model directory (dtype auto) in bf16 on the CPU, sampling from a rounded policy
ROLLOUTS = ["--prompts", "arith:train", "--max-new-tokens", "96", "--dtype", "float32", "--report-to", "none"]
# the measured recipe (docs/results/onpolicy-vs-grpo.md), spelled out: a start made before model directories
# remembered their preset would otherwise get the generic defaults; live cosine runs decay over the whole budget
RECIPE = "--batch-size 32 --lr 3e-4 --warmup-steps 20 --iterations 4 --lr-schedule cosine"
METHODS = {
    "onpolicy": f"onpolicy:--loss topk {RECIPE}",
    "full": f"onpolicy:--loss full {RECIPE}",
    "offline": "offline:--epochs 2 -- --lr 3e-4 --batch-rows 4",
    "kd": "kd:--epochs 2 --temperature 0.6 -- --lr 3e-4 --batch-rows 4 --alpha 0.5",
    "grpo": "grpo:--group-size 8 --batch-size 64 --lr 1e-4",
}


def distill(*args: str, log: Path | None = None) -> None:
    print("$ distill " + shlex.join(args), flush=True)
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "a") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        subprocess.run([sys.executable, "-m", "distill", *args], check=True, stdout=out, stderr=out, env=env)
    finally:
        if log:
            out.close()


def metric_rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def option(args: list[str], name: str, default: str) -> str:
    return args[args.index(name) + 1] if name in args else default


# ---------------------------------------------------------------------------------------------
# measurements of one model


def pass1(model: str | Path, out: Path, seed: int, temperature: str | None = None) -> float:
    """pass@1 (%) on arith:test as the demo evaluates (temperature 0.6), or at `temperature` (top-p 1)."""
    if not out.is_file():
        at = ["--temperature", temperature, "--top-p", "1.0"] if temperature else []
        distill("eval", "--model", str(model), *EVAL, *at, "--seed", str(seed), "--out", str(out))
    return 100 * json.loads(out.read_text())["summary"]["pass@1"]


def reverse_kl(model: Path, out: Path, seed: int, temperature: str) -> float:
    """Mean per-token reverse KL of `model` to the teacher at `temperature`, on test prompts (lr 0)."""
    if not (out / "model").is_dir():
        distill(
            "onpolicy", "--student", str(model), "--teacher", "arith-teacher", "--prompts", "arith:test",
            "--batch-size", "64", "--group-size", "4", "--max-new-tokens", "96", "--steps", "4", "--lr", "0",
            "--self-check", "0", "--dtype", "float32", "--seed", str(seed), "--temperature", temperature,
            "--out", str(out), "--report-to", "none",
        )  # fmt: skip
    rows = metric_rows(out)
    return sum(r["reverse_kl"] for r in rows) / len(rows)


def measure(model: Path, where: Path, seed: int, temperature: str) -> dict:
    """pass@1 at 0.6 and at the rollout temperature, and the reverse KL, of `model` (once: several comparisons
    sharing one --out measure a shared start under a lock)."""
    import fcntl

    where.mkdir(parents=True, exist_ok=True)
    with open(where / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _measure(model, where, seed, temperature)


def _measure(model: Path, where: Path, seed: int, temperature: str) -> dict:
    return {
        "pass1": pass1(model, where / "eval.json", seed),
        "pass1_at_rollout_t": pass1(model, where / "eval-t.json", seed, temperature),
        "reverse_kl": reverse_kl(model, where / "kl", seed, temperature),
    }


# ---------------------------------------------------------------------------------------------
# the methods: each spends `completions` student samples in `evals` segments and returns its points


def live(kind: str, args: list[str], start: Path, out: Path, seed: int, budget: int, evals: int) -> list[dict]:
    """`distill onpolicy` / `distill grpo` in segments (--resume with more steps)."""
    batch = int(option(args, "--batch-size", "64"))
    steps = budget // batch
    if kind == "onpolicy":
        run = ["onpolicy", "--student", str(start), "--teacher", "arith-teacher", "--self-check", "0"]
    else:
        run = ["grpo", "--policy", str(start)]
    run += [*ROLLOUTS, "--seed", str(seed), "--out", str(out / "run"), *args]
    cosine = option(args, "--lr-schedule", "cosine" if kind == "onpolicy" else "constant") == "cosine"
    if cosine and "--decay-steps" not in args:  # one schedule over the budget, not one per segment
        run += ["--decay-steps", str(steps)]
    points = []
    for k in range(1, evals + 1):
        done = steps * k // evals
        rows = metric_rows(out / "run")
        if not rows or rows[-1]["step"] < done:
            every = str(max(done // 4, 1))
            distill(*run, "--steps", str(done), "--save-every", every, *(["--resume"] if rows else []),
                    log=out / "log.txt")  # fmt: skip
            rows = metric_rows(out / "run")
        used = rows[:done]
        points.append(
            {
                "completions": done * batch,
                "rollout_tokens": sum(r["completion_len_mean"] * batch for r in used),
                "seconds": sum(r["seconds"] for r in used),
                "model": str(out / "run" / "model") if k == evals else None,
                "train_reverse_kl": statistics.mean(r["reverse_kl"] for r in used[-10:]) if "reverse_kl" in used[0]
                else None,
            }
        )  # fmt: skip
        if k < evals:  # keep the segment's model: the next segment's --resume overwrites run/model
            snapshot = out / f"model-{done}"
            if not snapshot.is_dir():
                subprocess.run(["cp", "-r", str(out / "run" / "model"), str(snapshot)], check=True)
            points[-1]["model"] = str(snapshot)
    return points


def offline(
    args: list[str], start: Path, out: Path, seed: int, budget: int, evals: int, sampler: str = "student"
) -> list[dict]:
    """One round of scripts/offline_onpolicy.py per segment: the student's samples scored by the teacher
    (`sampler` student: offline on-policy), or the teacher's own traces (teacher: continued offline KD on fresh
    traces at the same budget); ARGS are its options, then `--` and train's."""
    script = REPO / "scripts" / "offline_onpolicy.py"
    per_round = budget // evals
    own, train = (args[: args.index("--")], args[args.index("--") + 1 :]) if "--" in args else ([], args)
    cmd = [sys.executable, str(script), "--student", str(start), "--rounds", str(evals), "--completions",
           str(per_round), "--sampler", sampler, "--seed", str(seed), "--out", str(out), *own,
           "--", *train]  # fmt: skip
    if not (out / "rounds.json").is_file() or len(json.loads((out / "rounds.json").read_text())) < evals:
        print("$ " + shlex.join(cmd[1:]), flush=True)
        out.mkdir(parents=True, exist_ok=True)
        with open(out.parent / f"{out.name}-log.txt", "a") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=log)
    rounds = json.loads((out / "rounds.json").read_text())
    points, tokens, seconds = [], 0, 0.0
    for k, r in enumerate(rounds, 1):
        tokens, seconds = tokens + r["tokens"], seconds + r["seconds"]
        points.append({"completions": per_round * k, "rollout_tokens": tokens, "seconds": seconds,
                       "model": r["model"], "train_reverse_kl": r.get("kd")})  # fmt: skip
    return points


# ---------------------------------------------------------------------------------------------
# the comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--starts", nargs="+", default=["sft", "kd"], choices=["sft", "kd"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="names of METHODS or of --method")
    parser.add_argument("--method", action="append", default=[], help="NAME=KIND:ARGS, KIND one of onpolicy, grpo, "
                        "offline, kd (kd spends the tokens of the first onpolicy method)")  # fmt: skip
    parser.add_argument("--completions", type=int, default=19_200, help="student samples each method spends")
    parser.add_argument("--evals", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/onpolicy-vs-grpo"))
    parser.add_argument("--demos", type=Path, default=Path("runs/demo-seeds"))
    args = parser.parse_args()
    methods = dict(METHODS)
    for spec in args.method:
        name, _, rest = spec.partition("=")
        methods[name] = rest
    unknown = [m for m in args.methods if m not in methods]
    if unknown:
        parser.error(f"unknown methods {unknown}; define them with --method NAME=KIND:ARGS")

    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text())["seeds"] if results_path.is_file() else {}
    for seed in args.seeds:
        demo = args.demos / f"seed-{seed}"
        if not (demo / "summary.json").is_file():
            distill("demo", "--seed", str(seed), "--out", str(demo))
        summary = json.loads((demo / "summary.json").read_text())
        for start_name in args.starts:
            start = demo / start_name / "model"
            base = args.out / f"seed-{seed}" / start_name
            entry = results.setdefault(str(seed), {}).setdefault(start_name, {})
            entry["teacher"] = 100 * summary["teacher_pass1"]
            for name in args.methods:
                kind, _, extra = methods[name].partition(":")
                extra_args = shlex.split(extra)
                temperature = option(extra_args, "--temperature", "1.0")
                out = base / name
                if kind in ("onpolicy", "grpo"):
                    points = live(kind, extra_args, start, out, seed, args.completions, args.evals)
                elif kind in ("offline", "kd"):
                    sampler = "student" if kind == "offline" else "teacher"
                    points = offline(extra_args, start, out, seed, args.completions, args.evals, sampler)
                else:
                    raise SystemExit(f"method {name}: unknown kind {kind!r}")
                start_point = measure(start, base / "start" / f"t{temperature}", seed, temperature)
                for i, p in enumerate(points):
                    p.update(measure(Path(p["model"]), out / f"point-{i + 1}", seed, temperature))
                split = {}
                for key in ("rollout_s", "teacher_s", "update_s", "seconds"):
                    values = [r[key] for r in metric_rows(out / "run") if key in r]
                    if values:
                        split[key] = statistics.mean(values)
                entry[name] = {"spec": methods[name], "start": start_point, "points": points, "seconds_per_step": split}
                results = save_result(results_path, methods, seed, start_name, name, entry)
    report(results, args.out)


def save_result(path: Path, methods: dict, seed: int, start: str, name: str, entry: dict) -> dict:
    """Merge one method's result into `path` under a lock (several comparisons may share one --out); the whole."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = json.loads(path.read_text()) if path.is_file() else {"methods": {}, "seeds": {}}
        doc["methods"].update(methods)
        mine = doc["seeds"].setdefault(str(seed), {}).setdefault(start, {})
        mine["teacher"], mine[name] = entry["teacher"], entry[name]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.rename(path)
    return doc["seeds"]


def method_names(results: dict, start: str) -> list[str]:
    """The methods run from `start` in any seed, in the order they first appear."""
    names = [n for seed in sorted(results) for n in results[seed].get(start, {}) if n != "teacher"]
    return list(dict.fromkeys(names))


def report(results: dict, out: Path) -> None:
    """The README's table and the two plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted(results)
    starts = sorted({s for seed in seeds for s in results[seed]})
    for start in starts:
        names = method_names(results, start)
        teacher = statistics.mean(results[s][start]["teacher"] for s in seeds if start in results[s])
        first = statistics.mean(  # every method of a seed starts from the same student
            next(v["start"]["pass1"] for n, v in results[s][start].items() if n != "teacher")
            for s in seeds
            if start in results[s]
        )
        print(f"\nfrom the {start} student ({first:.1f}; teacher {teacher:.1f}), seeds {seeds}: pass@1 at T 0.6 "
              "(at the rollout T), the share of the start's gap to the teacher closed (over the seeds the method "
              "ran), reverse KL, training seconds for the budget")  # fmt: skip
        for name in names:
            have = [s for s in seeds if name in results[s][start]]
            runs = [results[s][start][name] for s in have]
            finals = [r["points"][-1]["pass1"] for r in runs]
            gaps = [(r["points"][-1]["pass1"] - r["start"]["pass1"]) / (results[s][start]["teacher"] - r["start"][
                "pass1"]) for s, r in zip(have, runs, strict=True)]  # fmt: skip
            at_t = [r["points"][-1]["pass1_at_rollout_t"] for r in runs]
            kl = [r["points"][-1]["reverse_kl"] for r in runs]
            seconds = [r["points"][-1]["seconds"] for r in runs]
            spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
            print(f"  {name:<16}{statistics.mean(finals):6.1f} ± {spread:3.1f}  ({statistics.mean(at_t):5.1f})  "
                  f"per seed {' '.join(f'{s}:{v:.1f}' for s, v in zip(have, finals, strict=True))}  closes "
                  f"{statistics.mean(gaps):+.0%} of the gap  {statistics.mean(kl):.3f} nats  "
                  f"{statistics.mean(seconds):.0f} s")  # fmt: skip

    for axis, label in (("rollout_tokens", "rollout tokens (student samples)"), ("seconds", "training seconds")):
        fig, axes = plt.subplots(1, len(starts), figsize=(6 * len(starts), 4), squeeze=False)
        for ax, start in zip(axes[0], starts, strict=True):
            for name in method_names(results, start):
                runs = [results[s][start][name] for s in seeds if name in results[s][start]]
                points = zip(*(r["points"] for r in runs), strict=True)
                xs = [0.0] + [statistics.mean(p[axis] for p in col) for col in points]
                ys = [[r["start"]["pass1"]] + [p["pass1"] for p in r["points"]] for r in runs]
                cols = list(zip(*ys, strict=True))
                ax.plot(xs, [statistics.mean(c) for c in cols], "o-", label=name)
                ax.fill_between(xs, [min(c) for c in cols], [max(c) for c in cols], alpha=0.15)
            ax.axhline(statistics.mean(results[s][start]["teacher"] for s in seeds), color="k", ls="--",
                       label="teacher")  # fmt: skip
            ax.set_xlabel(label)
            ax.set_ylabel("arith:test pass@1 at T 0.6 (%)")
            ax.set_title(f"from the {start} student, {len(seeds)} seed(s): mean, range")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"pass1_vs_{'tokens' if axis == 'rollout_tokens' else 'seconds'}.png", dpi=120)
        plt.close(fig)


if __name__ == "__main__":
    main()
