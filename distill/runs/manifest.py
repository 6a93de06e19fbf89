"""A run's manifest: `run.json` in its output directory, the record that says what the run was and is.

Written when the run starts (status "running"), refreshed by a heartbeat while it works, and
rewritten when it ends ("finished" with its final metrics, "failed" with the one-sentence reason, or
"interrupted" by Ctrl-C or SIGTERM, a clean stop that `--resume` continues). Every write goes through
a temp file and a rename under an advisory lock beside the file, so a reader never sees half a manifest
and two writers (a run and an `eval` attaching its results to it) never lose each other's changes.

The manifest, not the registry, is the truth: the registry (distill.runs.registry) is an index of
manifests that `distill runs --scan DIR` rebuilds, so moving or copying run directories loses nothing.

A run whose process died without finishing (kill -9, OOM killer, a lost node) cannot say so
itself. `liveness` decides from what the manifest holds: on the run's own host, whether its process
still exists (its pid, and its start time, so a recycled pid does not count); on another host,
whether its heartbeat is recent (`STALE_AFTER`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from distill import __version__
from distill.atomic import write_json_atomic
from distill.errors import DistillError

MANIFEST = "run.json"
MANIFEST_VERSION = 1
HEARTBEAT_EVERY = 30.0  # seconds between heartbeats of a working run
STALE_AFTER = 600.0  # a run on another host with no heartbeat for this long is taken as killed

Status = Literal["running", "finished", "failed", "interrupted", "killed"]
STATUSES = ("running", "finished", "failed", "interrupted", "killed")


@dataclass(kw_only=True)
class RunManifest:
    """What `run.json` holds. Times are Unix seconds; `config` is the command's resolved config."""

    id: str
    """Unique run id: start time and a random suffix (20261202-101500-3fa2c1)."""
    stage: str
    """The command: train, grpo, eval, onpolicy."""
    name: str
    """Short name shown in tables: the output directory's name."""
    out: str
    """Where the run wrote its outputs, absolute, as at the last write."""
    argv: list[str]
    """The command line, as typed."""
    config: dict[str, Any]
    """The resolved config: option names as keys (batch_rows for --batch-rows), preset defaults filled in."""
    cache_key: str | None = None
    cache: str | None = None
    view: str | None = None
    """The run's teacher cache, its key and view; of a run on several caches, the first (`caches` lists all)."""
    caches: list[dict[str, Any]] = field(default_factory=list)
    """Every cache the run read, in order: {name, cache, cache_key, view, records, weight} (train: one per --cache;
    `distill runs --cache X` and `distill cache info X` find a run by any of them)."""
    model: str | None = None
    """The model the run started from (train: the student, grpo: the policy, eval: the evaluated model)."""
    parent_run: str | None = None
    """Id of the run that produced `model`, when it came from one."""
    version: str = __version__
    host: str = ""
    pid: int = 0
    pid_started: str | None = None
    """The process's start time (boot id and clock ticks), so a recycled pid is not taken for the run."""
    started: float = 0.0
    ended: float | None = None
    heartbeat: float = 0.0
    status: Status = "running"
    reason: str | None = None
    """Why a run failed, was interrupted (Ctrl-C, SIGTERM: a clean stop, resumable) or was killed, one sentence."""
    resumed: list[float] = field(default_factory=list)
    """Start times of each --resume."""
    changes: list[dict[str, Any]] = field(default_factory=list)
    """Settings a --resume changed (only those that say how the run proceeds: distill.runs.resume.PROCEEDS), one
    entry per such resume: {"resumed": its start time, "settings": {option: [before, after]}}."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """The latest metrics while running; the final ones once finished."""
    summary: dict[str, Any] = field(default_factory=dict)
    """Facts about the run that are not metrics: steps, tokens, the cache's top-k."""
    eval: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Benchmark → results of `distill eval` runs of this run's model."""
    manifest_version: int = MANIFEST_VERSION

    @property
    def model_dir(self) -> Path:
        return Path(self.out) / "model"

    @property
    def cache_keys(self) -> list[str]:
        """The keys of every cache the run read (none for a run that read no cache)."""
        keys = [c.get("cache_key") for c in self.caches] or [self.cache_key]
        return [k for k in keys if k]


