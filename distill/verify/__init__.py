"""Verifiers: one grader for the filter, the GRPO reward and evaluation.

    from distill.verify import VERIFIERS, Verdict, verify_batch
    v = VERIFIERS["math"](completion, "\\frac{1}{2}")   # Verdict(status, reason, answer)
    v.status, v.passed                                 # "passed" | "failed" | "unknown", bool
    vs = verify_batch("math", completions, golds, workers=8, progress=True)

A verdict's status (PASSED, FAILED, UNKNOWN; the type is VerdictStatus) says whether the check
could be made: "unknown" means it could not — a timeout, a crashed worker, a sandbox failure, no
gold answer or one that cannot be parsed, no tests — and says nothing about the completion. GRPO
drops such samples instead of rewarding them 0; the filter keeps only passed records and, like
eval, counts unknowns apart from failures. `reason` is prose for people; no code reads it.

Every verifier is `(completion: str, reference, **options) -> Verdict`; VERIFIERS maps names to them:

- math: reference = the gold answer (LaTeX str, int, or a GSM8K solution ending `#### 72`);
  passes when the last `\\boxed{}` after `</think>` equals it (math-verify); unknown on a
  timeout, a crashed worker, a missing gold (`VERIFIERS["math"](completion, None)`) or an unparsable one.
- code: reference = `{"io": [{"stdin", "stdout"}, ...], "asserts": str, "time_limit_s": float}`;
  passes when the last fenced code block passes every test in the sandbox; unknown when there
  are no tests or the sandbox itself fails (a program's own crash or time-out fails).
- format: reference = the finish reason ("stop", "length") or `{"finish_reason": ...}`;
  passes with one think block, reasoning in it, an answer after it, and no truncation.
- lang: reference = a script name ("latin", "cjk", ...) or the prompt text; passes when the
  reasoning is in that script (no reference, or one without letters, means latin).
- repetition: reference ignored; passes when the completion does not loop.

format, lang and repetition are plain string checks: always passed or failed, never unknown.

`reference_for(name, answer, question, finish_reason)` picks a verifier's reference; the filter,
GRPO and eval all use it.

Where the work runs: math in a persistent pool of worker processes with a hard per-item timeout
(`timeout=`, default 5 s; sympy can hang); code in the sandbox (`sandbox_isolation()` says what
isolation this machine gives); format, lang and repetition in-process (plain string work).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from distill.verify.answers import (
    FAILED,
    PASSED,
    STATUSES,
    UNKNOWN,
    Verdict,
    VerdictStatus,
    extract_boxed_answer,
    extract_program,
    final_answer,
    gsm8k_answer,
    last_boxed,
    normalise_answer,
)
from distill.verify.code_check import verify_code
from distill.verify.math_check import DEFAULT_TIMEOUT_S, verify_math, verify_math_batch
from distill.verify.sandbox import sandbox_isolation
from distill.verify.text_checks import verify_format, verify_lang, verify_repetition

Verifier = Callable[..., Verdict]
MAX_DEFAULT_WORKERS = 16  # each math worker holds sympy (~150 MB); more rarely helps


def default_workers() -> int:
    """Verifier workers when none are asked for: one per core this process may use, at most MAX_DEFAULT_WORKERS."""
    # The affinity mask, not os.cpu_count(): under Slurm or a container the job gets a few of the node's cores.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_WORKERS))


VERIFIERS: dict[str, Verifier] = {
    "math": verify_math,
    "code": verify_code,
    "format": verify_format,
    "lang": verify_lang,
    "repetition": verify_repetition,
}


def reference_for(name: str, answer: Any, question: str | None, finish_reason: str | None) -> Any:
    """What verifier `name` checks a completion against: the gold answer (math, code), the finish
    reason (format), the question, whose script the reasoning should keep (lang)."""
    if name == "format":
        return {"finish_reason": finish_reason}
    if name == "lang":
        return question
    return answer


def _progress_bar(total: int, name: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"verify {name}", unit="trace", dynamic_ncols=True)


def verify_batch(
    name: str,
    completions: Sequence[str],
    references: Sequence[Any],
    workers: int | None = None,
    progress: bool = False,
    **options: Any,
) -> list[Verdict]:
    """Verdicts of verifier `name` for every (completion, reference) pair, in order.

    workers: parallel workers (default: `default_workers()`: one per usable core, at most 16). math uses that
        many pooled worker processes, code that many sandboxed runs at once; the string checks run in this process.
    progress: show a tqdm bar.
    options: passed to the verifier (math: `timeout`; lang: `threshold`; format: `finish_reason`; ...).
    """
    if name not in VERIFIERS:
        raise ValueError(f"Unknown verifier {name!r}; choose from {', '.join(VERIFIERS)}.")
    if len(completions) != len(references):
        raise ValueError(
            f"verify_batch got {len(completions)} completions but {len(references)} references; give one each."
        )
    workers = max(1, workers or default_workers())
    bar = _progress_bar(len(completions), name, progress)
    tick = bar.update if bar is not None else None
    try:
        if name == "math":
            timeout = float(options.pop("timeout", DEFAULT_TIMEOUT_S))
            if options:
                raise ValueError(f"The math verifier takes only `timeout`, not {', '.join(options)}.")
            return verify_math_batch(completions, references, workers=workers, timeout=timeout, progress=tick)
        verifier = VERIFIERS[name]

        def one(pair: tuple[str, Any]) -> Verdict:
            verdict = verifier(pair[0], pair[1], **options)
            if tick:
                tick(1)
            return verdict

        pairs = list(zip(completions, references, strict=True))
        if name != "code" or workers == 1 or len(pairs) == 1:
            return [one(p) for p in pairs]
        # Threads only wait here: every program runs in its own sandboxed process.
        with ThreadPoolExecutor(min(workers, len(pairs))) as pool:
            return list(pool.map(one, pairs))
    finally:
        if bar is not None:
            bar.close()


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "FAILED",
    "MAX_DEFAULT_WORKERS",
    "PASSED",
    "STATUSES",
    "UNKNOWN",
    "VERIFIERS",
    "Verdict",
    "VerdictStatus",
    "default_workers",
    "extract_boxed_answer",
    "extract_program",
    "final_answer",
    "gsm8k_answer",
    "last_boxed",
    "normalise_answer",
    "reference_for",
    "sandbox_isolation",
    "verify_batch",
    "verify_code",
    "verify_format",
    "verify_lang",
    "verify_math",
    "verify_repetition",
]
