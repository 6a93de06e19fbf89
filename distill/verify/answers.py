"""The verdict every verifier returns, and where a completion keeps its answer.

R1-style completions reason inside `<think>…</think>` and answer after it. Only the text after the
last `</think>` counts as the answer: a boxed guess the model made halfway through its reasoning
and then abandoned must not be graded. A completion with no `</think>` at all (a plain model, or a
think block the prompt already opened) is searched whole.

- math answers: the content of the last `\\boxed{...}` (also `\\fbox{...}` and the brace-less
  `\\boxed 5`), with nested braces matched by counting, not by a regex, because answers like
  `\\frac{\\sqrt{3}}{2}` nest;
- programs: the last fenced code block (```` ```python ... ``` ````, any tag or none);
- gold answers: GSM8K's `#### 72` and the last box of a worked solution (NuminaMath), read by the
  same parsers here for the prompt loaders and the math verifier, so the two never disagree.

Everything here is pure string work on text the caller already holds: cheap, no subprocess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

VerdictStatus = Literal["passed", "failed", "unknown"]
PASSED: VerdictStatus = "passed"
FAILED: VerdictStatus = "failed"
UNKNOWN: VerdictStatus = "unknown"
STATUSES: tuple[VerdictStatus, ...] = (PASSED, FAILED, UNKNOWN)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# `\boxed{`, `\boxed {`, `\fbox{`, and the brace-less `\boxed 5`; `\boxedx` is not a box.
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*(\{)?")
# A brace-less box holds one token: up to whitespace, `$`, or the end of a display `\]`.
_BARE_TOKEN = re.compile(r"[^\s$\\]+")
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class Verdict:
    """The result of one check.

    status: "passed", "failed" (the completion is wrong), or "unknown" (the check could not be made:
        a timeout, a sandbox failure, no gold answer). Callers branch on it, never on `reason`:
        GRPO drops unknown samples instead of rewarding them 0, the filter and eval count them apart.
    reason: a short sentence for reports and logs ("correct", "wrong answer: got 7, expected 8").
    answer: the answer the verifier extracted (math: the boxed text), or None; eval's majority
        vote groups samples by it.
    """

    status: VerdictStatus
    reason: str
    answer: str | None = None

    def __post_init__(self) -> None:
        # A status is a string on purpose: the old `Verdict(True, ...)` must fail loudly, not mean something else.
        if self.status not in STATUSES:
            raise ValueError(f"A verdict's status must be one of {', '.join(STATUSES)}, got {self.status!r}.")

    @property
    def passed(self) -> bool:
        """Whether the completion passed (an unknown verdict did not)."""
        return self.status == PASSED

    @property
    def unknown(self) -> bool:
        """Whether the check could not be made, so the verdict says nothing about the completion."""
        return self.status == UNKNOWN


def reasoning_and_answer(completion: str) -> tuple[str | None, str]:
    """Split at the last `</think>`: (reasoning, answer). Reasoning is None when there is no think block."""
    head, sep, tail = completion.rpartition(THINK_CLOSE)
    if not sep:
        return None, completion
    return head.split(THINK_OPEN, 1)[-1], tail


def answer_section(completion: str) -> str:
    """The text after the last `</think>`, or the whole completion when there is none."""
    return reasoning_and_answer(completion)[1]


def _braced(text: str, start: int) -> str | None:
    """The text from `start` up to the `}` that closes the `{` just before it, or None if it never closes."""
    depth = 1
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":  # an escaped brace (`\{` in a set) does not open or close the box
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` anywhere in `text`, think block or not.

    Handles nested braces, `\\fbox{...}`, `\\boxed {...}` and `\\boxed 5`. A box that never closes (a
    completion cut off mid-answer) or holds nothing does not count. Returns the content stripped of
    surrounding whitespace, or None. Gold solutions (NuminaMath's) are read with this directly;
    completions go through `extract_boxed_answer`, which first drops the reasoning.
    """
    found: str | None = None
    for m in _BOX.finditer(text):
        if m.group(1) is None:
            token = _BARE_TOKEN.match(text, m.end())
            content = token.group(0).rstrip(".,;:") if token else None  # `\boxed 5.` ends a sentence
        else:
            content = _braced(text, m.end())
        if content is not None and content.strip():
            found = content
    return found.strip() if found is not None else None


def extract_boxed_answer(text: str) -> str | None:
    """The content of the last `\\boxed{...}` after `</think>` (or in the whole text without a think block).

    `last_boxed` on the answer section: a box the model wrote while reasoning is not its answer.
    """
    return last_boxed(answer_section(text))


def gsm8k_answer(solution: str) -> str:
    """GSM8K's gold: the number after the last `####` of a worked solution, without thousands separators.

    A text without `####` is returned stripped (and without commas), so a gold that is already
    just the number passes through.
    """
    return solution.rsplit("####", 1)[-1].strip().replace(",", "")


def extract_program(completion: str) -> str | None:
    """The last fenced code block after `</think>` (any language tag, or none), or None."""
    blocks = _FENCE.findall(answer_section(completion))
    return blocks[-1][1] if blocks else None


def normalise_answer(answer: str | None) -> str | None:
    """A whitespace-free form of an extracted answer, so that majority votes group `1 / 2` with `1/2`."""
    return None if answer is None else re.sub(r"\s+", "", answer)


def final_answer(completion: str) -> str | None:
    """The completion's boxed answer in the form majority votes group by (whitespace-free), or None."""
    return normalise_answer(extract_boxed_answer(completion))
