"""The math verifier on a table of cases, real benchmark golds, and pathological input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from distill.prompts import load_prompts
from distill.verify import VERIFIERS, extract_boxed_answer, verify_batch

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def done(answer: str, before: str = "<think>\nLet me work it out.\n</think>\n") -> str:
    return f"{before}The answer is \\boxed{{{answer}}}."


CASES = [
    # equivalent forms
    (done("1/2"), "\\frac{1}{2}", True),
    (done("0.5"), "\\frac{1}{2}", True),
    (done("\\frac{1}{2}"), "0.5", True),
    (done("\\dfrac12"), "1/2", True),
    (done("\\tfrac{1}{2}"), "0.5", True),
    (done("50\\%"), "0.5", True),
    (done("2/4"), "\\frac12", True),
    (done("\\sqrt{2}/2"), "\\frac{\\sqrt{2}}{2}", True),
    (done("\\frac{\\sqrt{3}}{3}"), "\\frac{1}{\\sqrt{3}}", True),
    (done("2\\pi"), "2\\pi", True),
    (done("x^2+2x+1"), "(x+1)^2", True),
    (done("1.000"), "1", True),
    (done("10^{3}"), "1000", True),
    (done("1,000"), "1000", True),
    # integers, as AIME stores them
    (done("204"), 204, True),
    (done("0204"), 204, True),
    (done("205"), 204, False),
    # negative numbers
    (done("-3"), "-3", True),
    (done("-\\frac{3}{4}"), "-0.75", True),
    (done("3"), "-3", False),
    # sets and intervals
    (done("\\{1, 2, 3\\}"), "\\{3, 2, 1\\}", True),
    (done("(0, 1]"), "(0,1]", True),
    (done("[0, 1]"), "(0, 1]", False),
    (done("(-\\infty, 2)"), "(-\\infty,2)", True),
    (done("1, 2"), "2, 1", True),
    (done("(3, \\frac{\\pi}{2})"), "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    # units and text
    (done("5\\text{ cm}"), "5", True),
    (done("90^\\circ"), "90", True),
    (done("\\$18"), "18", True),
    (done("\\text{(B)}"), "\\text{(B)}", True),
    # wrong answers
    (done("7"), "8", False),
    (done("\\frac{1}{3}"), "0.33", False),
    (done("x+1"), "x-1", False),
    (done("\\sqrt{3}"), "\\sqrt{2}", False),
    # no boxed answer, several boxed answers (the last counts), text outside the think block
    ("<think>\nhmm\n</think>\nThe answer is 4.", "4", False),
    ("<think>\nmaybe \\boxed{4}\n</think>\nI am not sure.", "4", False),  # a boxed guess inside the reasoning
    (done("3") + " Actually \\boxed{4}.", "4", True),
    (done("4") + " Actually \\boxed{3}.", "4", False),
    ("No think block at all, so \\boxed{12}.", "12", True),
    ("<think>\n\\boxed{1}</think> first \\boxed{2} then \\boxed{3}", "3", True),
    # nested braces and \boxed without braces
    (done("\\frac{\\frac{1}{2}}{2}"), "\\frac14", True),
    ("</think> so \\boxed 7.", "7", True),
    # no gold
    (done("1"), "", False),
]


@pytest.mark.parametrize(("completion", "gold", "expected"), CASES)
def test_table(completion: str, gold: object, expected: bool) -> None:
    verdict = VERIFIERS["math"](completion, gold)
    assert verdict.passed is expected, verdict.reason
    assert verdict.reason


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 40


def test_batch_agrees_with_single_calls() -> None:
    completions, golds, expected = zip(*CASES, strict=True)
    verdicts = verify_batch("math", list(completions), list(golds), workers=2)
    assert [v.passed for v in verdicts] == list(expected)


@pytest.mark.parametrize(
    "answer",
    ["9^{9^{9^{9^{9^{9}}}}}", "\\frac{" * 300 + "1" + "}{2}" * 300, " + ".join(f"\\sqrt{{{i}}}" for i in range(800))],
)
def test_pathological_inputs_return_within_the_timeout(answer: str) -> None:
    start = time.monotonic()
    verdict = verify_batch("math", [done(answer)], ["3"], timeout=2.0)[0]
    assert time.monotonic() - start < 10 and verdict.passed is False


def test_a_hang_does_not_poison_the_rest_of_a_batch() -> None:
    completions = [done("9^{9^{9^{9^{9^{9}}}}}"), done("2"), done("3")]
    verdicts = verify_batch("math", completions, ["1", "2", "3"], workers=1, timeout=2.0)
    assert [v.passed for v in verdicts] == [False, True, True] and "timeout" in verdicts[0].reason


def test_real_benchmark_golds() -> None:
    math500, _ = load_prompts(str(DATA / "math500.jsonl"))
    aime, _ = load_prompts(str(DATA / "aime24.jsonl"))
    gsm8k, _ = load_prompts(str(DATA / "gsm8k_test.jsonl"), mapping="gsm8k")
    golds = [p["answer"] for p in math500[:30] + aime[:5] + gsm8k[:5]]
    verdicts = verify_batch("math", [done(g) for g in golds], golds, workers=2)
    assert all(v.passed for v in verdicts), [
        (g, v.reason) for g, v in zip(golds, verdicts, strict=True) if not v.passed
    ]
    raw = json.loads((DATA / "aime24.jsonl").read_text().splitlines()[0])["answer"]
    assert VERIFIERS["math"](done(str(raw)), raw).passed  # an int gold, as the file stores it
    assert not VERIFIERS["math"](done(str(raw + 1)), raw).passed


def test_extract_boxed_answer() -> None:
    assert extract_boxed_answer("a \\boxed{x} </think> b \\boxed{\\{1,2\\}}") == "\\{1,2\\}"
    assert extract_boxed_answer("</think> \\fbox{5}") == "5"
    assert extract_boxed_answer("</think> none") is None
