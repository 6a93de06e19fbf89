"""Benchmark the math verifier's worker pool: verdicts per second with W worker processes against one.

What runs is what `distill filter` runs: `verify_batch("math", completions, golds, workers=...)`, which
extracts each completion's answer in this process and sends what needs sympy to the shared pool of
worker processes (distill.verify.pool). "One process" is the same call with workers=1: one worker
does the sympy work while this process extracts answers and talks to it, as `--workers 1` does.

The inputs are real gold answers no one here wrote, from the local copies in shared/data: MATH-500
(LaTeX: fractions, matrices, intervals, degrees, bases, complex numbers) and GSM8K (worked solutions
ending `#### N`, passed whole, as a cache built from the raw file stores them). Each gold gets several
R1-style completions, `<think>…</think> … \\boxed{ANSWER}`, whose reasoning (the problem or the worked
solution, repeated to --reasoning-chars, with an abandoned boxed guess in it) comes first:

- exact: the gold verbatim, settled in this process without sympy, as most correct samples are;
- equivalent: forms math-verify must prove equal (`\\frac{2N}{2}`, `\\sqrt{N^2}`, `x = N`, `\\$N`,
  `N \\text{ dollars}`, `1{,}000`, `\\dfrac` for `\\frac`);
- wrong: near misses (`N + 1`, `G + 1`) and another problem's answer.

Every verdict is checked against how its completion was built (printed as "verdicts as built").
Items are shuffled with a fixed seed: math-verify caches its 20 latest parses in each process, so in
the filter's order (the samples of one prompt together) one process would reuse a gold's parse that
W workers each redo, and the ratio would measure that cache rather than the pool.

Workers are started and warmed first (start-up, about 0.6 s a worker with sympy, is paid once per
filter run); then one-process and W-worker runs alternate --repeats times and the medians are taken,
so machine noise hits both alike. speedup = verdicts_per_s_w / verdicts_per_s_1; the goal is
≥ 0.8·W (issue 16), which needs W idle cores: this process (answer extraction, pipes) takes part of
one, so on a machine shared with other jobs the figure says as much about the load as about the pool
(the load average is printed). The last line is one JSON object.

    python scripts/bench_filter.py [--workers W (default: the filter's: one per core, at most 16)] [--n 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import time
from collections import Counter
from pathlib import Path

from distill.verify import default_workers, verify_batch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
_INTEGER = re.compile(r"-?\d+")
_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

# (completion, gold as the cache stores it, what the verdict should be: "passed" or "failed", kind)
Item = tuple[str, str, str, str]


# ---------------------------------------------------------------------------------------------
# inputs: real golds, completions built around them


def load_problems(data: Path) -> list[tuple[str, str, str]]:
    """(reasoning, gold as stored, gold answer) for MATH-500 and GSM8K, interleaved."""
    math500 = [json.loads(line) for line in (data / "math500.jsonl").read_text().splitlines() if line.strip()]
    gsm8k = [json.loads(line) for line in (data / "gsm8k_test.jsonl").read_text().splitlines() if line.strip()]
    a = [(r["prompt"].replace(_INSTRUCTION, "").strip(), r["answer"], r["answer"]) for r in math500]
    b = []
    for r in gsm8k:
        solution, number = r["answer"].rsplit("####", 1)
        b.append((r["question"] + "\n" + solution.strip(), r["answer"], number.strip().replace(",", "")))
    return [p for pair in zip(a, b, strict=False) for p in pair] + a[len(b) :] + b[len(a) :]


def answers(gold: str, other: str) -> list[tuple[str, str, str]]:
    """(answer, expected status, kind) for one gold: the gold itself, equivalent forms, wrong ones."""
    out = [(gold, "passed", "exact")]
    if _INTEGER.fullmatch(gold):
        n = int(gold)
        root = f"\\sqrt{{{n * n}}}" if n >= 0 else f"-\\sqrt{{{n * n}}}"
        out += [(f"\\frac{{{2 * n}}}{{2}}", "passed", "equivalent"), (root, "passed", "equivalent")]
        out += [(f"x = {n}", "passed", "equivalent"), (f"\\${n}", "passed", "equivalent")]
        out += [(f"{n} \\text{{ dollars}}", "passed", "equivalent")]
        if abs(n) >= 1000:
            out.append((f"{n:,}".replace(",", "{,}"), "passed", "equivalent"))
        out.append((str(n + 1), "failed", "wrong"))
    else:
        if "\\frac" in gold:
            out.append((gold.replace("\\frac", "\\dfrac"), "passed", "equivalent"))
        out.append((f"{gold} + 1", "failed", "wrong"))
    if other.split("=")[-1].strip() != gold:  # another problem's answer, unless it is this one's ("x=5" for 5)
        out.append((other, "failed", "wrong"))
    return out


def build_items(data: Path, n: int, reasoning_chars: int, seed: int = 0) -> list[Item]:
    """n (completion, gold, expected, kind) items cycling through the problems, shuffled."""
    problems = load_problems(data)
    items: list[Item] = []
    i = 0
    while len(items) < n:
        reasoning, stored, gold = problems[i % len(problems)]
        other = problems[(i + 2) % len(problems)][2]  # the same benchmark's next problem
        body = ((reasoning + "\n") * (reasoning_chars // (len(reasoning) + 1) + 1))[:reasoning_chars]
        for answer, expected, kind in answers(gold, other):
            # a guess boxed and abandoned inside the reasoning must not be graded: only the text after </think> counts
            completion = (
                f"<think>\n{body}\nSo maybe \\boxed{{{other}}}? No, let me check again.\n</think>\n\n"
                f"The answer is \\boxed{{{answer}}}."
            )
            items.append((completion, stored, expected, kind))
        i += 1
    random.Random(seed).shuffle(items)
    return items[:n]


# ---------------------------------------------------------------------------------------------
# the measurement


def timed(items: list[Item], workers: int) -> tuple[float, list[str]]:
    """Seconds for one filter-style math pass over `items` with `workers` workers, and the statuses."""
    completions = [c for c, _, _, _ in items]
    golds = [g for _, g, _, _ in items]
    start = time.perf_counter()
    verdicts = verify_batch("math", completions, golds, workers=workers)
    return time.perf_counter() - start, [v.status for v in verdicts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=default_workers(), help="W [one per core, at most 16]")
    parser.add_argument("--n", type=int, default=2000, help="items per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternating; medians are reported")
    parser.add_argument("--reasoning-chars", type=int, default=6000, help="length of each completion's reasoning")
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding math500.jsonl and gsm8k_test.jsonl")
    args = parser.parse_args()
    if args.workers < 1 or args.n < 1 or args.repeats < 1:
        parser.error("--workers, --n and --repeats must each be at least 1.")
    if not (args.data / "math500.jsonl").is_file() or not (args.data / "gsm8k_test.jsonl").is_file():
        parser.error(f"{args.data} lacks math500.jsonl or gsm8k_test.jsonl; pass the folder that holds them (--data).")

    items = build_items(args.data, args.n, args.reasoning_chars)
    kinds = Counter(kind for _, _, _, kind in items)
    w = args.workers
    load_before = os.getloadavg()[0]
    timed(build_items(args.data, 8 * w, args.reasoning_chars, seed=1), w)  # start and warm W workers

    one: list[float] = []
    many: list[float] = []
    statuses: list[str] = []
    differ = 0  # verdicts that changed with the worker count: only a timeout on a loaded machine should do that
    for _ in range(args.repeats):
        seconds, statuses = timed(items, 1)
        one.append(seconds)
        seconds, statuses_w = timed(items, w)
        many.append(seconds)
        differ += sum(a != b for a, b in zip(statuses, statuses_w, strict=True))
    load_after = os.getloadavg()[0]

    per_s_1 = args.n / statistics.median(one)
    per_s_w = args.n / statistics.median(many)
    speedup = per_s_w / per_s_1
    as_built = sum(s == expected for s, (_, _, expected, _) in zip(statuses, items, strict=True)) / args.n
    unknown = statuses.count("unknown")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    print(
        f"{args.n} math items ({kinds['exact']} exact, {kinds['equivalent']} equivalent forms, {kinds['wrong']} wrong; "
        f"MATH-500 + GSM8K golds), {cores} usable cores, load average {load_before:.2f} → {load_after:.2f}"
    )
    print(f"{'':14}{'median s':>10}{'verdicts/s':>12}{'speedup':>9}")
    print(f"{'1 worker':14}{statistics.median(one):>10.2f}{per_s_1:>12.1f}{1:>9.2f}")
    print(f"{f'{w} workers':14}{statistics.median(many):>10.2f}{per_s_w:>12.1f}{speedup:>9.2f}")
    print(f"goal ≥ {0.8 * w:.2f} (0.8·W); verdicts as built {as_built:.1%}, unknown {unknown}, differ {differ}")
    if w > cores:
        print(f"note: {w} workers on {cores} cores; the goal assumes a core for each worker")
    print(
        json.dumps(
            {
                "workers": w,
                "n": args.n,
                "verdicts_per_s_1": round(per_s_1, 1),
                "verdicts_per_s_w": round(per_s_w, 1),
                "speedup": round(speedup, 3),
                "goal_speedup": round(0.8 * w, 2),
                "verdicts_as_built": round(as_built, 4),
                "unknown": unknown,
                "verdicts_differ_1_vs_w": differ,
                "cores": cores,
                "load_avg_1m": [round(load_before, 2), round(load_after, 2)],
            }
        )
    )


if __name__ == "__main__":
    main()
