"""Where the answer is in a completion: after the think block, in the last \\boxed{}.

R1-style completions reason inside `<think>…</think>` and answer after it. Only the text after the
last `</think>` counts as the answer (a boxed guess inside the reasoning is not the answer); a
completion with no think block is searched whole.
"""

from __future__ import annotations

import re

_BOX = re.compile(r"\\(?:boxed|fbox)\s*(\{)?")


def answer_section(completion: str) -> str:
    """The text after the last `</think>`, or the whole completion when there is none."""
    head, sep, tail = completion.rpartition("</think>")
    return tail if sep else completion


def extract_boxed_answer(completion: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`) in the answer section."""
    text = answer_section(completion)
    found = None
    for m in _BOX.finditer(text):
        if m.group(1) is None:  # \boxed 5: one token, up to whitespace or '$'
            token = re.match(r"[^\s$]+", text[m.end() :])
            found = token.group(0) if token else found
            continue
        depth = 1
        for j in range(m.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                found = text[m.end() : j]
                break
    return found.strip() if found is not None else None


def final_answer(completion: str) -> str | None:
    """The answer used for majority votes: the boxed answer, whitespace-normalised."""
    ans = extract_boxed_answer(completion)
    return None if ans is None else re.sub(r"\s+", "", ans)