def new_run_id(now: float | None = None) -> str:
    """A sortable, unique id: 20261202-101500-3fa2c1."""
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + secrets.token_hex(3)


def process_identity(pid: int | None = None) -> str | None:
    """The boot id and start time (clock ticks) of process `pid`, or None where /proc cannot tell."""
    pid = pid or os.getpid()
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # from field 3, the state, after the command name
    if fields[0] in ("Z", "X"):  # exited, not yet reaped by its parent: no start time matches it
        return f"{boot}:exited"
    return f"{boot}:{fields[19]}"  # field 22: the start time


def this_process() -> dict[str, Any]:
    """host, pid and pid_started of the calling process."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": process_identity()}


# ---------------------------------------------------------------------------------------------
# reading and writing


def read_manifest(path: Path) -> RunManifest:
    """The manifest at `path` (a run.json file, or a directory holding one)."""
    path = Path(path)
    path = path / MANIFEST if path.is_dir() else path
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DistillError(f"{path} does not exist: not a distill run (a run directory holds {MANIFEST}).") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DistillError(f"{path} is not a readable run manifest ({e}); `distill runs --scan` skips it.") from None
    if not isinstance(data, dict) or data.get("manifest_version", 0) > MANIFEST_VERSION:
        raise DistillError(f"{path} was written by a newer distill (manifest version {data.get('manifest_version')}).")
    known = {f.name for f in dataclasses.fields(RunManifest)}
    try:
        return RunManifest(**{k: v for k, v in data.items() if k in known})
    except TypeError as e:
        raise DistillError(f"{path} is missing fields of a run manifest ({e}).") from None


def write_manifest(path: Path, manifest: RunManifest) -> None:
    """Replace the manifest at `path` atomically (callers hold `manifest_lock`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, dataclasses.asdict(manifest))


@contextmanager
def manifest_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on the manifest at `path` (a hidden `.NAME.lock` file beside it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def run_of_model(model: str | Path) -> Path | None:
    """The manifest of the run that produced the model directory `model` (OUT/model or OUT), if any."""
    path = Path(model)
    for candidate in (path / MANIFEST, path.parent / MANIFEST):
        if path.is_dir() and candidate.is_file():
            return candidate
    return None


def command_line() -> list[str]:
    """The command line as the user typed it: `distill train ...` (python -m distill too)."""
    argv = list(sys.argv)
    return ["distill", *argv[1:]] if argv and Path(argv[0]).name in ("distill", "__main__.py") else argv


# ---------------------------------------------------------------------------------------------
# liveness


def liveness(m: RunManifest, now: float | None = None) -> tuple[Status, str | None]:
    """The run's true status and reason: a "running" run whose process is gone is "killed"."""
    if m.status != "running":
        return m.status, m.reason
    now = time.time() if now is None else now
    if m.host == socket.gethostname():
        current = process_identity(m.pid)
        alive = current == m.pid_started if m.pid_started and current is not None else _pid_exists(m.pid)
        if alive:
            return "running", None
        return "killed", f"its process ({m.pid} on {m.host}) ended without finishing, {_ago(now - m.heartbeat)}"
    if now - m.heartbeat < STALE_AFTER:
        return "running", None
    return "killed", f"no heartbeat from {m.host} for {_ago(now - m.heartbeat).removeprefix('last heartbeat ')}"


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ago(seconds: float) -> str:
    return f"last heartbeat {format_age(seconds)} ago"


def format_age(seconds: float) -> str:
    """3 s, 4 min, 2 h, 5 d."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{max(seconds, 0):.0f} s"
