"""What every command config shares: field docs, one validation path, and the shared option groups.

A config is a keyword-only dataclass; each field carries a docstring (the string literal under it),
which the CLI turns into the option's `--help` text, so an option is declared once, here. A config
validates itself on construction (`__post_init__`): every problem is collected and raised together
as one `DistillError`, before any heavy import or file write. Option groups that several commands
share (where prompts come from, which engine runs the model) are small dataclasses a config inherits
from, so `--prompt-field` means the same thing in every command that reads prompts.

This module imports nothing heavy: `distill --help` builds every command from it.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from distill.errors import DistillError
from distill.outputs import Output

Backend = Literal["vllm", "hf"]
Dtype = Literal["auto", "bfloat16", "float16", "float32"]


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name → its docstring, over the class and its bases (a subclass's docstring wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body  # type: ignore[attr-defined]
        for stmt, nxt in zip(body, body[1:], strict=False):
            doc = nxt.value.value if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) else None
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(doc, str):
                docs[stmt.target.id] = " ".join(doc.split())
    return docs


@functools.cache
def field_choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """Field name → its allowed values, for every field typed `Literal[...]` (or `Literal[...] | None`)."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        literals = [a for a in args if typing.get_origin(a) is Literal]
        if literals:
            out[name] = typing.get_args(literals[0]) + ((None,) if type(None) in args else ())
    return out


@functools.cache
def float_fields(cls: type) -> tuple[str, ...]:
    """The fields typed `float` (or `float | None`) that must be finite: all but those whose metadata says
    `allow_inf` (none does yet: a number that means "no limit" would)."""
    allowed = {f.name for f in dataclasses.fields(cls) if f.metadata.get("allow_inf")}
    out = []
    for name, hint in typing.get_type_hints(cls).items():
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        if float in args and name not in allowed:
            out.append(name)
    return tuple(out)


def option(name: str) -> str:
    """The command-line spelling of a field: `batch_rows` → `--batch-rows`."""
    return "--" + name.replace("_", "-")


def raise_problems(command: str, problems: list[str]) -> None:
    """One `DistillError` naming every problem, or nothing."""
    if problems:
        raise DistillError(f"Invalid {command} settings: " + "; ".join(problems) + ".")


def at_least(value: int | float | None, low: int | float, flag: str) -> list[str]:
    """`[sentence]` when `value` (if given) is below `low`."""
    return [f"{flag} must be ≥ {low}, got {value}"] if value is not None and value < low else []


VIEW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # as distill.cache.views allows


def view_problems(view: str | None) -> list[str]:
    """`[sentence]` when a --view is given but cannot name a view (an empty `--view ""` used to mean no view)."""
    if view is None or VIEW_NAME.match(view):
        return []
    return [f"--view must name a view of the cache (letters, digits, '.', '_', '-'), got {view!r}"]


def field_default(f: dataclasses.Field) -> Any:
    """A field's default value (its factory's value for a list), or `dataclasses.MISSING` for a required field."""
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()


@dataclass(kw_only=True)
class Config:
    """Base of the command configs: validate on construction."""

    COMMAND = "command"

    def __post_init__(self) -> None:
        # NaN passes every range check (each comparison is False) and inf most: a sentence before any check uses them
        infinite = [
            f"{option(name)} must be a finite number, got {value}"
            for name in float_fields(type(self))
            if isinstance(value := getattr(self, name), float) and not math.isfinite(value)
        ]
        raise_problems(self.COMMAND, infinite)
        # the CLI enforces the choices itself; the Python API gets the same sentence here
        wrong = [
            f"{option(name)} must be one of {', '.join(str(c) for c in choices if c is not None)}, got "
            f"{getattr(self, name)!r}"
            for name, choices in field_choices(type(self)).items()
            if getattr(self, name) not in choices
        ]
        raise_problems(self.COMMAND, wrong + self.problems())

    def problems(self) -> list[str]:
        """Every invalid setting, as sentences (none: valid)."""
        return []

    OUT_KIND = "directory"  # what this command's --out names: "directory", or "file" (eval's JSON)

    def outputs(self) -> list[Output]:
        """Where the command will write, checked by the CLI before the work starts (distill.outputs): its --out,
        when it has one."""
        out = getattr(self, "out", None)
        return [Output(Path(out), "--out", self.OUT_KIND)] if out is not None else []  # type: ignore[arg-type]

    def given(self) -> frozenset[str]:
        """The fields set on purpose: from the command line, the options typed there (`set_given`, which the CLI
        calls); through the Python API, the fields whose value is not their default. `--resume` brings back the
        run's own value of every other one (distill.runs.resume)."""
        typed = self.__dict__.get("_given")
        if typed is not None:
            return typed
        fields = dataclasses.fields(self)
        return frozenset(f.name for f in fields if f.init and getattr(self, f.name) != field_default(f))

    def set_given(self, names: set[str] | frozenset[str]) -> None:
        """Record which options the user typed (an attribute, not a field: no record or cache key sees it)."""
        self.__dict__["_given"] = frozenset(names)


