"""Configs of the commands that judge text with the verifiers: `distill filter` and `distill eval`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from distill.configs.base import Config, DomainField, ModelRuntime, PromptSource, at_least
from distill.outputs import Output


def verifier_problems(names: str, option: str) -> list[str]:
    """Unknown names in a comma-separated verifier list, as a sentence."""
    from distill.verify import VERIFIERS

    given = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in given if n not in VERIFIERS]
    if unknown or not given:
        named = ", ".join(unknown) or "(none given)"
        return [f"unknown verifier(s) {named} in {option}; known: {', '.join(VERIFIERS)}"]
    return []


@dataclass(kw_only=True)
class FilterConfig(Config):
    """Keep verified-correct traces (a view of a cache)."""

    COMMAND = "filter"

    cache: str = field(metadata={"argument": True})
    """Teacher cache (path or key) to filter."""
    verifiers: str = "math,format"
    """Comma-separated verifiers every kept trace must pass: math, code, format, lang, repetition."""
    name: str | None = None
    """View name [the verifier names joined by '+']."""
    keep: Literal["all", "first", "best-of-n"] = "all"
    """all passing traces, the first per prompt, or best-of-n per prompt."""
    workers: int | None = None
    """Worker processes for the checks [core count, capped]."""

    def problems(self) -> list[str]:
        return verifier_problems(self.verifiers, "--verifiers") + at_least(self.workers, 1, "--workers")

    def outputs(self) -> list[Output]:
        """The cache's views/ directory, where the view is written (a cache named by key is checked when found)."""
        cache = Path(self.cache)
        fix = "copy the cache (with `cp -r`) to where a view can be written and filter that"
        # "views": distill.cache.format.VIEWS_DIR, which this light module cannot import (numpy)
        return [Output(cache / "views", "the views directory", fix=fix)] if cache.is_dir() else []


@dataclass(kw_only=True)
class EvalConfig(Config, PromptSource, DomainField, ModelRuntime):
    """Evaluate a model: pass@1, cons@n, pass@k."""

    COMMAND = "eval"
    OUT_KIND = "file"

    model: str
    """Model: a trained student's run or model/ directory, a teacher or student preset name, preset YAML or hub
    id."""
    samples: int = 4
    """Samples per problem (pass@1 averages them; cons@N votes)."""
    temperature: float = 0.6
    """Sampling temperature (R1 protocol: 0.6; 0 = greedy)."""
    top_p: float = 0.95
    """Nucleus sampling threshold."""
    max_new_tokens: int = 4096
    """Completion length limit."""
    verifier: str = "math"
    """Verifier that decides correctness: math, code, format, lang, repetition."""
    seed: int = 0
    """Base seed; every (problem, sample) derives its own."""
    out: Path | None = None
    """Write per-problem results and the summary as JSON here."""

    def problems(self) -> list[str]:
        out = self.prompt_problems() + self.runtime_problems() + at_least(self.samples, 1, "--samples")
        out += at_least(self.temperature, 0, "--temperature") + at_least(self.max_new_tokens, 1, "--max-new-tokens")
        if not 0 < self.top_p <= 1:
            out.append(f"--top-p must be in (0, 1], got {self.top_p}")
        if "," in self.verifier:
            out.append(f"--verifier takes one verifier, got {self.verifier!r}")
        return out + verifier_problems(self.verifier, "--verifier")
