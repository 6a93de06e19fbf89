"""Configs of the commands that read the run registry: `distill runs` and `distill compare`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from distill.configs.base import Config

Stage = Literal["train", "grpo", "eval", "onpolicy"]


@dataclass(kw_only=True)
class RunsConfig(Config):
    """List recorded runs: settings, losses, scores, status.

    Every train, grpo and eval run records itself in $DISTILL_HOME/runs.sqlite; a run whose process died shows as
    killed.
    """

    COMMAND = "runs"

    cache: str | None = None
    """Only the runs trained on this teacher cache: its key, a key prefix or its directory."""
    stage: Stage | None = None
    """Only runs of this command: train, grpo, eval or onpolicy."""
    scan: Path | None = None
    """First register every run manifest (run.json) found under this directory: rebuilds the registry after run
    directories moved or the registry was lost."""
    json: bool = False
    """Print a JSON list of runs (id, stage, status, out, cache_key, config, metrics, eval, ...) instead of a table."""


@dataclass(kw_only=True)
class CompareConfig(Config):
    """Compare runs: settings that differ, scores, curves.

    Runs that differ only in --seed are grouped: their accuracy is shown as mean ± spread over seeds.
    """

    COMMAND = "compare"

    runs: list[str] = field(default_factory=list, metadata={"argument": True})
    """Runs to compare: run directories, run ids (or unique prefixes) or names from `distill runs`."""
    cache: str | None = None
    """Also compare every train run of this teacher cache (key, key prefix or directory)."""
    stage: Stage | None = None
    """With --cache: runs of this command only [train]."""
    out: Path | None = None
    """Write report.md and the figures (curves_METRIC.png, accuracy.png) into this directory."""
    json: bool = False
    """Print the comparison as JSON instead of a table."""

    def problems(self) -> list[str]:
        if not self.runs and self.cache is None:
            return ["give runs to compare (directories, ids or names) or --cache KEY for every student of a cache"]
        return []
