"""The result every verifier returns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    """Whether a completion passed, why (a short sentence), and the answer extracted, if any."""

    passed: bool
    reason: str
    answer: str | None = None
