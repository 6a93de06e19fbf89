"""Verifiers: one grader for the filter, the GRPO reward and evaluation.

    from distill.verify import VERIFIERS, Verdict, verify_batch
    VERIFIERS["math"](completion, "1/2")            # → Verdict(passed, reason, answer)
    verify_batch("math", completions, golds, workers=8)

Names: math (math-verify on the last \\boxed{} after </think>, hard timeout in worker processes),
code (programs run in a sandbox against io / assert tests), format (one think block, an answer,
not truncated), lang (no language mixing), repetition (no loops).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from distill.verify.answers import extract_boxed_answer, final_answer
from distill.verify.code_check import check_code
from distill.verify.math_check import DEFAULT_TIMEOUT_S, check_math
from distill.verify.text_checks import check_format, check_lang, check_repetition
from distill.verify.verdict import Verdict
from distill.verify.workers import TimeoutPool


def verify_math(completion: str, reference: Any, timeout: float = DEFAULT_TIMEOUT_S) -> Verdict:
    """One math check, in a worker process under a hard timeout."""
    return verify_batch("math", [completion], [reference], workers=1, timeout=timeout)[0]


VERIFIERS: dict[str, Callable[[str, Any], Verdict]] = {
    "math": verify_math,
    "code": check_code,
    "format": check_format,
    "lang": check_lang,
    "repetition": check_repetition,
}


def _unpack(item: tuple[str, Any]) -> Verdict:
    completion, reference = item
    return check_code(completion, reference)


def verify_batch(
    name: str,
    completions: Sequence[str],
    references: Sequence[Any],
    workers: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: bool = False,
) -> list[Verdict]:
    """Verdicts of verifier `name` for every (completion, reference), in order, in parallel."""
    if name not in VERIFIERS:
        raise KeyError(f"unknown verifier {name!r}; known: {', '.join(VERIFIERS)}")
    if len(completions) != len(references):
        raise ValueError(f"{len(completions)} completions but {len(references)} references")
    if not completions:
        return []
    workers = min(workers or os.cpu_count() or 1, len(completions))
    bar = _bar(len(completions), name) if progress else None
    tick = bar.update if bar else None
    try:
        if name in ("format", "lang", "repetition"):  # pure string checks: cheap, in-process
            out = [VERIFIERS[name](c, r) for c, r in zip(completions, references, strict=True)]
            if tick:
                tick(len(out))
            return out
        if name == "math":
            with TimeoutPool(check_math, workers, timeout) as pool:
                return pool.map(
                    list(zip(completions, references, strict=True)),
                    Verdict(False, f"timeout after {timeout:g}s"),
                    lambda e: Verdict(False, f"error: {e[:100]}"),
                    tick,
                )
        # code: each check already runs its programs in sandboxed processes; threads only wait on them
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as ex:
            out = []
            for v in ex.map(_unpack, zip(completions, references, strict=True)):
                out.append(v)
                if tick:
                    tick(1)
            return out
    finally:
        if bar:
            bar.close()


def _bar(total: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"verify {name}", unit="trace", dynamic_ncols=True)


__all__ = ["VERIFIERS", "Verdict", "extract_boxed_answer", "final_answer", "verify_batch", "verify_math"]
