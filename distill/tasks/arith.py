"""`arith`: synthetic multi-step integer arithmetic with exact answers and reference reasoning.

A problem is an expression of three or four small integers with +, − and × and sometimes
parentheses, e.g. `(12 + 7) * 3 - 5`. Its reference chain of thought evaluates one operation per
line, in the order a person would, inside `<think>…</think>`, then boxes the result:

    <think>
    12 + 7 = 19
    19 * 3 = 57
    57 - 5 = 52
    </think>
    The answer is \\boxed{52}.

Splits are disjoint by construction: an expression belongs to `test` when a hash of its text falls
in the first tenth of the hash space, so no test problem can appear elsewhere. The others form one
seeded stream: its first 4,000 problems are `train` (what the bundled teacher was trained on), the
next 4,000 are `distill` (prompts the teacher never saw: the teacher stage answers them, and gets
some wrong, so the filter has real work to do). Every split is the same list on every machine.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

SIZES = {"train": 4000, "distill": 4000, "test": 200}
OPS = ("+", "-", "*")


@dataclass
class Node:
    """An expression tree: a leaf number, or an operation over two subtrees."""

    value: int
    op: str | None = None
    left: Node | None = None
    right: Node | None = None

    def text(self, top: bool = True) -> str:
        if self.op is None:
            return str(self.value)
        inner = f"{self.left.text(False)} {self.op} {self.right.text(False)}"
        return inner if top else f"({inner})"


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _random_tree(rng: random.Random, operands: int) -> Node:
    if operands == 1:
        return Node(rng.randint(1, 20))
    split = rng.randint(1, operands - 1)
    left, right = _random_tree(rng, split), _random_tree(rng, operands - split)
    op = rng.choice(OPS)
    if op == "*" and (abs(left.value) > 30 or abs(right.value) > 12):
        op = rng.choice("+-")  # keep products small enough to compute line by line
    return Node(_apply(op, left.value, right.value), op, left, right)


def steps(node: Node) -> list[str]:
    """The reference reasoning: one line per operation, innermost (left to right) first."""
    if node.op is None:
        return []
    return [*steps(node.left), *steps(node.right), f"{node.left.value} {node.op} {node.right.value} = {node.value}"]


def split_of(expression: str) -> str:
    return "test" if hashlib.sha256(expression.encode()).digest()[0] < 26 else "train"


def problems(split: str, count: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The first `count` problems of `split` (default: the split's size), each with its reference trace."""
    if split not in SIZES:
        raise KeyError(split)
    count = count or SIZES[split]
    skip = SIZES["train"] if split == "distill" else 0  # distill continues the stream train starts
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < count:
        tree = _random_tree(rng, rng.choice((3, 3, 4)))
        text = tree.text()
        if text in seen or split_of(text) != ("test" if split == "test" else "train"):
            continue
        seen.add(text)
        if skip:
            skip -= 1
            continue
        reasoning = "\n".join(steps(tree))
        out.append(
            {
                "id": f"arith-{split}-{len(out)}",
                "prompt": f"Compute {text}.",
                "answer": str(tree.value),
                "completion": f"<think>\n{reasoning}\n</think>\nThe answer is \\boxed{{{tree.value}}}.",
            }
        )
    return out


def load(split: str) -> list[dict[str, Any]]:
    """Prompts of a split as the teacher stage takes them: id, prompt, answer (and the reference trace)."""
    return problems(split)
