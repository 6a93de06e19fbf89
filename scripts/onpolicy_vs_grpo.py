"""On-policy distillation against GRPO at equal rollouts, from the demo's SFT student, over seeds.

For every seed: the SFT student of `distill demo --seed N` (its directory OUT/../demo/seed-N, made here when
missing) is trained twice with the same rollouts per step and the same number of steps — `distill onpolicy`
with the bundled teacher (reverse-KL advantages), and `distill grpo` with the verifiers' rewards — in
`--evals` segments (`--resume` with more steps), each segment's model evaluated on arith:test as the demo
evaluates. The final models' reverse KL to the teacher is measured on arith:test prompts by
`distill onpolicy --lr 0` (both at the rollout temperature, scored by the teacher; the weights do not move),
and the SFT start, the final models and the teacher are also evaluated at the rollout temperature (top-p 1),
the distribution both objectives act on. Seeds can run as separate processes with one --out; a last run
over all seeds then finds every result on disk and writes the combined table and plot.

    python scripts/onpolicy_vs_grpo.py [--seeds 0 1 2] [--steps 300] [--evals 3] [--out runs/onpolicy-vs-grpo]
        [--demos runs/demo-reverse] [--onpolicy-lr 3e-4] [--warmup-steps 20] [--grpo-lr 1e-4] [--temperature 1.0]

Writes OUT/results.json (per seed: pass@1 after each segment, rollout tokens, reverse KL, seconds per step
split into rollout / teacher scoring / update) and OUT/onpolicy_vs_grpo.png (pass@1 against rollout tokens,
mean and range over seeds, with the SFT start and the teacher), and prints the table the README shows.
Every run resumes or is skipped when its output exists, so an interrupted comparison continues.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

EVAL = ["--prompts", "arith:test", "--limit", "200", "--samples", "4", "--max-new-tokens", "96", "--dtype", "float32"]
# fp32 engines: vLLM would run a model directory (dtype auto) in bf16 on the CPU, sampling from a rounded policy
ROLLOUTS = [
    "--prompts",
    "arith:train",
    "--batch-size",
    "64",
    "--micro-batch",
    "16",
    "--max-new-tokens",
    "96",
    "--dtype",
    "float32",
]


def distill(*args: str) -> None:
    print("$ distill " + " ".join(args), flush=True)
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    subprocess.run([sys.executable, "-m", "distill", *args], check=True, stdout=subprocess.DEVNULL, env=env)


def pass1(model: str | Path, out: Path, seed: int, temperature: str | None = None) -> float:
    """pass@1 (%) on arith:test as the demo evaluates (temperature 0.6), or at `temperature` (top-p 1)."""
    if not out.is_file():
        at = ["--temperature", temperature, "--top-p", "1.0"] if temperature else []
        distill("eval", "--model", str(model), *EVAL, *at, "--seed", str(seed), "--out", str(out))
    return 100 * json.loads(out.read_text())["summary"]["pass@1"]


def metric_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


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


def train(method: str, start: Path, out: Path, seed: int, args: argparse.Namespace) -> dict:
    """`method` from `start` in `args.evals` segments; pass@1 and rollout tokens after each."""
    steps, evals = args.steps, args.evals
    common = [*ROLLOUTS, "--seed", str(seed), "--temperature", args.temperature, "--out", str(out)]
    common += ["--report-to", "none"]
    if method == "onpolicy":
        run = ["onpolicy", "--student", str(start), "--teacher", "arith-teacher", "--group-size", "4", *common]
        run += ["--lr", args.onpolicy_lr, "--warmup-steps", str(args.warmup_steps)]
    else:  # the README's GRPO settings (G 8, β 0.04), at the on-policy run's rollouts per step and temperature
        run = ["grpo", "--policy", str(start), "--group-size", "8", *common, "--lr", args.grpo_lr]
    points = []
    for k in range(1, evals + 1):
        done = steps * k // evals
        rows = metric_rows(out) if (out / "metrics.jsonl").is_file() else []
        if not rows or rows[-1]["step"] < done:
            distill(*run, "--steps", str(done), "--save-every", str(max(done // 4, 1)), *(["--resume"] if rows else []))
            rows = metric_rows(out)
        tokens = sum(r["completion_len_mean"] * 64 for r in rows[:done])
        points.append(
            {"steps": done, "rollout_tokens": tokens, "pass1": pass1(out / "model", out / f"eval-{done}.json", seed)}
        )
    rows = metric_rows(out)
    split = {
        k: statistics.mean(r[k] for r in rows if k in r)
        for k in ("rollout_s", "teacher_s", "update_s", "seconds")
        if any(k in r for r in rows)
    }
    return {"points": points, "seconds_per_step": split}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--evals", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/onpolicy-vs-grpo"))
    parser.add_argument("--demos", type=Path, default=Path("runs/demo-reverse"))
    parser.add_argument("--onpolicy-lr", default="3e-4")
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--grpo-lr", default="1e-4")
    parser.add_argument("--temperature", default="1.0", help="rollout temperature of both (the demo evaluates at 0.6)")
    args = parser.parse_args()

    results = {}
    for seed in args.seeds:
        demo = args.demos / f"seed-{seed}"
        if not (demo / "summary.json").is_file():
            distill("demo", "--seed", str(seed), "--out", str(demo))
        summary = json.loads((demo / "summary.json").read_text())
        start = demo / "sft" / "model"
        out = args.out / f"seed-{seed}"
        r = {"teacher": 100 * summary["teacher_pass1"], "sft": 100 * summary["sft_pass1"]}
        r["sft_reverse_kl"] = reverse_kl(start, out / "kl-sft", seed, args.temperature)
        for method in ("onpolicy", "grpo"):
            r[method] = train(method, start, out / method, seed, args)
            r[method]["reverse_kl"] = reverse_kl(out / method / "model", out / f"kl-{method}", seed, args.temperature)
            r[method]["pass1_at_rollout_t"] = pass1(
                out / method / "model", out / f"eval-{method}-t.json", seed, args.temperature
            )
        # the temperature both trained at: what their objectives act on
        r["sft_at_rollout_t"] = pass1(start, out / "eval-sft-t.json", seed, args.temperature)
        r["teacher_at_rollout_t"] = pass1("arith-teacher", out / "eval-teacher-t.json", seed, args.temperature)
        results[seed] = r
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(
            json.dumps({"args": vars(args), "seeds": results}, indent=2, default=str)
        )

    report(results, args.out)


def report(results: dict, out: Path) -> None:
    """The README's table and the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted(results)
    print(f"\narith:test pass@1 (%) from the demo's SFT student, seeds {seeds}")
    print(
        f"{'':<10}{'SFT':>8}{'onpolicy':>10}{'grpo':>8}{'teacher':>9}{'closed':>9}   reverse KL sft → onpolicy / grpo"
    )
    for s in seeds:
        r = results[s]
        op, gr = r["onpolicy"]["points"][-1]["pass1"], r["grpo"]["points"][-1]["pass1"]
        closed = (op - r["sft"]) / (r["teacher"] - r["sft"])
        print(
            f"seed {s:<5}{r['sft']:8.1f}{op:10.1f}{gr:8.1f}{r['teacher']:9.1f}{closed:9.2f}   "
            f"{r['sft_reverse_kl']:.3f} → {r['onpolicy']['reverse_kl']:.3f} / {r['grpo']['reverse_kl']:.3f}"
        )
    print("at the rollout temperature (top-p 1): SFT → onpolicy / grpo (teacher)")
    for s in seeds:
        r = results[s]
        print(
            f"seed {s:<5}{r['sft_at_rollout_t']:.1f} → {r['onpolicy']['pass1_at_rollout_t']:.1f} / "
            f"{r['grpo']['pass1_at_rollout_t']:.1f} ({r['teacher_at_rollout_t']:.1f})"
        )
    for method in ("onpolicy", "grpo"):
        finals = [results[s][method]["points"][-1]["pass1"] for s in seeds]
        logged = [
            k for k in ("rollout_s", "teacher_s", "update_s") if k in results[seeds[0]][method]["seconds_per_step"]
        ]
        split = ", ".join(
            f"{k[:-2]} {statistics.mean(results[s][method]['seconds_per_step'][k] for s in seeds):.2f}" for k in logged
        )  # grpo logs its rollout seconds only
        step = statistics.mean(results[s][method]["seconds_per_step"]["seconds"] for s in seeds)
        spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
        print(f"{method}: pass@1 {statistics.mean(finals):.1f} ± {spread:.1f}; seconds per step {step:.2f} ({split})")

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, color in (("onpolicy", "tab:blue"), ("grpo", "tab:orange")):
        n = len(results[seeds[0]][method]["points"])
        xs = [0.0] + [
            statistics.mean(results[s][method]["points"][i]["rollout_tokens"] for s in seeds) for i in range(n)
        ]
        ys = [[results[s]["sft"]] + [p["pass1"] for p in results[s][method]["points"]] for s in seeds]
        mean = [statistics.mean(col) for col in zip(*ys, strict=True)]
        ax.plot(xs, mean, "o-", color=color, label=f"distill {method}")
        ax.fill_between(
            xs, [min(c) for c in zip(*ys, strict=True)], [max(c) for c in zip(*ys, strict=True)], color=color, alpha=0.2
        )
    ax.axhline(statistics.mean(results[s]["teacher"] for s in seeds), color="k", ls="--", label="teacher")
    ax.set_xlabel("rollout tokens (student samples)")
    ax.set_ylabel("arith:test pass@1 at T 0.6 (%)")
    ax.set_title(f"From the SFT student, {len(seeds)} seeds (mean, range)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "onpolicy_vs_grpo.png", dpi=120)
    print(out / "onpolicy_vs_grpo.png")


if __name__ == "__main__":
    main()
