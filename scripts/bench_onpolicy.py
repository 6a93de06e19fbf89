"""Benchmark a `distill onpolicy` step against a `distill grpo` step at equal rollouts.

In one run, from the same student and on the same prompts: `distill onpolicy` with its defaults for the student
(for arith-student: top-k loss, 32 completions a step, μ = 4) and `distill grpo` as the comparison runs it (G 8,
64 completions a step, μ = 1), each for the same number of completions, alternating `--repeats` times so machine
noise hits both alike. Each run's first steps (engine warm-up, compilation) are left out; the figure is the median
of the seconds per completion over the rest, split into rollout, teacher and update as `metrics.jsonl` logs them.
The goal is on-policy ≤ 1.3× GRPO per completion. The last line is one JSON object.

    python scripts/bench_onpolicy.py [--student demo-out/kd/model] [--completions 1280] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from distill.presets import resolve_preset

COMMON = ["--prompts", "arith:train", "--max-new-tokens", "96", "--dtype", "float32", "--report-to", "none"]
WARMUP = 3  # steps left out of each run


def run(kind: str, student: str, completions: int, out: Path, seed: int) -> dict[str, float]:
    """One run of `kind`; the median seconds per completion after the warm-up steps, overall and split."""
    if kind == "onpolicy":
        args = ["onpolicy", "--student", student, "--teacher", "arith-teacher", "--self-check", "0"]
        batch = resolve_preset(student, "student").onpolicy.batch_size  # what the run will take
    else:
        args = ["grpo", "--policy", student, "--group-size", "8", "--batch-size", "64", "--lr", "1e-4"]
        batch = 64
    steps = completions // batch + WARMUP
    cmd = [*args, *COMMON, "--steps", str(steps), "--save-every", str(steps), "--seed", str(seed), "--out", str(out)]
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    subprocess.run([sys.executable, "-m", "distill", *cmd], check=True, capture_output=True, env=env)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][WARMUP:]
    split = {k: statistics.median(r[k] for r in rows) / batch for k in ("seconds", "rollout_s", "teacher_s",
                                                                         "update_s") if k in rows[0]}  # fmt: skip
    return split | {"batch": batch, "steps": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", default="demo-out/kd/model", help="the start of both (a demo KD student)")
    parser.add_argument("--completions", type=int, default=1280, help="completions each run spends after warm-up")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"onpolicy": [], "grpo": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for kind in results:
                results[kind].append(run(kind, args.student, args.completions, Path(tmp) / f"{kind}-{r}", r))
                print(f"{kind} #{r + 1}: {1000 * results[kind][-1]['seconds']:.1f} ms per completion", flush=True)
    per = {kind: statistics.median(x["seconds"] for x in runs) for kind, runs in results.items()}
    summary = {
        kind: {k: statistics.median(x[k] for x in runs) for k in runs[0] if k != "steps"}
        for kind, runs in results.items()
    }
    ratio = per["onpolicy"] / per["grpo"]
    print(f"on-policy / GRPO per completion: {ratio:.2f}× (goal ≤ 1.3×)")
    print(json.dumps({"ratio": ratio, **summary}))


if __name__ == "__main__":
    main()
