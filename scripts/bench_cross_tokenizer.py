"""Benchmark what crossing tokenizers costs the trainer, per optimizer step and per trace. One run.

On a real demo cache (the bundled teacher's kept traces), three trainers are set up in this process
with the demo's settings (reverse KL, α 0.5, 4 rows of 512 tokens per step):

- `same`: `arith-student` (the teacher's tokenizer), the ordinary path: the baseline;
- `same-xt`: the same student with `--cross-tokenizer`: re-tokenised, aligned and mapped, every position
  one-to-one (what the machinery itself costs);
- `bpe-xt`: `arith-student-bpe` (its own BPE: numbers whole) with `--cross-tokenizer`: ~41% of the teacher's
  positions merged;
- `bytes-xt`: `arith-student-bytes` (bytes) with `--cross-tokenizer`: ~33% merged, 1.8 tokens per teacher token.

Their steps alternate (round robin, `--steps` each) and median step times are compared, so machine
noise hits all alike. Also printed: set-up time (re-tokenising and aligning every kept record), loss
tokens per step and records per step (a tokenizer that spells a trace in fewer tokens packs more records into
a row), and seconds per record against `same`. The last line printed is one JSON object.

    OMP_NUM_THREADS=1 python scripts/bench_cross_tokenizer.py --cache runs/demo-reverse/seed-0/cache [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from distill.configs import TrainConfig
from distill.train import TrainRecipe

SETUPS = {
    "same": ("arith-student", False),
    "same-xt": ("arith-student", True),
    "bpe-xt": ("arith-student-bpe", True),
    "bytes-xt": ("arith-student-bytes", True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="a demo cache with a `correct` view")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    trainers, setup_s = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (student, xt) in SETUPS.items():
            cfg = TrainConfig(
                student=student, cache=str(args.cache), view="correct", cross_tokenizer=xt, kd="reverse",
                alpha=0.5, batch_rows=4, max_steps=10_000, out=Path(tmp) / name,
            )  # fmt: skip
            start = time.perf_counter()
            trainers[name] = TrainRecipe(cfg)
            trainers[name].setup()
            setup_s[name] = time.perf_counter() - start
        times = {name: [] for name in SETUPS}
        tokens, records = {name: [] for name in SETUPS}, {name: [] for name in SETUPS}
        for _ in range(args.steps + 1):  # the first round warms up and is dropped
            for name, trainer in trainers.items():
                start = time.perf_counter()
                row = trainer._step()
                times[name].append(time.perf_counter() - start)
                tokens[name].append(row["tokens"])
                records[name].append(sum(len(r) for r in trainer.loader.step_rows(trainer.step - 1)))
    step = {name: statistics.median(t[1:]) for name, t in times.items()}
    tokens = {name: statistics.mean(v) for name, v in tokens.items()}
    records = {name: statistics.mean(v) for name, v in records.items()}
    out = {
        "step_s": step,
        "step_ratio_vs_same": {name: step[name] / step["same"] for name in SETUPS},
        "setup_s": setup_s,
        "loss_tokens_per_step": tokens,
        "records_per_step": records,
        "s_per_record_ratio_vs_same": {
            name: (step[name] / records[name]) / (step["same"] / records["same"]) for name in SETUPS
        },
    }
    for name in SETUPS:
        print(
            f"{name:>9}: {step[name] * 1000:7.1f} ms/step ({out['step_ratio_vs_same'][name]:.2f}× same), "
            f"{records[name]:.1f} records and {tokens[name]:.0f} loss tokens per step, set-up {setup_s[name]:.1f} s"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
