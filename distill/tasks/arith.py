"""`arith`: synthetic multi-step integer arithmetic with exact answers and reasoning that forks.

A problem is an expression of three or four small integers with +, − and × and sometimes
parentheses, e.g. `(12 + 7) * (3 - 5)`. Its chain of thought evaluates one operation per line
inside `<think>…</think>`, then boxes the result:

    <think>
    3 - 5 = -2
    then 7 + 12 = 19
    so 19 * -2 = -38
    check: -38 / -2 = 19
    </think>
    Final answer: \\boxed{-38}.

Correct reasoning is not one string, as it is not for real reasoning teachers: independent
sub-expressions may be evaluated in either order, + and × operands written either way round, lines
joined by a connective or none, "=" written "is", "*" written "×", full stops or none, a check line (the last operation
inverted) added or not, the reasoning opened and the answer announced in one of several
phrasings. `sample_reasoning` draws each choice uniformly, so a teacher trained on these traces
spreads its mass over the valid continuations at every fork (`FORKS` lists them) and a student has
something to learn from the teacher beyond its text.

Splits are disjoint by construction: an expression belongs to `test` when a hash of its text falls
in the first tenth of the hash space, so no test problem can appear elsewhere. The others form one
seeded stream: its first 4,000 problems are `train` (what the bundled teacher was trained on), the
next 4,000 are `distill` (prompts the teacher never saw: the teacher stage answers them, and gets
some wrong, so the filter has real work to do). Every split is the same list on every machine.

Every problem has a `domain`: `mul` when it multiplies (a `*` anywhere), else `add` (only + and −: 2,522 of
`train`'s 4,000 problems, 121 of `test`'s 200). Specialist teachers (scripts/train_arith_teacher.py --domain)
are trained on one domain's `train` problems; routing and per-domain evaluation read the field.
`arithmetic_facts` is the base student's pretraining text: single operations, no reasoning format.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

SIZES = {"train": 4000, "distill": 4000, "test": 200}
OPS = ("+", "-", "*")
DOMAINS = ("add", "mul")


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


OPENINGS = ("", "Work inside out.\n", "One operation per line.\n", "Step by step.\n", "Innermost first.\n")
CONNECTIVES = ("", "then ", "so ", "next ")  # before every line but the first
EQUALS = (" = ", " is ")
ENDS = ("", ".")  # a line may end with a full stop
TIMES = ("*", "×")
CHECKS = ("check: ", "verify: ")
FINALS = (
    "The answer is \\boxed{{{}}}.",
    "So the result is \\boxed{{{}}}.",
    "Final answer: \\boxed{{{}}}.",
    "Result: \\boxed{{{}}}.",
    "\\boxed{{{}}}",
)
FORKS = (
    "opening line (5 forms)",
    "which ready sub-expression next",
    "+ and × operands either way round",
    "line connective (4 forms)",
    "'=' or 'is'",
    "'*' or '×'",
    "a line ends with a full stop or not",
    "check line (2 forms) or none",
    "final phrasing (5 forms)",
)


def _operations(node: Node) -> list[Node]:
    """Every operation node of the tree, children before parents."""
    return [] if node.op is None else [*_operations(node.left), *_operations(node.right), node]


def sample_reasoning(tree: Node, rng: random.Random) -> str:
    """One correct chain of thought and answer for `tree`, every fork drawn uniformly from `rng`."""
    done: set[int] = set()
    lines = []
    ops = _operations(tree)
    while len(done) < len(ops):
        ready = [n for n in ops if id(n) not in done and all(c.op is None or id(c) in done for c in (n.left, n.right))]
        node = rng.choice(ready)
        done.add(id(node))
        a, b = node.left.value, node.right.value
        if node.op in "+*" and rng.random() < 0.5:
            a, b = b, a
        connective = rng.choice(CONNECTIVES) if lines else ""
        lines.append((connective, a, node.op, b, node.value))

    def line(a: int, op: str, b: int, v: int) -> str:
        return f"{a} {rng.choice(TIMES) if op == '*' else op} {b}{rng.choice(EQUALS)}{v}{rng.choice(ENDS)}"

    text = [c + line(a, op, b, v) for c, a, op, b, v in lines]
    if rng.random() < 0.5:
        _, a, op, b, v = lines[-1]  # the last operation, inverted
        inverse = {"+": (v, "-", b, a), "-": (v, "+", b, a), "*": (v, "/", b, a) if b else (b, "*", a, v)}[op]
        text.append(rng.choice(CHECKS) + line(*inverse))
    reasoning = rng.choice(OPENINGS) + "\n".join(text)
    return f"<think>\n{reasoning}\n</think>\n" + rng.choice(FINALS).format(tree.value)


def domain_of(expression: str) -> str:
    """`mul` when the expression multiplies, else `add`."""
    return "mul" if "*" in expression else "add"


def split_of(expression: str) -> str:
    return "test" if hashlib.sha256(expression.encode()).digest()[0] < 26 else "train"


def _trees(split: str, count: int | None, seed: int) -> list[Node]:
    """The first `count` expression trees of `split` (default: the split's size)."""
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
        out.append(tree)
    return out


def problems(split: str, count: int | None = None, seed: int = 0, variants: int = 1) -> list[dict[str, Any]]:
    """The first `count` problems of `split` ({id, prompt, answer, domain, completion}), each with `variants`
    reference traces (rows with the same id).

    The reference traces are drawn with a seed of their own per problem, so a problem's first
    variant is the same whatever `count` or `variants` asks for.
    """
    out = []
    for i, tree in enumerate(_trees(split, count, seed)):
        text = tree.text()
        rng = random.Random(f"{seed}:{text}")
        for _ in range(variants):
            out.append(
                {
                    "id": f"arith-{split}-{i}",
                    "prompt": f"Compute {text}.",
                    "answer": str(tree.value),
                    "domain": domain_of(text),
                    "completion": sample_reasoning(tree, rng),
                }
            )
    return out


def arithmetic_facts(count: int, seed: int = 0) -> list[str]:
    """`count` lines of plain arithmetic ("19 * 3 = 57"): the operations `train` problems need, each with
    its operands in a random order, and as many new pairs whose operands are drawn as the task's are
    for each operation. No reasoning format, no problems, no answers: what a base model knows of arithmetic."""
    rng = random.Random(seed)
    pool = [(n.left.value, n.op, n.right.value) for t in _trees("train", None, seed) for n in _operations(t)]
    by_op = {op: [f for f in pool if f[1] == op] for op in OPS}
    out = []
    while len(out) < count:
        if rng.random() < 0.5:
            a, op, b = rng.choice(pool)
        else:  # new pairs whose operands are distributed as the task's are, per operation
            op = rng.choice(pool)[1]
            a, b = rng.choice(by_op[op])[0], rng.choice(by_op[op])[2]
        if op in "+*" and rng.random() < 0.5:
            a, b = b, a
        out.append(f"{a} {op} {b} = {_apply(op, a, b)}")
    return out


def load(split: str) -> list[dict[str, Any]]:
    """Prompts of a split as the teacher stage takes them: id, prompt, answer, domain (and one reference trace)."""
    return problems(split)
