"""The data-efficiency curve: KD vs SFT students from 1/16, 1/4 and all of the kept teacher traces.

The result a user of this toolkit cares about most: how many teacher traces SFT needs to reach what
KD reaches from few. From finished demos — a `scripts/demo_seeds.py` directory, one demo per seed,
each with its own cache and `correct` view — for every seed and fraction, a random subset of that
seed's kept traces (drawn with the seed) becomes a view; a KD student and an SFT student train on
it with the same steps, batch and seed as the demo's students, and both are evaluated on
`arith:test` as the demo evaluates. The full-data points are the demo's own KD and SFT students
(the same training run: all kept traces, same steps and seed), so they are read, not retrained.
Every stage is a `distill` command, as a user would run it. A student already evaluated
(OUT/seed-N/nM-kd/eval.json) is read, not retrained, so an interrupted curve resumes where it stopped.
The KD and SFT students of a size train side by side, as the demo's do (an equal share of the cores each,
logs in OUT/seed-N/train-nM-kd.log), so each equals the same `distill train` run alone with that many threads.

Writes OUT/results.json (per run and aggregated) and OUT/kd_vs_sft.png (pass@1 against the number of
traces, mean and spread over seeds, the teacher as a line), prints a table and how many traces SFT
needs to match KD at each size but the largest (log-linear interpolation between measured sizes; "more
than all" when even all the traces leave SFT below).

    python scripts/kd_vs_sft.py --demos runs/demo-seeds [--fractions 0.0625 0.25 1] [--out runs/kd-vs-sft]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from distill.cache import open_cache, view_indices, write_view
from distill.demo import train_side_by_side, train_threads


def distill(*args: str) -> str:
    """One `distill` command; returns its last stdout line (progress passes through to stderr)."""
    out = subprocess.run([sys.executable, "-m", "distill", *args], stdout=subprocess.PIPE, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def evaluate(model: str, out: Path, seed: int, problems: int) -> float:
    path = out / "eval.json"
    distill(
        "eval", "--model", model, "--prompts", "arith:test", "--limit", str(problems), "--samples", "4",
        "--max-new-tokens", "96", "--seed", str(seed), "--dtype", "float32", "--out", str(path),
    )  # fmt: skip
    return json.loads(path.read_text())["summary"]["pass@1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demos", type=Path, required=True, help="a scripts/demo_seeds.py --out directory")
    parser.add_argument("--fractions", type=float, nargs="+", default=[1 / 16, 1 / 4, 1.0])
    parser.add_argument("--eval-problems", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("runs/kd-vs-sft"))
    args = parser.parse_args()

    demos = sorted(args.demos.glob("seed-*/summary.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not demos:
        raise SystemExit(f"{args.demos} holds no seed-N/summary.json: run scripts/demo_seeds.py --out {args.demos}")
    runs, summaries = [], [json.loads(p.read_text()) for p in demos]
    for demo, summary in zip(demos, summaries, strict=True):
        seed, cache_path = summary["seed"], demo.parent / "cache"
        cache = open_cache(cache_path)
        kept = view_indices(cache, "correct")
        kd_args = ["--alpha", str(summary["kd_alpha"]), "--temperature", str(summary["kd_temperature"])]
        kd_args += ["--tail", summary["kd_tail"], "--kd", summary.get("kd_kind", "forward")]
        common = ["--student", "arith-student", "--cache", str(cache_path), "--max-steps", str(summary["steps"])]
        common += ["--batch-rows", str(summary["batch_rows"]), "--save-every", str(summary["steps"])]
        for fraction in args.fractions:
            n = max(1, round(fraction * len(kept)))
            if n == len(kept):  # the demo's own students
                for name in ("kd", "sft"):
                    runs.append(
                        {"seed": seed, "traces": n, "fraction": 1.0, "loss": name, "pass1": summary[f"{name}_pass1"]}
                    )
                continue
            subset = np.random.default_rng(seed).choice(kept, size=n, replace=False)
            view = f"kd-vs-sft-s{seed}-n{n}"
            write_view(cache, view, subset.tolist(), {"source_view": "correct", "seed": seed})
            where = args.out / f"seed-{seed}"
            losses = {f"n{n}-kd": kd_args, f"n{n}-sft": ["--alpha", "1"]}
            todo = {  # a student evaluated by an earlier (interrupted) run of this script is read, not retrained
                run: ["train", *common, *loss, "--view", view, "--seed", str(seed), "--out", str(where / run)]
                for run, loss in losses.items()
                if not (where / run / "eval.json").is_file()
            }
            print(f"== seed {seed}, {n} traces: {', '.join(todo) or 'measured before'}", flush=True)
            where.mkdir(parents=True, exist_ok=True)
            for run in todo:
                shutil.rmtree(where / run, ignore_errors=True)  # one stopped mid-training starts over
            models = train_side_by_side(todo, where, summary["steps"], train_threads(len(todo))) if todo else {}
            for run in losses:
                if run in models:
                    evaluate(str(models[run]), where / run, seed, args.eval_problems)
                pass1 = json.loads((where / run / "eval.json").read_text())["summary"]["pass@1"]
                name = run.rsplit("-", 1)[1]
                runs.append({"seed": seed, "traces": n, "fraction": fraction, "loss": name, "pass1": pass1})
                print(f"   {name}: pass@1 {100 * pass1:.1f}", flush=True)

    # sizes differ a little between seeds (each seed's filter kept its own number): group by fraction,
    # and place each fraction at its mean number of traces
    fractions = sorted({r["fraction"] for r in runs})
    sizes = [round(statistics.mean(r["traces"] for r in runs if r["fraction"] == f)) for f in fractions]
    stats = {
        name: {
            n: {"mean": statistics.mean(v), "std": statistics.pstdev(v), "per_seed": v}
            for n, f in zip(sizes, fractions, strict=True)
            for v in [[100 * r["pass1"] for r in runs if r["loss"] == name and r["fraction"] == f]]
        }
        for name in ("kd", "sft")
    }
    match = {n: traces_to_match(stats, sizes, n) for n in sizes[:-1]}
    teacher = statistics.mean(100 * s["teacher_pass1"] for s in summaries)
    seeds = [s["seed"] for s in summaries]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps({"runs": runs, "pass1": stats, "sft_traces_to_match_kd": match,
                    "teacher_pass1": teacher, "settings": {"steps": summaries[0]["steps"],
                    "kd_alpha": summaries[0]["kd_alpha"], "kd_temperature": summaries[0]["kd_temperature"],
                    "seeds": seeds, "fractions": fractions}}, indent=2)
    )  # fmt: skip
    plot(stats, sizes, teacher, args.out / "kd_vs_sft.png")

    print(f"\npass@1 on arith:test (%), mean ± std over seeds {seeds}")
    print(f"{'traces':>8}{'KD':>16}{'SFT':>16}")
    for n in sizes:
        kd, sft = stats["kd"][n], stats["sft"][n]
        print(f"{n:>8}{kd['mean']:>10.1f} ± {kd['std']:<4.1f}{sft['mean']:>10.1f} ± {sft['std']:<4.1f}")
    for n, m in match.items():
        print(f"SFT needs {m} traces to match KD at {n} traces")


def traces_to_match(stats: dict, sizes: list[int], at: int) -> str:
    """How many traces SFT needs to reach KD's mean at `at` traces (interpolated in log traces)."""
    target = stats["kd"][at]["mean"]
    sft = [stats["sft"][n]["mean"] for n in sizes]
    if sft[0] >= target:
        return f"{sizes[0]} (SFT is already there)"
    for (n0, s0), (n1, s1) in zip(zip(sizes, sft, strict=True), zip(sizes[1:], sft[1:], strict=True), strict=False):
        if s1 >= target:
            t = (target - s0) / (s1 - s0)
            return f"about {round(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))))}"
    return f"more than {sizes[-1]} (all of them)"


def plot(stats: dict, sizes: list[int], teacher: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, color in (("kd", "C0"), ("sft", "C1")):
        mean = np.array([stats[name][n]["mean"] for n in sizes])
        std = np.array([stats[name][n]["std"] for n in sizes])
        ax.plot(sizes, mean, "o-", color=color, label=f"{name.upper()} student")
        ax.fill_between(sizes, mean - std, mean + std, color=color, alpha=0.2)
    ax.axhline(teacher, color="C2", linestyle="--", label="teacher")
    ax.set(xscale="log", xlabel="kept teacher traces trained on", ylabel="pass@1 on arith:test (%)", ylim=(0, 100))
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])  # the measured sizes, not log-scale minor ticks
    ax.minorticks_off()
    ax.set_title("KD vs SFT, same steps: mean ± std over seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
