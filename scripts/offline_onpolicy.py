"""Offline on-policy distillation (Lightning OPD): the student samples once, the teacher scores, the student learns.

Rounds of three existing commands, each round starting from the last round's student:

1. `distill generate --teacher STUDENT --top-k 0`: the student samples `--completions` completions of its own
   (`--group-size` per prompt, at `--temperature`, top-p 1) on a slice of the prompts no other round uses;
2. `distill score --teacher TEACHER --traces <those samples>`: the teacher's top-k and exact tail at every
   position the student wrote, teacher-forced, into a cache (one teacher pass; no teacher beside the trainer);
3. `distill train --student STUDENT --cache <scores> --alpha 0`: the KD loss (`--kd`, reverse by default) on the
   student's own samples, `--epochs` passes (1: every scored token once, as a live `distill onpolicy` run uses
   it), plus whatever follows `--` (e.g. `--lr 1e-4`).

`--sampler teacher` is the control at the same budget: the teacher writes each round's samples with its top-k
(continued offline KD on fresh traces), the filter keeps the correct ones, and train learns with the given loss
(pass `-- --alpha 0.5` for the demo's).

The live stage (`distill onpolicy --loss topk`) does the same per step with the teacher in the trainer's process;
offline, the teacher can be anywhere and run once per round, the caches are inspectable and reusable, and the
student's rollouts are paid once per round instead of once per step. The samples are scored after the student's
rendering of the prompt, so the teacher must share the student's tokenizer and chat template (the bundled
models do; `distill onpolicy` renders the teacher's own template instead).

    python scripts/offline_onpolicy.py --student demo-out/kd/model [--teacher arith-teacher] [--prompts arith:train]
        [--rounds 3] [--completions 6400] [--group-size 4] [--temperature 1.0] [--out runs/offline-opd]
        [-- --lr 1e-4 ...]

Writes OUT/round-R/{samples,scores,train} and OUT/rounds.json (per round: completion tokens, seconds, the model,
the final KD); prints the last model's directory. A rerun skips the rounds already done.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path


def distill(*args: str, log: Path) -> None:
    print("$ distill " + shlex.join(args), flush=True)
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    with open(log, "a") as out:
        subprocess.run([sys.executable, "-m", "distill", *args], check=True, stdout=out, stderr=out, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True, help="the model that samples and learns (a distill OUT/model)")
    parser.add_argument("--teacher", default="arith-teacher")
    parser.add_argument("--prompts", default="arith:train")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--completions", type=int, default=6400, help="student samples per round")
    parser.add_argument("--group-size", type=int, default=4, help="samples per prompt")
    parser.add_argument("--temperature", default="1.0", help="the student's sampling temperature")
    parser.add_argument("--max-new-tokens", default="96")
    parser.add_argument("--kd", default="reverse", help="train's --kd on the student's samples")
    parser.add_argument("--epochs", default="1", help="passes over each round's samples")
    parser.add_argument("--sampler", choices=["student", "teacher"], default="student",
                        help="who writes each round's samples: the student (on-policy), or the teacher (continued "
                        "offline KD at the same budget: its top-k, the correct traces kept)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/offline-opd"))
    args, train_args = parser.parse_known_args()
    train_args = [a for a in train_args if a != "--"]
    args.out.mkdir(parents=True, exist_ok=True)
    log, done_path = args.out / "log.txt", args.out / "rounds.json"
    rounds = json.loads(done_path.read_text()) if done_path.is_file() else []
    student = rounds[-1]["model"] if rounds else args.student
    prompts = args.completions // args.group_size
    for r in range(len(rounds), args.rounds):
        here = args.out / f"round-{r + 1}"
        started = time.perf_counter()
        on_policy = args.sampler == "student"
        distill("generate", "--teacher", str(student) if on_policy else args.teacher, "--prompts", args.prompts,
                "--limit", str(prompts * args.rounds), "--shard-index", str(r), "--num-shards", str(args.rounds),
                "--samples-per-prompt", str(args.group_size), "--temperature", args.temperature, "--top-p", "1.0",
                "--max-new-tokens", args.max_new_tokens, "--top-k", "0" if on_policy else "20", "--dtype", "float32",
                "--seed", str(args.seed + r), "--out", str(here / "samples"), log=log)  # fmt: skip
        if on_policy:  # the teacher's top-k at every position the student wrote
            distill("score", "--teacher", args.teacher, "--traces", str(here / "samples"), "--out",
                    str(here / "scores"), log=log)  # fmt: skip
            data = ["--cache", str(here / "scores"), "--alpha", "0"]
        else:  # the teacher's own traces: keep the correct ones, as `distill demo` does
            distill("filter", str(here / "samples"), "--verifiers", "math,format", "--name", "correct", log=log)
            data = ["--cache", str(here / "samples"), "--view", "correct"]
        distill("train", "--student", str(student), *data, "--kd", args.kd, "--epochs", args.epochs,
                "--seed", str(args.seed), "--out", str(here / "train"), "--report-to", "none", *train_args,
                log=log)  # fmt: skip
        index = json.loads((here / ("scores" if on_policy else "samples") / "index.json").read_text())
        metrics = [json.loads(line) for line in (here / "train" / "metrics.jsonl").read_text().splitlines()]
        student = str(here / "train" / "model")
        rounds.append(
            {
                "round": r + 1,
                "tokens": index["tokens"],
                "seconds": time.perf_counter() - started,
                "model": student,
                "kd": sum(m["kd"] for m in metrics[-10:]) / len(metrics[-10:]),
                "kd_first": metrics[0]["kd"],
            }
        )
        done_path.write_text(json.dumps(rounds, indent=2))
    print(student)


if __name__ == "__main__":
    main()