# ---------------------------------------------------------------------------------------------
# option groups shared by several commands


@dataclass(kw_only=True)
class PromptSource:
    """Where prompts (and their gold answers) come from: generate, grpo and eval read them alike."""

    prompts: str
    """Prompt source: a file (.jsonl/.json/.parquet/.csv), a built-in set (gsm8k, math500, aime24, ...), a hub
    dataset org/name, or task:split (arith:train)."""
    prompt_field: str | None = None
    """Column holding the problem [auto]."""
    answer_field: str | None = None
    """Column holding the gold answer [auto]."""
    mapping: str | None = None
    """Built-in column mapping (e.g. gsm8k) for a local file with that dataset's layout."""
    limit: int | None = None
    """Use only the first N prompts."""

    def prompt_problems(self) -> list[str]:
        return at_least(self.limit, 1, "--limit")


@dataclass(kw_only=True)
class DomainField:
    """Which column names each prompt's domain (generate, score and eval keep it; see distill.prompts)."""

    domain_field: str | None = None
    """Column naming each prompt's domain, kept in the records' metadata; eval reports pass@1 per domain [auto:
    domain; a task's own]."""


@dataclass(kw_only=True)
class ModelRuntime:
    """Which engine runs a model, in which dtype, with how long a context."""

    backend: Backend = "vllm"
    """Engine: vllm, or hf (transformers; no vLLM needed)."""
    dtype: Dtype | None = None
    """Model dtype: auto, bfloat16, float16 or float32 [preset]."""
    max_model_len: int | None = None
    """Context length for the engine (prompt + completion) [preset, else the model's own]."""

    def runtime_problems(self) -> list[str]:
        return at_least(self.max_model_len, 1, "--max-model-len")


@dataclass(kw_only=True)
class TeacherRuntime(ModelRuntime):
    """A teacher engine: tensor parallelism too."""

    tensor_parallel_size: int | None = None
    """GPUs one engine spans (vLLM tensor parallelism) [preset]."""

    def runtime_problems(self) -> list[str]:
        return super().runtime_problems() + at_least(self.tensor_parallel_size, 1, "--tensor-parallel-size")


@dataclass(kw_only=True)
class TeacherServers:
    """A teacher served by vLLM's OpenAI-compatible server(s) instead of run in this process (`distill serve`)."""

    teacher_url: list[str] = field(default_factory=list)
    """URL of a vLLM server of --teacher (`distill serve`, or `vllm serve` with the flags docs/pipeline.md lists);
    repeat for several. The teacher then runs there: --teacher still names it (tokenizer, template, cache key)."""
    teacher_inflight: int = 256
    """Requests in flight per teacher server (keep it at or above the server's batch, vLLM's --max-num-seqs)."""
    teacher_timeout_s: float = 3600.0
    """Seconds to wait for one answer of a teacher server before it counts as failed (raise it for very long
    completions)."""
    teacher_retries: int = 5
    """Failed answers in a row after which a teacher server is dropped (retried after 1, 2, 4, ... s meanwhile);
    the run stops when none remains."""

    def server_problems(self, backend: str = "vllm") -> list[str]:
        out = [
            f"--teacher-url must be an http:// or https:// URL, got {url!r}"
            for url in self.teacher_url
            if not url.startswith(("http://", "https://"))
        ]
        if len(set(self.teacher_url)) < len(self.teacher_url):
            out.append("--teacher-url names the same server twice")
        if self.teacher_url and backend != "vllm":
            out.append(f"--teacher-url runs the teacher in vLLM servers; leave --backend at vllm, not {backend}")
        out += at_least(self.teacher_inflight, 1, "--teacher-inflight") + at_least(
            self.teacher_retries, 0, "--teacher-retries"
        )
        if not self.teacher_timeout_s > 0:
            out.append(f"--teacher-timeout-s must be > 0, got {self.teacher_timeout_s}")
        return out
