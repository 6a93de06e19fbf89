"""Do a teacher cache's token ids mean the same tokens for a student?

Tokenizers are compared, never embedding-row counts (Qwen2.5-7B has 152,064 rows and Qwen2.5-1.5B
151,936 for the same 151,665 tokens):
- identical tokenizers (vocabulary, special tokens, chat template): nothing to do;
- same regular vocabulary, different special tokens or template (R1-Distill-Qwen teachers and
  Qwen2.5 students): the student adopts the teacher's tokenizer and chat template, and says so;
- different regular vocabularies: refuse, naming both (`distill train --cross-tokenizer` aligns them by text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distill.errors import DistillError
from distill.fingerprint import tokenizer_fingerprint, vocabulary_fingerprint


@dataclass
class TokenizerDecision:
    """Which tokenizer the student trains and ships with, and why."""

    tokenizer: Any
    adopted_teacher: bool
    message: str


def reconcile(student_tok: Any, teacher_tok: Any, student_name: str, teacher_name: str) -> TokenizerDecision:
    """The tokenizer the student should use with a cache made by `teacher_tok` (see module doc)."""
    if tokenizer_fingerprint(student_tok) == tokenizer_fingerprint(teacher_tok):
        return TokenizerDecision(student_tok, False, "student and teacher tokenizers are identical")
    if vocabulary_fingerprint(student_tok) == vocabulary_fingerprint(teacher_tok):
        return TokenizerDecision(
            teacher_tok,
            True,
            f"the student ({student_name}) shares the teacher's regular vocabulary but not its special tokens or "
            f"chat template; it adopts the teacher's ({teacher_name}) tokenizer and chat template",
        )
    raise DistillError(
        f"The student's tokenizer ({student_name}, {len(student_tok)} tokens) and the teacher's ({teacher_name}, "
        f"{len(teacher_tok)} tokens) have different vocabularies, so the cached teacher ids mean other tokens "
        "for this student; pick a student of the teacher's tokenizer family, or pass --cross-tokenizer to align the "
        "two by the traces' text."
    )
