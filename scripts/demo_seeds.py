"""Run `distill demo` over several seeds and report teacher / KD / SFT pass@1 as mean, spread and range.

One demo is one seed of generation, training and evaluation; whether KD beats SFT is only a claim
once it holds across seeds. Every extra option is passed on to `distill demo` unchanged.

    python scripts/demo_seeds.py [--seeds 0 1 2] [--out runs/demo-seeds] [-- --steps 1600 ...]

Prints a table and writes OUT/seeds.json (per seed and aggregate) beside each seed's own demo directory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

MODELS = ("teacher", "kd", "sft")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/demo-seeds"))
    args, demo_args = parser.parse_known_args()
    demo_args = [a for a in demo_args if a != "--"]

    runs = []
    for seed in args.seeds:
        out = args.out / f"seed-{seed}"
        cmd = [sys.executable, "-m", "distill", "demo", "--seed", str(seed), "--out", str(out), *demo_args]
        print(f"== seed {seed}: {' '.join(cmd[2:])}", flush=True)
        subprocess.run(cmd, check=True)
        runs.append(json.loads((out / "summary.json").read_text()))

    aggregate = {}
    for name in MODELS:
        values = [100 * r[f"{name}_pass1"] for r in runs]
        aggregate[name] = {
            "mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
            "per_seed": values,
        }
    gaps = [100 * (r["kd_pass1"] - r["sft_pass1"]) for r in runs]
    aggregate["kd_minus_sft"] = {"mean": statistics.mean(gaps), "per_seed": gaps, "kd_wins": sum(g > 0 for g in gaps)}
    aggregate["seconds"] = [r["seconds"] for r in runs]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "seeds.json").write_text(json.dumps({"seeds": args.seeds, "runs": runs, "pass1": aggregate}, indent=2))

    print(f"\npass@1 on arith:test over seeds {args.seeds} (%)")
    print(f"{'model':<10}{'mean':>8}{'std':>8}{'min':>8}{'max':>8}   per seed")
    for name in MODELS:
        a = aggregate[name]
        per_seed = " ".join(f"{v:.1f}" for v in a["per_seed"])
        print(f"{name:<10}{a['mean']:8.1f}{a['std']:8.1f}{a['min']:8.1f}{a['max']:8.1f}   {per_seed}")
    g = aggregate["kd_minus_sft"]
    print(f"KD − SFT: {g['mean']:+.1f} points on average; KD ahead in {g['kd_wins']} of {len(gaps)} seeds")
    print(f"seconds per demo: {', '.join(f'{s:.0f}' for s in aggregate['seconds'])}")


if __name__ == "__main__":
    main()
