"""`--resume` keeps the run's promise: a resumed run is the experiment it continues, never another one.

The run's manifest (OUT/run.json) holds the settings it started with (its `config`). On `--resume`:

- every option not given again comes back from there, so `distill train --out runs/kd --resume` with none of
  the first command's options continues that run as it was;
- an option given again with another value is refused, in one sentence naming each (first value, new value),
  before anything loads, so run.json and the registry are left as they were;
- except the options that only say how the run proceeds (`PROCEEDS`: how long it runs, how often it saves,
  where its metrics and a served teacher are), which may change; the manifest records each change (its
  `changes`, with the resume's start time) beside the new value.

Which options were "given" is the config's business (`Config.given`: typed on the command line, or, through the
Python API, not at their defaults). Shared by train, grpo and onpolicy, before their recipes set anything up.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

import typer

from distill.errors import DistillError
from distill.runs.manifest import MANIFEST, read_manifest

# options that say how a run proceeds, not what it computes: they may differ on --resume (and are recorded)
PROCEEDS = frozenset(
    {"steps", "max_steps", "epochs", "save_every", "report_to"}
    | {"teacher_url", "teacher_inflight", "teacher_timeout_s", "teacher_retries"}  # where a served teacher runs
)
SAME_RUN = frozenset({"resume", "out"})  # what names the run itself
LENGTH = frozenset({"epochs", "max_steps"})  # alternatives: giving one again does not bring back the other

C = TypeVar("C")


def resume_settings(cfg: C) -> C:
    """`cfg` with the run's own settings for the options not given again (a `--resume` of a run in `cfg.out` that
    has a manifest; otherwise `cfg` itself). Raises DistillError naming every option given with another value."""
    path = Path(cfg.out) / MANIFEST  # type: ignore[attr-defined]
    if not getattr(cfg, "resume", False) or not path.is_file():
        return cfg
    first = read_manifest(path).config
    given = cfg.given()  # type: ignore[attr-defined]
    restore: dict[str, Any] = {}
    refused = []
    for name, value in config_dict(cfg).items():
        if name in SAME_RUN or name not in first:
            continue
        old = first[name]
        if name not in given:
            if not same(old, value) and not (name in LENGTH and given & LENGTH):
                restore[name] = old
        elif not same(old, value) and name not in PROCEEDS:
            refused.append(f"{flag(name)} was {show(old)}, now {show(value)}")
    if refused:
        raise DistillError(
            f"--resume continues the run in {path.parent} with the settings it started with, but "
            + "; ".join(refused)
            + ": leave these options out (or give their first values) to resume it, or choose another --out to "
            "start a new run."
        )
    if not restore:
        return cfg
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(
            "resuming with the run's own settings: " + ", ".join(f"{flag(k)} {show(v)}" for k, v in restore.items()),
            err=True,
        )
    return dataclasses.replace(cfg, **restore)  # type: ignore[type-var]


def config_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as {option name: value}: JSON values, derived (init=False) fields left out."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.init:
            value = getattr(cfg, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
    return out


def setting_changes(first: dict[str, Any], now: dict[str, Any]) -> dict[str, list[Any]]:
    """{option: [first value, new value]} of the `PROCEEDS` options a resume changed (what the manifest records)."""
    return {k: [first[k], now[k]] for k in sorted(PROCEEDS) if k in first and k in now and not same(first[k], now[k])}


def same(a: Any, b: Any) -> bool:
    """Whether two settings are one: equal, or the same file or directory spelled two ways."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and a and b and Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()
    return False


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def show(value: Any) -> str:
    """A setting as the user would type it (lists comma-separated, None as "unset")."""
    if value is None:
        return "unset"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)
