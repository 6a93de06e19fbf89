"""The embedded arithmetic task: deterministic, disjoint splits, correct reference reasoning."""

from __future__ import annotations

import re

from distill.prompts import load_prompts
from distill.tasks import arith
from distill.verify import verify_batch

STEP = re.compile(r"^(-?\d+) ([+*-]) (-?\d+) = (-?\d+)$")


def test_splits_are_deterministic_and_disjoint() -> None:
    train, distill, test = arith.problems("train"), arith.problems("distill"), arith.problems("test")
    assert len(train) == 4000 and len(distill) == 4000 and len(test) == 200
    assert arith.problems("train")[:50] == train[:50] and arith.problems("distill", 50) == distill[:50]
    prompts = [{p["prompt"] for p in split} for split in (train, distill, test)]
    assert sum(map(len, prompts)) == len(set.union(*prompts)) == 8200  # no prompt in two splits
    assert all(arith.split_of(p["prompt"][len("Compute ") : -1]) == "test" for p in test)


def test_every_reference_step_is_right_and_ends_in_the_answer() -> None:
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    for p in arith.problems("train", 500):
        lines = p["completion"].split("<think>\n")[1].split("\n</think>")[0].splitlines()
        for line in lines:
            a, op, b, c = STEP.match(line).groups()
            assert ops[op](int(a), int(b)) == int(c), line
        assert lines[-1].endswith(f"= {p['answer']}") and 2 <= len(lines) <= 3


def test_prompt_source_and_verifier_agree_with_the_references() -> None:
    prompts, where = load_prompts("arith:test")
    assert where == "arith:test" and len(prompts) == 200 and prompts[0]["id"] == "arith-test-0"
    refs = arith.problems("test")
    verdicts = verify_batch("math", [r["completion"] for r in refs], [r["answer"] for r in refs], workers=2)
    assert all(v.passed for v in verdicts)
    verdicts = verify_batch("format", [r["completion"] for r in refs[:20]], [None] * 20)
    assert all(v.passed for v in verdicts)
