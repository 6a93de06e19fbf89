"""Embedded tasks: prompt sets generated locally, usable as `--prompts NAME:SPLIT` by every stage.

A task registers a function split → prompts ({id, prompt, answer}, plus a reference `completion`
where it has one). `arith` is the embedded default: synthetic multi-step integer arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distill.errors import DistillError
from distill.tasks import arith

TASKS: dict[str, Callable[[str], list[dict[str, Any]]]] = {"arith": arith.load}
SPLITS: dict[str, tuple[str, ...]] = {"arith": tuple(arith.SIZES)}


def load_task_prompts(source: str) -> list[dict[str, Any]] | None:
    """Prompts of `NAME:SPLIT` if NAME is a registered task, else None."""
    name, _, split = source.partition(":")
    if name not in TASKS:
        return None
    try:
        return TASKS[name](split or "train")
    except KeyError as e:
        raise DistillError(
            f"Task {name!r} has no split {split!r}; known: {', '.join(f'{name}:{s}' for s in SPLITS[name])}."
        ) from e
