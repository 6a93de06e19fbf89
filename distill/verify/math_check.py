"""The `math` verifier: the last `\\boxed{}` after the think block, checked against gold with math-verify.

Gold answers come in the shapes the benchmarks ship: LaTeX strings (MATH-500: `\\frac{1}{2}`,
`\\left( 3, \\frac{\\pi}{2} \\right)`), integers (AIME JSONL stores ints), and GSM8K worked
solutions ending in `#### 72` (the number after the last `####` is the answer, thousands
separators dropped). Both sides are parsed by math-verify as the content of a `\\boxed{}` and
compared symbolically: equivalent forms (0.5 = 1/2 = \\dfrac12), sets, intervals, units and
`\\text{}` dropped, numbers compared after rounding. When math-verify cannot parse the answer, the
two strings are compared with whitespace removed.

A verdict is "unknown", not "failed", when the comparison could not be made: no gold answer (None,
NaN, empty), a gold that is not text or a number, a gold math-verify cannot parse (unless the
answer is the same text), a timeout, or a worker that crashed. A completion without a boxed answer
is "failed": that is the completion's fault.

Answer extraction runs in the caller (cheap string work); only the sympy part runs in the
worker pool (`distill.verify.pool`), under a hard timeout (default 5 s) that kills the worker.
math-verify's own signal timeouts are switched off: they cannot fire outside a main thread,
and the pool's kill is the one that always works. The workers need no sandbox: math-verify never
executes the answer text (LaTeX goes through an ANTLR grammar; its plain-expression path hands
sympy only digits and arithmetic operators), so the risks are time and memory, which the pool bounds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from distill.verify.answers import (
    FAILED,
    PASSED,
    UNKNOWN,
    Verdict,
    extract_boxed_answer,
    gsm8k_answer,
    last_boxed,
    normalise_answer,
)
from distill.verify.pool import shared_pool

DEFAULT_TIMEOUT_S = 5.0
_WORKER_TARGET = "distill.verify.math_check:compare_in_worker"
_SHOWN = 60  # characters of an answer quoted in a reason


def gold_text(reference: Any) -> str | None:
    """The gold answer as LaTeX text: ints as digits, GSM8K solutions reduced to what follows `####`.

    A gold that is itself a `\\boxed{...}` expression is unboxed. Returns None for a missing gold
    (None, NaN — what a table loader gives for an empty cell — or blank text).
    """
    if reference is None or isinstance(reference, bool):
        return None
    if isinstance(reference, float) and math.isnan(reference):
        return None
    if isinstance(reference, (int, float)):
        return str(reference)
    text = str(reference).strip()
    if "####" in text:
        text = gsm8k_answer(text)
    boxed = last_boxed(text)
    text = boxed if boxed is not None else text
    if len(text) >= 2 and text[0] == text[-1] == "$":
        text = text.strip("$").strip()
    return text or None


def _shown(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


def compare_in_worker(item: dict[str, str]) -> list[Any]:
    """In a worker process: [status, reason] for one (answer, gold) pair. Imports sympy; may hang."""
    import logging

    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    # math-verify warns on every call that its own timeouts are off: they are, on purpose (see module doc).
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    answer, gold = item["answer"], item["gold"]
    gold_parsed = parse("\\boxed{" + gold + "}", extraction_config=config, parsing_timeout=None)
    answer_parsed = parse("\\boxed{" + answer + "}", extraction_config=config, parsing_timeout=None)
    if not gold_parsed:  # an answer of the same text passed in _prepare; nothing else can be judged against it
        return [UNKNOWN, f"the gold answer {_shown(gold)} cannot be parsed"]
    if answer_parsed:
        passed = verify(gold_parsed, answer_parsed, timeout_seconds=None)
    else:  # an answer math-verify cannot read: exact text, whitespace aside
        passed = normalise_answer(answer) == normalise_answer(gold)
    if passed:
        return [PASSED, "correct"]
    return [FAILED, f"wrong answer: got {_shown(answer)}, expected {_shown(gold)}"]


def _prepare(completion: str, reference: Any) -> tuple[dict[str, str] | None, Verdict | None]:
    """The worker item for one completion, or the verdict when no worker is needed."""
    if reference is not None and (isinstance(reference, bool) or not isinstance(reference, (str, int, float))):
        return None, Verdict(UNKNOWN, f"the gold answer is a {type(reference).__name__}, not text or a number")
    gold = gold_text(reference)
    if gold is None:
        return None, Verdict(UNKNOWN, "no gold answer to compare with")
    answer = extract_boxed_answer(completion)
    if answer is None:
        return None, Verdict(FAILED, "no \\boxed{} answer")
    if normalise_answer(answer) == normalise_answer(gold):  # the common case needs no sympy at all
        return None, Verdict(PASSED, "correct", answer)
    return {"answer": answer, "gold": gold}, None


def verify_math_batch(
    completions: Sequence[str],
    references: Sequence[Any],
    workers: int = 1,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: Callable[[int], None] | None = None,
) -> list[Verdict]:
    """Math verdicts for every (completion, gold) pair, in order; sympy runs in the shared worker pool."""
    verdicts: list[Verdict | None] = []
    pending: list[int] = []
    items: list[dict[str, str]] = []
    for i, (completion, reference) in enumerate(zip(completions, references, strict=True)):
        item, verdict = _prepare(completion, reference)
        verdicts.append(verdict)
        if item is None:
            if progress:
                progress(1)
        else:
            pending.append(i)
            items.append(item)
    outcomes = shared_pool(_WORKER_TARGET).map(items, timeout=timeout, workers=workers, progress=progress)
    for i, item, (status, value) in zip(pending, items, outcomes, strict=True):
        if status == "ok":
            verdicts[i] = Verdict(value[0], str(value[1]), item["answer"])
        elif status == "timeout":  # sympy was still at it: the answer may well be right
            verdicts[i] = Verdict(UNKNOWN, f"timeout after {timeout:g}s", item["answer"])
        else:
            verdicts[i] = Verdict(UNKNOWN, f"could not check the answer: {value}", item["answer"])
    return [v for v in verdicts if v is not None]


def verify_math(completion: str, reference: Any, timeout: float = DEFAULT_TIMEOUT_S) -> Verdict:
    """Check one completion's last boxed answer against `reference`, under a hard `timeout` (seconds)."""
    return verify_math_batch([completion], [reference], workers=1, timeout=timeout)[0]
