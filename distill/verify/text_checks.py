"""Verifiers of form rather than content: `format`, `lang`, `repetition`.

- format: exactly one `<think>…</think>` block followed by a non-empty answer; a completion cut off
  by the length limit (finish reason "length") fails whatever it contains. Reference: a dict with
  `finish_reason` (or None).
- lang: the reasoning is written in the script of the prompt (the R1 report penalised language
  mixing). Reference: the expected script name ("latin", "cjk", "cyrillic", ...) or a text in it.
  Passes when at least 95% of the letters of the reasoning are in that script (digits, symbols
  and LaTeX commands do not count).
- repetition: fails when the completion loops: the most frequent 8-gram of words covers more than
  20% of the last 400 words, or one line of at least 10 characters repeats 10 times or more.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Any

from distill.verify.answers import answer_section
from distill.verify.verdict import Verdict


def check_format(completion: str, reference: Any = None) -> Verdict:
    finish = reference.get("finish_reason") if isinstance(reference, dict) else None
    if finish == "length":
        return Verdict(False, "truncated at the length limit")
    opens, closes = completion.count("<think>"), completion.count("</think>")
    if opens != 1 or closes != 1:
        return Verdict(False, f"expected one <think>…</think> block, found {opens} opening and {closes} closing tags")
    if completion.index("<think>") > completion.index("</think>"):
        return Verdict(False, "</think> comes before <think>")
    if not completion.split("<think>")[0].strip() == "":
        return Verdict(False, "text before <think>")
    if not answer_section(completion).strip():
        return Verdict(False, "no answer after </think>")
    return Verdict(True, "well formed")


_SCRIPTS = {
    "LATIN": "latin",
    "CJK": "cjk",
    "HIRAGANA": "cjk",
    "KATAKANA": "cjk",
    "HANGUL": "hangul",
    "CYRILLIC": "cyrillic",
    "GREEK": "greek",
    "ARABIC": "arabic",
    "HEBREW": "hebrew",
    "DEVANAGARI": "devanagari",
    "THAI": "thai",
}
_LATEX = re.compile(r"\\[A-Za-z]+")


def script_of(ch: str) -> str | None:
    """The script family of a letter (None for non-letters)."""
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    return next((v for k, v in _SCRIPTS.items() if name.startswith(k) or f" {k} " in f" {name} "), "other")


def dominant_script(text: str) -> str | None:
    counts = Counter(s for s in map(script_of, _LATEX.sub(" ", text)) if s)
    return counts.most_common(1)[0][0] if counts else None


def check_lang(completion: str, reference: Any = None, threshold: float = 0.95) -> Verdict:
    expected = reference if reference in set(_SCRIPTS.values()) else dominant_script(str(reference or "")) or "latin"
    reasoning = (completion.rpartition("</think>")[0] or completion).replace("<think>", " ")
    letters = [s for s in map(script_of, _LATEX.sub(" ", reasoning)) if s]
    if not letters:
        return Verdict(True, "no letters to judge")
    share = sum(s == expected for s in letters) / len(letters)
    if share >= threshold:
        return Verdict(True, f"{share:.0%} {expected}")
    other = Counter(s for s in letters if s != expected).most_common(1)[0][0]
    return Verdict(False, f"language mixing: {1 - share:.0%} of letters are {other}, expected {expected}")


def check_repetition(
    completion: str, reference: Any = None, n: int = 8, window: int = 400, share: float = 0.2, line_repeats: int = 10
) -> Verdict:
    words = completion.split()[-window:]
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    if grams:
        gram, count = grams.most_common(1)[0]
        if count * n / max(len(words), 1) > share and count > 2:
            return Verdict(False, f"loops: the {n}-gram {' '.join(gram)[:40]!r} repeats {count} times")
    lines = Counter(line.strip() for line in completion.splitlines() if len(line.strip()) >= 10)
    if lines and lines.most_common(1)[0][1] >= line_repeats:
        line, count = lines.most_common(1)[0]
        return Verdict(False, f"loops: the line {line[:40]!r} repeats {count} times")
    return Verdict(True, "no looping")
