"""Verifiers of form rather than content: `format`, `lang` and `repetition`. Pure string checks, in-process.

Each always reaches a verdict, "passed" or "failed", never "unknown": there is nothing that can time
out, and a missing reference has a documented default (format: not truncated; lang: latin).

format — exactly one `<think>…</think>` block (nothing but whitespace before it, some reasoning
    inside) followed by a non-empty answer. A completion cut off by the length limit fails whatever
    it contains. The finish reason comes as the `finish_reason` keyword, or as the reference: the
    string itself ("stop", "length") or a dict with a `finish_reason` key (what the filter passes).
    A completion whose prompt already opened `<think>` must be re-opened by the caller first.

lang — the reasoning is written in the script of the prompt (the R1 report penalised language
    mixing). Reference: a script name (`latin`, `cjk`, `cyrillic`, `greek`, `arabic`, `hebrew`,
    `devanagari`, `thai`, `hangul`), a dict with `script` or `prompt`, or the prompt text itself
    (its dominant script is expected); none, or a prompt without letters (`2 + 3 = ?`), means
    `latin` — the script R1-style models reason in — rather than "unknown", which would drop every
    such sample from GRPO and the filter. The reasoning (the think block, or the whole completion
    without one) is stripped of math (`$…$`, `\\(…\\)`, `\\[…\\]`), LaTeX commands
    and code, then counted in units: a word of 3+ letters in an alphabetic script, or one CJK
    character (CJK has no spaces, and one character is about one word). Short words are skipped
    because `x`, `cm`, `π` are notation in any language. Passes when at least `threshold` (0.9) of
    the units are in the expected script, or when there are fewer than `min_units` (20) to judge.

repetition — fails when the completion loops, by any of three documented tests:
    1. n-grams: among the last `tail_words` (600) words, the share of 8-word n-grams that repeat an
       earlier one in that window exceeds `max_repeated_share` (0.5) — ordinary reasoning re-uses
       phrases, but not half of its 8-grams (needs at least 100 words);
    2. lines: one line of at least 8 characters repeated `line_run` (5) times in a row;
    3. characters: the last 4000 characters compress to under `min_compression` (0.1) of their size
       with zlib — loops without spaces (`1111…`, `\\\\\\\\…`); prose and LaTeX compress to ~0.3–0.5.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections import Counter
from functools import lru_cache
from itertools import groupby
from typing import Any

from distill.verify.answers import FAILED, PASSED, THINK_CLOSE, THINK_OPEN, Verdict, reasoning_and_answer

# ---- format -------------------------------------------------------------------------------------


def _finish_reason(reference: Any, finish_reason: str | None) -> str | None:
    if finish_reason is not None:
        return finish_reason
    if isinstance(reference, dict):
        return reference.get("finish_reason")
    return reference if isinstance(reference, str) else None


def verify_format(completion: str, reference: Any = None, finish_reason: str | None = None) -> Verdict:
    """One think block, reasoning in it, an answer after it, and not truncated."""
    finish = _finish_reason(reference, finish_reason)
    if finish == "length":
        return Verdict(FAILED, "truncated at the length limit (finish reason 'length')")
    opens, closes = completion.count(THINK_OPEN), completion.count(THINK_CLOSE)
    if (opens, closes) != (1, 1):
        return Verdict(FAILED, f"expected one <think>…</think> block, found {opens} <think> and {closes} </think>")
    before, _, rest = completion.partition(THINK_OPEN)
    if THINK_CLOSE not in rest:
        return Verdict(FAILED, "</think> comes before <think>")
    if before.strip():
        return Verdict(FAILED, "text before <think>")
    reasoning, answer = reasoning_and_answer(completion)
    if not (reasoning or "").strip():
        return Verdict(FAILED, "empty think block")
    if not answer.strip():
        return Verdict(FAILED, "no answer after </think>")
    return Verdict(PASSED, "well formed")


# ---- lang ---------------------------------------------------------------------------------------

SCRIPTS = ("latin", "cjk", "cyrillic", "greek", "arabic", "hebrew", "devanagari", "thai", "hangul")
_FAMILY = {"HIRAGANA": "cjk", "KATAKANA": "cjk", "CJK": "cjk", "FULLWIDTH": "latin"}
_NOT_PROSE = re.compile(
    r"```.*?```|`[^`\n]*`|\$\$.*?\$\$|\$[^$]*\$|\\\(.*?\\\)|\\\[.*?\\\]|\\[A-Za-z]+|https?://\S+", re.DOTALL
)
_CHARACTER_SCRIPTS = {"cjk"}  # scripts without spaces: every character is a unit


@lru_cache(maxsize=65536)
def script_of(ch: str) -> str | None:
    """The script family of a letter (`latin`, `cjk`, ..., or `other`); None for anything not a letter."""
    if not ch.isalpha():
        return None
    first = unicodedata.name(ch, "OTHER").split()[0]
    family = _FAMILY.get(first, first.lower())
    return family if family in SCRIPTS else "other"


def script_units(text: str) -> Counter[str]:
    """How many units (words of 3+ letters, or CJK characters) of each script `text` has, math and code aside."""
    units: Counter[str] = Counter()
    run_script, run_length = None, 0
    for ch in _NOT_PROSE.sub(" ", text) + " ":
        script = script_of(ch)
        if script in _CHARACTER_SCRIPTS:
            units[script] += 1
        if script == run_script:
            run_length += 1
            continue
        if run_script is not None and run_script not in _CHARACTER_SCRIPTS and run_length >= 3:
            units[run_script] += 1
        run_script, run_length = script, 1
    return units


def expected_script(reference: Any) -> str:
    """The script a reference asks for: a script name, a dict with `script`/`prompt`, or a prompt text."""
    if isinstance(reference, dict):
        reference = reference.get("script") or reference.get("prompt")
    if reference is None:
        return "latin"
    if isinstance(reference, str) and reference.strip().lower() in SCRIPTS:
        return reference.strip().lower()
    units = script_units(str(reference))
    return units.most_common(1)[0][0] if units else "latin"


def verify_lang(completion: str, reference: Any = None, threshold: float = 0.9, min_units: int = 20) -> Verdict:
    """The reasoning stays in the expected script (no language mixing)."""
    expected = expected_script(reference)
    reasoning, _ = reasoning_and_answer(completion)
    units = script_units(completion if reasoning is None else reasoning)
    total = sum(units.values())
    if total < min_units:
        return Verdict(PASSED, f"too little text to judge ({total} words)")
    share = units[expected] / total
    if share >= threshold:
        return Verdict(PASSED, f"{share:.0%} of the reasoning is {expected}")
    other, _ = next((s, n) for s, n in units.most_common() if s != expected)
    return Verdict(FAILED, f"language mixing: {1 - share:.0%} of the reasoning is not {expected} (mostly {other})")


# ---- repetition ---------------------------------------------------------------------------------


def verify_repetition(
    completion: str,
    reference: Any = None,
    ngram: int = 8,
    tail_words: int = 600,
    max_repeated_share: float = 0.5,
    line_run: int = 5,
    min_compression: float = 0.1,
) -> Verdict:
    """No looping: repeated n-grams in the tail, a line repeated in a row, or a tail that compresses to nothing."""
    words = completion.split()[-tail_words:]
    if len(words) >= 100:
        grams = [tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1)]
        repeated = 1 - len(set(grams)) / len(grams)
        if repeated > max_repeated_share:
            top, count = Counter(grams).most_common(1)[0]
            return Verdict(
                FAILED, f"loops: {repeated:.0%} of the last {len(words)} words repeat ({' '.join(top)[:50]!r} ×{count})"
            )
    for line, group in groupby(line.strip() for line in completion.splitlines()):
        run = sum(1 for _ in group)
        if run >= line_run and len(line) >= 8:
            return Verdict(FAILED, f"loops: the line {line[:50]!r} repeats {run} times in a row")
    tail = completion[-4000:].encode()
    if len(tail) >= 1000:
        ratio = len(zlib.compress(tail)) / len(tail)
        if ratio < min_compression:
            return Verdict(FAILED, f"loops: the last {len(tail)} characters compress to {ratio:.0%} of their size")
    return Verdict(PASSED, "no looping")
