"""The embedded arithmetic task: deterministic, disjoint splits, correct reference reasoning."""

from __future__ import annotations

import re

from distill.prompts import load_prompts
from distill.tasks import arith
from distill.verify import verify_batch

STEP = re.compile(r"^(?:then |so |next |check: |verify: )?(-?\d+) ([+*×/-]) (-?\d+) (?:=|is) (-?\d+)\.?$")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}
OPS["×"] = OPS["*"]
OPENINGS = {line.strip() for line in arith.OPENINGS if line}


def test_splits_are_deterministic_and_disjoint() -> None:
    train, distill, test = arith.problems("train"), arith.problems("distill"), arith.problems("test")
    assert len(train) == 4000 and len(distill) == 4000 and len(test) == 200
    assert arith.problems("train")[:50] == train[:50] and arith.problems("distill", 50) == distill[:50]
    prompts = [{p["prompt"] for p in split} for split in (train, distill, test)]
    assert sum(map(len, prompts)) == len(set.union(*prompts)) == 8200  # no prompt in two splits
    assert all(arith.split_of(p["prompt"][len("Compute ") : -1]) == "test" for p in test)


def test_every_reference_step_is_right_and_ends_in_the_answer() -> None:
    for p in arith.problems("train", 500, variants=3):
        reasoning = p["completion"].split("<think>\n")[1].split("\n</think>")[0]
        lines = [line for line in reasoning.splitlines() if line not in OPENINGS]
        checks = [line for line in lines if line.startswith(("check: ", "verify: "))]
        for line in lines:
            a, op, b, c = STEP.match(line).groups()
            assert OPS[op](int(a), int(b)) == int(c) and (op != "/" or int(a) % int(b) == 0), line
        steps = [line for line in lines if line not in checks]
        assert STEP.match(steps[-1]).group(4) == p["answer"] and 2 <= len(steps) <= 3 and len(checks) <= 1
        assert re.search(re.escape(f"\\boxed{{{p['answer']}}}") + r"\.?$", p["completion"])


def test_reasoning_forks_every_way_the_task_says() -> None:
    """Many problems have several correct traces: order, operand order, connectives, checks, phrasing."""
    rows = arith.problems("train", 300, variants=8)
    by_problem: dict[str, set[str]] = {}
    for r in rows:
        by_problem.setdefault(r["id"], set()).add(r["completion"])
    assert sum(len(v) > 1 for v in by_problem.values()) >= 0.95 * len(by_problem)
    text = "\n".join(r["completion"] for r in rows)
    forms = [*arith.CONNECTIVES[1:], *arith.CHECKS, *arith.OPENINGS[1:], " is ", "×", ".\n"]
    forms += [f.split("\\")[0] for f in arith.FINALS if not f.startswith("\\")]
    for form in forms:
        assert form in text, form
    # both orders of independent sub-expressions occur: (a op b) op (c op d) with either side first
    both = [r for r in rows if r["prompt"].count("(") == 2]
    firsts = {r["completion"].split("\n")[1 if "\n" in r["completion"] else 0] for r in both[:40]}
    assert len(firsts) > len(both[:40]) // 8
    assert arith.problems("train", 20) == arith.problems("train", 20, variants=1)  # first variants stay put


def test_arithmetic_facts_are_right_and_carry_no_reasoning_format() -> None:
    facts = arith.arithmetic_facts(2000)
    assert len(facts) == 2000 and len(set(facts)) > 1200  # small operands, as the task has, repeat
    for line in facts:
        a, op, b, c = STEP.match(line).groups()
        assert op in "+-*" and OPS[op](int(a), int(b)) == int(c)
    assert not any(tag in " ".join(facts) for tag in ("<think>", "boxed", "Compute"))


def test_prompt_source_and_verifier_agree_with_the_references() -> None:
    prompts, where = load_prompts("arith:test")
    assert where == "arith:test" and len(prompts) == 200 and prompts[0]["id"] == "arith-test-0"
    refs = arith.problems("test")
    verdicts = verify_batch("math", [r["completion"] for r in refs], [r["answer"] for r in refs], workers=2)
    assert all(v.passed for v in verdicts)
    verdicts = verify_batch("format", [r["completion"] for r in refs[:20]], [None] * 20)
    assert all(v.passed for v in verdicts)
