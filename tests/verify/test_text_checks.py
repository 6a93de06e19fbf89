"""The form verifiers: format (think block, answer, truncation), lang (language mixing), repetition (loops)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from distill.verify import FAILED, PASSED, VERIFIERS, verify_batch
from distill.verify.text_checks import expected_script, script_units

# shared/ sits beside the checkout (as in CI); DISTILL_SHARED_DATA points elsewhere
DATA = Path(os.environ.get("DISTILL_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
GOOD = "<think>\nTwo plus two is four.\n</think>\n\nThe answer is \\boxed{4}."

# ---- format ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "reference", "passes", "reason"),
    [
        (GOOD, None, True, "well formed"),
        (GOOD, "stop", True, "well formed"),
        (GOOD, {"finish_reason": "stop"}, True, "well formed"),
        (GOOD, "length", False, "truncated at the length limit"),
        (GOOD, {"finish_reason": "length"}, False, "truncated at the length limit"),
        ("<think>\nStill thinking and then the budget ran o", None, False, "found 1 <think> and 0 </think>"),
        ("The answer is 4.", None, False, "found 0 <think> and 0 </think>"),
        ("<think>a</think><think>b</think> 4", None, False, "found 2 <think> and 2 </think>"),
        ("</think> 4 <think>", None, False, "</think> comes before <think>"),
        ("Sure! <think>a</think> 4", None, False, "text before <think>"),
        ("<think>  \n </think> 4", None, False, "empty think block"),
        ("<think>reasoning</think>\n \n", None, False, "no answer after </think>"),
    ],
)
def test_format(completion: str, reference: object, passes: bool, reason: str) -> None:
    verdict = VERIFIERS["format"](completion, reference)
    assert verdict.passed is passes and reason in verdict.reason


def test_format_takes_the_finish_reason_as_a_keyword_too() -> None:
    assert not VERIFIERS["format"](GOOD, None, finish_reason="length").passed
    verdicts = verify_batch("format", [GOOD, GOOD], [{"finish_reason": "stop"}, {"finish_reason": "length"}])
    assert [v.passed for v in verdicts] == [True, False]


# ---- lang -----------------------------------------------------------------------------------------

ENGLISH = (
    "First, I need to find the value of x. The equation says that x plus five equals twelve, so subtracting "
    "five from both sides gives x equals seven. Let me double check this result by substituting it back into "
    "the original equation: seven plus five is twelve, which matches."
)
CHINESE = (
    "首先，我们需要求出未知数的值。题目说未知数加上五等于十二，"
    "所以两边同时减去五，得到未知数等于七。我们再验证一下：七加五等于十二，完全正确。"
)
RUSSIAN = "Давайте решим это уравнение: икс плюс пять равно двенадцати, значит икс равен семи. " * 2
MIXED = ENGLISH[:120] + " 所以两边同时减去五，得到未知数等于七。我们再验证一下：七加五等于十二，完全正确，答案就是七。"


@pytest.mark.parametrize(
    ("reasoning", "reference", "passes"),
    [
        (ENGLISH, "latin", True),
        (ENGLISH, "Solve $x + 5 = 12$ for x.", True),  # expected script read from the prompt
        (CHINESE, "cjk", True),
        (CHINESE, {"prompt": "解方程 $x + 5 = 12$，求未知数的值。"}, True),
        (CHINESE, "latin", False),
        (MIXED, "latin", False),  # the R1 failure: drifting into Chinese mid-reasoning
        (MIXED, {"script": "cjk"}, False),
        (
            "Привет! Давайте решим это уравнение: икс плюс пять равно двенадцати, значит икс равен семи. " * 2,
            "latin",
            False,
        ),
        ("Let $\\alpha = 3$ and $\\beta = 4$, so $\\alpha\\beta = 12$; " + ENGLISH, "latin", True),  # math is not prose
        ("设 x = 3, y = 4, 则 x + y = 7。" + CHINESE, "cjk", True),  # variable names are not language mixing
        ("Short.", "cjk", True),  # too little text to judge
    ],
)
def test_lang(reasoning: str, reference: object, passes: bool) -> None:
    completion = f"<think>\n{reasoning}\n</think>\n\nThe answer is \\boxed{{7}}."
    verdict = VERIFIERS["lang"](completion, reference)
    assert verdict.passed is passes, verdict


def test_lang_without_a_usable_reference_expects_latin_rather_than_unknown() -> None:
    """No reference, or a prompt with no letters to read a script from, is a verdict, never unknown:
    unknown would drop every such sample from GRPO and the filter."""
    for reference in (None, "2 + 3 * 4 = ?", {"prompt": ""}):
        assert VERIFIERS["lang"](f"<think>\n{ENGLISH}\n</think> 7", reference).status == PASSED
        assert VERIFIERS["lang"](f"<think>\n{CHINESE}\n</think> 7", reference).status == FAILED


def test_lang_judges_only_the_reasoning() -> None:
    completion = f"<think>\n{ENGLISH}\n</think>\n\n{CHINESE}"  # the answer may be in any language
    assert VERIFIERS["lang"](completion, "latin").passed
    assert "mostly cjk" in VERIFIERS["lang"](f"<think>{MIXED}</think> 7", "latin").reason


def test_script_units_count_words_and_cjk_characters() -> None:
    assert script_units("The cat sat on the mat") == {"latin": 5}  # "on" is too short to count
    assert script_units("答案是七") == {"cjk": 4}
    assert script_units("$\\frac{a}{b}$ and \\sqrt{x}") == {"latin": 1}
    assert expected_script("Решите уравнение") == "cyrillic" and expected_script(None) == "latin"


def test_real_prompts_are_consistent_with_themselves() -> None:
    path = DATA / "math500.jsonl"
    if not path.exists():
        pytest.fail(f"{path} is missing: shared/ must sit beside the checkout, or set DISTILL_SHARED_DATA")
    prompts = [json.loads(line)["prompt"] for line in path.read_text().splitlines()[:200]]
    verdicts = verify_batch("lang", [f"<think>{p}</think> x" for p in prompts], prompts)
    assert all(v.passed for v in verdicts)


# ---- repetition -----------------------------------------------------------------------------------

NORMAL = (
    "We want the number of ways to choose 3 books from 8. By the formula C(8,3) = 8*7*6/6 = 56. "
    "Wait, let me double-check: 8*7 = 56, times 6 is 336, divided by 3! = 6 gives 56. "
    "Alternatively, count ordered choices, 336 of them, and divide by the 6 orders of each choice. "
    "Another way to see it: fix the smallest book. If it is book 1 there are C(7,2) = 21 choices, "
    "if it is book 2 there are C(6,2) = 15, then 10, 6, 3 and 1. The sum 21 + 15 + 10 + 6 + 3 + 1 "
    "is 56 again, so both methods agree. Let me also sanity-check the edge cases: choosing 0 books "
    "gives 1 way and choosing all 8 gives 1 way, and C(8,5) should equal C(8,3) by symmetry, which "
    "it does because 8*7*6*5*4/120 = 56. I am confident the answer is 56."
)


@pytest.mark.parametrize(
    ("completion", "passes", "reason"),
    [
        (f"<think>{NORMAL}</think> \\boxed{{56}}", True, "no looping"),
        ("<think>" + "So the answer is 56 but let me recompute the sum once more. " * 40, False, "of the last"),
        ("<think>\n" + "Let me check this again.\n" * 6, False, "repeats 6 times in a row"),
        ("<think>\n" + "Let me check this again.\n" * 4 + "Done.</think> 5", True, "no looping"),
        ("<think>The value is 0." + "0" * 3000, False, "compress to"),
        ("<think>" + "\\\\" * 2000, False, "compress to"),
    ],
)
def test_repetition(completion: str, passes: bool, reason: str) -> None:
    verdict = VERIFIERS["repetition"](completion, None)
    assert verdict.passed is passes and reason in verdict.reason, verdict


def test_real_solutions_do_not_count_as_loops() -> None:
    path = DATA / "gsm8k_test.jsonl"
    if not path.exists():
        pytest.fail(f"{path} is missing: shared/ must sit beside the checkout, or set DISTILL_SHARED_DATA")
    answers = [json.loads(line)["answer"] for line in path.read_text().splitlines()]
    long_traces = ["<think>" + "\n".join(answers[i : i + 20]) + "</think> 5" for i in range(0, 1300, 20)]
    assert all(v.passed for v in verify_batch("repetition", long_traces, [None] * len(long_traces)))
