"""What the wrong answers of an `arith` evaluation get wrong: a slip in a line's arithmetic, or the numbers.

Every failed sample of a `distill eval` file on `arith:*` is put in one of three kinds, read off its
chain of thought (check lines aside, since the answer does not depend on them):

- **arithmetic**: some line "a op b = c" (or "is") has c ≠ a op b — the model miscounted;
- **numbers**: every line's arithmetic is right and the answer is still wrong — the model took an
  operand from the wrong place (a number of the problem it should not use, or the wrong intermediate),
  which is the task's reasoning, not its arithmetic;
- **other**: no line to check or no answer at all.

    python scripts/error_kinds.py demo-out/eval-teacher.json demo-out/eval-kd.json demo-out/eval-sft.json

Prints, per file, pass@1 and each kind as a share of all samples (so the four add up to 100%).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

LINE = re.compile(r"(-?\d+) ([-+*×]) (-?\d+)(?: = | is )(-?\d+)")
KINDS = ("arithmetic", "numbers", "other")


def kind(text: str) -> str:
    """The kind of a wrong sample's mistake, from its reasoning lines."""
    lines = [line for line in text.split("</think>")[0].split("\n") if LINE.search(line)]
    lines = [line for line in lines if not line.startswith(("check", "verify"))]
    if not lines:
        return "other"
    for line in lines:
        a, op, b, c = LINE.search(line).groups()
        a, b, c = int(a), int(b), int(c)
        if c != (a + b if op == "+" else a - b if op == "-" else a * b):
            return "arithmetic"
    return "numbers"


def shares(path: Path) -> dict[str, float]:
    counts, total, data = Counter(), 0, json.loads(path.read_text())
    if "problems" not in data:
        raise SystemExit(f"{path} is not the output of `distill eval` (it has no per-problem samples)")
    for problem in data["problems"]:
        for sample in problem["samples"]:
            total += 1
            counts["pass@1" if sample["passed"] else kind(sample["text"])] += 1
    return {k: 100 * counts[k] / total for k in ("pass@1", *KINDS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evals", type=Path, nargs="+", help="distill eval output files (JSON) on arith prompts")
    args = parser.parse_args()
    print(f"{'eval':<40}{'pass@1':>8}" + "".join(f"{k:>12}" for k in KINDS) + "   (% of samples)")
    for path in args.evals:
        row = shares(path)
        print(f"{str(path)[-40:]:<40}{row['pass@1']:8.1f}" + "".join(f"{row[k]:12.1f}" for k in KINDS))


if __name__ == "__main__":
    main()
