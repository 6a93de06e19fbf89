"""format, lang and repetition verifiers."""

from __future__ import annotations

import pytest

from distill.verify import VERIFIERS

GOOD = "<think>\nadd them\n</think>\nThe answer is \\boxed{4}."


@pytest.mark.parametrize(
    ("text", "ref", "ok", "why"),
    [
        (GOOD, None, True, "well formed"),
        (GOOD, {"finish_reason": "length"}, False, "truncated"),
        ("<think>\nadd them\nThe answer is 4", None, False, "found 1 opening and 0 closing"),
        ("<think>a</think><think>b</think> 4", None, False, "found 2 opening"),
        ("<think>\nadd them\n</think>\n   ", None, False, "no answer after"),
        ("preamble <think>x</think> 4", None, False, "text before"),
        ("</think> 4 <think>", None, False, "comes before"),
    ],
)
def test_format(text: str, ref: object, ok: bool, why: str) -> None:
    verdict = VERIFIERS["format"](text, ref)
    assert verdict.passed is ok and why in verdict.reason


def test_lang_catches_mixing_but_ignores_math() -> None:
    english = "<think>\nFirst we add $\\frac{1}{2}$ and $x^2$, then simplify.\n</think> \\boxed{1}"
    assert VERIFIERS["lang"](english, "What is 1/2 + 1/2?").passed
    mixed = "<think>\nFirst we add 一半 和 一半 然后 我们 得到 一个 结果 所以 答案 是 一\n</think> \\boxed{1}"
    verdict = VERIFIERS["lang"](mixed, "What is 1/2 + 1/2?")
    assert not verdict.passed and "cjk" in verdict.reason
    assert VERIFIERS["lang"]("<think>\n我们 先 加\n</think>", "cjk").passed


def test_repetition() -> None:
    loop = "<think>\n" + "so we add one and then we check again " * 40 + "\n</think> 4"
    verdict = VERIFIERS["repetition"](loop, None)
    assert not verdict.passed and "repeats" in verdict.reason
    assert VERIFIERS["repetition"](GOOD, None).passed
    lines = "<think>\n" + "\n".join(["Wait, let me recompute this."] * 12) + "\n</think> 4"
    assert not VERIFIERS["repetition"](lines, None).passed
