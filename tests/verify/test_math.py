"""The math verifier: a table of answer/gold pairs, real benchmark golds, pathological input, the worker pool."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from distill.verify import DEFAULT_TIMEOUT_S, FAILED, PASSED, UNKNOWN, VERIFIERS, math_check, verify_batch
from distill.verify.math_check import gold_text, verify_math
from distill.verify.pool import TimeoutPool, shared_pool

# shared/ sits beside the checkout (as in CI); DISTILL_SHARED_DATA points elsewhere
DATA = Path(os.environ.get("DISTILL_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
POWER_TOWER = "9^{9^{9^{9^{9}}}}"
KILOBYTES_OF_LATEX = "+".join(f"\\frac{{{i}}}{{x+{i}}}" for i in range(400))  # ~6 KB; sympy stalls on it


def think(answer: str, reasoning: str = "Let me work it out step by step.") -> str:
    return f"<think>\n{reasoning}\n</think>\n\nThe final answer is {answer}."


def rows(name: str) -> list[dict]:
    path = DATA / name
    if not path.exists():
        pytest.fail(f"{path} is missing: shared/ must sit beside the checkout, or set DISTILL_SHARED_DATA")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# (completion, gold, status, a fragment of the reason)
CASES = [
    # equivalent forms of one half
    (think("\\boxed{\\frac{1}{2}}"), "0.5", PASSED, "correct"),
    (think("\\boxed{0.5}"), "\\frac{1}{2}", PASSED, "correct"),
    (think("\\boxed{1/2}"), "\\frac{1}{2}", PASSED, "correct"),
    (think("\\boxed{\\dfrac12}"), "\\frac{1}{2}", PASSED, "correct"),
    (think("\\boxed{\\tfrac{2}{4}}"), "1/2", PASSED, "correct"),
    (think("\\boxed{50\\%}"), "\\frac{1}{2}", PASSED, "correct"),
    # integers and their spellings
    (think("\\boxed{3}"), "3", PASSED, "correct"),
    (think("\\boxed{3.0}"), "3", PASSED, "correct"),
    (think("\\boxed{1,000}"), "1000", PASSED, "correct"),
    (think("\\boxed{\\$18}"), "18", PASSED, "correct"),
    (think("\\boxed{\\textbf{5}}"), "5", PASSED, "correct"),
    (think("\\boxed{x = 5}"), "5", PASSED, "correct"),
    # negative numbers
    (think("\\boxed{-5}"), "-5", PASSED, "correct"),
    (think("\\boxed{5}"), "-5", FAILED, "wrong answer: got 5, expected -5"),
    (think("\\boxed{-\\frac{\\pi}{6}}"), "-\\frac{\\pi}{6}", PASSED, "correct"),
    # sets, tuples, intervals
    (think("\\boxed{\\{2, 1\\}}"), "\\{1,2\\}", PASSED, "correct"),
    (think("\\boxed{(1,2]}"), "(1,2]", PASSED, "correct"),
    (think("\\boxed{[1,2]}"), "(1,2]", FAILED, "wrong answer"),
    (think("\\boxed{(-\\infty, 0) \\cup (1, \\infty)}"), "(-\\infty,0)\\cup(1,\\infty)", PASSED, "correct"),
    (think("\\boxed{(3, \\frac{\\pi}{2})}"), "\\left( 3, \\frac{\\pi}{2} \\right)", PASSED, "correct"),
    # units and degrees
    (think("\\boxed{10 \\text{ cm}}"), "10", PASSED, "correct"),
    (think("\\boxed{90}"), "90^\\circ", PASSED, "correct"),
    # algebra
    (think("\\boxed{(x+1)^2}"), "x^2+2x+1", PASSED, "correct"),
    (think("\\boxed{\\frac{\\sqrt{2}}{2}}"), "\\sqrt{2}/2", PASSED, "correct"),
    (think("\\boxed{3.14159}"), "\\pi", FAILED, "wrong answer"),
    (think("\\boxed{\\text{Evelyn}}"), "\\text{Evelyn}", PASSED, "correct"),
    (think("\\boxed{\\text{Bob}}"), "\\text{Evelyn}", FAILED, "wrong answer"),
    # wrong answers
    (think("\\boxed{7}"), "8", FAILED, "wrong answer: got 7, expected 8"),
    (think("\\boxed{\\frac{1}{3}}"), "0.5", FAILED, "wrong answer"),
    # where the answer is: missing, several, inside the reasoning only, outside the think block
    (think("7"), "7", FAILED, "no \\boxed{} answer"),
    ("", "7", FAILED, "no \\boxed{} answer"),
    (think("\\boxed{3}, no wait: \\boxed{4}"), "4", PASSED, "correct"),
    (think("\\boxed{4}, no wait: \\boxed{3}"), "4", FAILED, "wrong answer: got 3"),
    (think("nothing boxed here", reasoning="maybe \\boxed{4}?"), "4", FAILED, "no \\boxed{} answer"),
    (think("\\boxed{5}", reasoning="I first guessed \\boxed{4}."), "5", PASSED, "correct"),
    ("Plain answer without a think block: \\boxed{12}", "12", PASSED, "correct"),
    (think("\\fbox{12}"), "12", PASSED, "correct"),
    (think("$\\boxed 12$"), "12", PASSED, "correct"),
    (think("\\boxed{\\frac{\\sqrt{3}}{2}}"), "\\frac{\\sqrt3}{2}", PASSED, "correct"),
    (think("\\boxed{12"), "12", FAILED, "no \\boxed{} answer"),  # cut off before the box closed
    # gold shapes: int (AIME), GSM8K solution, boxed gold, missing gold
    (think("\\boxed{204}"), 204, PASSED, "correct"),
    (think("\\boxed{205}"), 204, FAILED, "wrong answer: got 205, expected 204"),
    (think("\\boxed{18}"), "She makes 9 * 2 = $<<9*2=18>>18.\n#### 18", PASSED, "correct"),
    (think("\\boxed{2125}"), "25 blocks\n#### 2,125", PASSED, "correct"),
    (think("\\boxed{7}"), "\\boxed{7}", PASSED, "correct"),
    # no gold, or none that can be read: unknown, not failed — nothing was learnt about the completion
    (think("\\boxed{7}"), None, UNKNOWN, "no gold answer"),
    (think("\\boxed{7}"), "  ", UNKNOWN, "no gold answer"),
    (think("\\boxed{7}"), float("nan"), UNKNOWN, "no gold answer"),  # an empty cell, as a table loader gives it
    (think("no box"), None, UNKNOWN, "no gold answer"),
    (think("\\boxed{7}"), {"answer": 7}, UNKNOWN, "the gold answer is a dict"),
    (think("\\boxed{7}"), True, UNKNOWN, "the gold answer is a bool"),
    (think("\\boxed{7}"), "}{", UNKNOWN, "the gold answer }{ cannot be parsed"),
]


@pytest.mark.parametrize(("completion", "gold", "status", "reason"), CASES)
def test_math_table(completion: str, gold: object, status: str, reason: str) -> None:
    verdict = VERIFIERS["math"](completion, gold)
    assert verdict.status == status, verdict
    assert reason in verdict.reason


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 40


def test_the_extracted_answer_travels_with_the_verdict() -> None:
    assert VERIFIERS["math"](think("\\boxed{\\frac{1}{2}}"), "0.5").answer == "\\frac{1}{2}"
    assert VERIFIERS["math"](think("\\boxed{7}"), "8").answer == "7"
    assert VERIFIERS["math"](think("no box"), "8").answer is None


@pytest.mark.parametrize(
    ("name", "index", "answer"),
    [
        ("math500.jsonl", 0, "(3, \\frac{\\pi}{2})"),  # gold: \left( 3, \frac{\pi}{2} \right)
        ("math500.jsonl", 2, "\\frac{28}{6}"),  # gold: \frac{14}{3}
        ("math500.jsonl", 7, "90"),  # gold: 90^\circ
        ("math500.jsonl", 15, "-5i + 6"),  # gold: 6 - 5i
        ("math500.jsonl", 25, "-2, 1"),  # gold: 1,-2
        ("aime24.jsonl", 0, "204"),  # gold: the int 204
        ("aime25.jsonl", 1, "588"),  # gold: the int 588
        ("gsm8k_test.jsonl", 0, "18"),  # gold: a worked solution ending in #### 18
        ("gsm8k_test.jsonl", 146, "2,125"),  # gold: ... #### 2,125
    ],
)
def test_real_benchmark_golds(name: str, index: int, answer: str) -> None:
    gold = rows(name)[index]["answer"]
    assert VERIFIERS["math"](think(f"\\boxed{{{answer}}}"), gold).passed, (answer, gold)
    wrong = VERIFIERS["math"](think("\\boxed{123457}"), gold)
    assert wrong.status == FAILED and wrong.reason.startswith("wrong answer")


def test_gold_text_shapes() -> None:
    assert gold_text(113) == "113"
    assert gold_text("So 3 + 4 = 7.\n#### 1,234") == "1234"
    assert gold_text("$\\frac{1}{2}$") == "\\frac{1}{2}"
    assert gold_text("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"
    assert gold_text("  ") is None and gold_text(None) is None and gold_text(float("nan")) is None


@pytest.mark.parametrize("answer", [POWER_TOWER, KILOBYTES_OF_LATEX, "(10^{10})!"])
def test_pathological_answers_return_within_the_timeout(answer: str) -> None:
    start = time.monotonic()
    verdict = verify_math(think(f"\\boxed{{{answer}}}"), "5", timeout=1.5)
    elapsed = time.monotonic() - start
    assert verdict.status == UNKNOWN  # the answer may be right: sympy just did not finish
    assert verdict.reason == "timeout after 1.5s"
    assert elapsed < 1.5 + 2.0


@pytest.mark.slow  # waits out the whole default timeout
def test_the_single_item_call_enforces_the_default_timeout() -> None:
    start = time.monotonic()
    verdict = VERIFIERS["math"](think(f"\\boxed{{{POWER_TOWER}}}"), "5")
    assert verdict.status == UNKNOWN and verdict.reason == f"timeout after {DEFAULT_TIMEOUT_S:g}s"
    assert time.monotonic() - start < DEFAULT_TIMEOUT_S + 2.0


def test_workers_are_reused_and_a_timed_out_one_is_replaced() -> None:
    pool = shared_pool("distill.verify.math_check:compare_in_worker")
    verify_math(think("\\boxed{0.5}"), "1/2")
    pids = {w.proc.pid for w in pool._idle}
    for _ in range(5):
        assert verify_math(think("\\boxed{0.5}"), "1/2").passed
    assert {w.proc.pid for w in pool._idle} == pids  # no process started per item
    verify_math(think(f"\\boxed{{{POWER_TOWER}}}"), "5", timeout=0.5)
    after = {w.proc.pid for w in pool._idle}
    assert len(after) == len(pids) and len(after - pids) == 1  # exactly the overrunning worker was replaced
    (killed,) = pids - after
    assert not Path(f"/proc/{killed}").exists()
    assert verify_math(think("\\boxed{0.5}"), "1/2").passed  # and the pool still works


def test_batch_keeps_order_and_isolates_a_hanging_item() -> None:
    completions = [think(f"\\boxed{{{i}}}") for i in range(40)]
    golds: list[object] = list(range(40))
    completions[7] = think(f"\\boxed{{{POWER_TOWER}}}")
    golds[12] = 13
    start = time.monotonic()
    verdicts = verify_batch("math", completions, golds, workers=2, timeout=1.5)
    assert time.monotonic() - start < 1.5 + 10.0
    assert [v.passed for v in verdicts] == [i not in (7, 12) for i in range(40)]
    assert verdicts[7].status == UNKNOWN and verdicts[7].reason == "timeout after 1.5s"
    assert verdicts[12].status == FAILED and verdicts[12].reason == "wrong answer: got 12, expected 13"
    assert [v.answer for v in verdicts][:3] == ["0", "1", "2"]


def test_a_worker_that_dies_mid_item_gives_unknown_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    # sys.exit(item) raises SystemExit, which the worker's loop does not catch: the process dies on every item.
    monkeypatch.setattr(math_check, "_WORKER_TARGET", "sys:exit")
    verdicts = verify_batch("math", [think("\\boxed{0.5}"), think("\\boxed{2}")], ["1/2", "2"], workers=1)
    assert verdicts[0].status == UNKNOWN and verdicts[0].reason.startswith("could not check the answer")
    assert verdicts[0].answer == "0.5"
    assert verdicts[1].status == PASSED  # same text as the gold: decided without a worker
    shared_pool("sys:exit").close()


def test_verifying_from_threads_works() -> None:
    """eval and GRPO call verifiers from threads, where math-verify's own signal timeouts cannot work."""
    results: list[bool] = []

    def check(i: int) -> None:
        results.append(VERIFIERS["math"](think(f"\\boxed{{\\frac{{{2 * i}}}{{2}}}}"), i).passed)

    threads = [threading.Thread(target=check, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 4


def test_pool_outcomes_on_plain_functions() -> None:
    """The pool on stdlib functions: a value, an exception, a hang, a dying worker — all in order."""
    pool = TimeoutPool("math:sqrt")
    assert pool.map([4, -1, 9], timeout=5.0, workers=2) == [
        ("ok", 2.0),
        ("error", "ValueError: math domain error"),
        ("ok", 3.0),
    ]
    pool.close()
    sleeper = TimeoutPool("time:sleep")
    start = time.monotonic()
    assert sleeper.map([30, 0], timeout=0.5, workers=1) == [("timeout", None), ("ok", None)]
    assert time.monotonic() - start < 5.0
    sleeper.close()
    dying = TimeoutPool("os:_exit")
    assert dying.map([3, 4], timeout=5.0, workers=1) == [("error", "the verifier worker process died")] * 2
    dying.close()


def test_a_worker_that_cannot_start_says_why() -> None:
    with pytest.raises(RuntimeError, match="cannot import distill.verify.no_such_module"):
        TimeoutPool("distill.verify.no_such_module:check").map([1], timeout=5.0, workers=1)
