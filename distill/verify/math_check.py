"""The `math` verifier: the last \\boxed{} answer after the think block, checked with math-verify.

Gold answers come as strings or integers (AIME), LaTeX or plain ("\\frac{1}{2}", "18"); both sides
are parsed by math-verify as LaTeX math and compared symbolically (equivalent forms, sets,
intervals, numeric tolerance). Every check runs in a worker process under a hard timeout: sympy
can hang on hostile input (a power tower), and math-verify's own signal-based timeouts only work
in a main thread.
"""

from __future__ import annotations

from typing import Any

from distill.verify.answers import extract_boxed_answer
from distill.verify.verdict import Verdict

DEFAULT_TIMEOUT_S = 5.0


def _wrap(text: str) -> str:
    text = text.strip()
    return text if text.startswith("$") else f"${text}$"


def check_math(item: tuple[str, Any]) -> Verdict:
    """In a worker: compare the completion's boxed answer with the gold answer."""
    import logging

    from math_verify import parse, verify

    # this worker's own deadline is the hard timeout; math-verify's notice about that is noise
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    completion, gold = item
    if gold is None or str(gold).strip() == "":
        return Verdict(False, "no gold answer to compare with")
    answer = extract_boxed_answer(completion)
    if answer is None:
        return Verdict(False, "no \\boxed{} answer after the reasoning")
    gold_parsed = parse(_wrap(str(gold)), parsing_timeout=None)
    answer_parsed = parse(_wrap(answer), parsing_timeout=None)
    if not gold_parsed:
        return Verdict(False, f"gold answer {str(gold)[:40]!r} could not be parsed", answer)
    if not answer_parsed:
        return Verdict(False, f"answer {answer[:40]!r} could not be parsed", answer)
    if verify(gold_parsed, answer_parsed, timeout_seconds=None):
        return Verdict(True, "correct", answer)
    return Verdict(False, f"wrong answer: got {answer[:40]}, expected {str(gold)[:40]}", answer)
