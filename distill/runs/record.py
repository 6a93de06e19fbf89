"""How a stage records its run: `RunRecord`, the manifest of the run in progress, kept in the registry.

    setup()                                  # inputs checked first: a refused run leaves nothing behind
    with RunRecord("train", run_dir / MANIFEST, cfg, resume=cfg.resume) as record:
        record.update(cache_key=..., model=...)
        record.heartbeat(metrics_row)        # every step; written at most every HEARTBEAT_EVERY s
        record.finish(final_metrics)

Entering writes the manifest with status "running" (a `--resume` keeps the run's id and history);
leaving with an exception records "failed" and the exception's sentence (a `DistillError`'s
message, which is what the user saw) or "interrupted" for Ctrl-C and SIGTERM, and lets the exception go on.
Only rank 0 of a torchrun job records (`enabled=False` elsewhere). A registry that cannot be
written (read-only `$DISTILL_HOME`, a damaged database) costs a note, never the run: the manifest
is written all the same and `distill runs --scan` adds it later.

`attach_eval` adds a `distill eval` result to the run whose model was evaluated.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from pathlib import Path
from typing import Any

import typer

from distill.errors import DistillError
from distill.runs.manifest import (
    HEARTBEAT_EVERY,
    RunManifest,
    Status,
    command_line,
    manifest_lock,
    new_run_id,
    read_manifest,
    run_of_model,
    this_process,
    write_manifest,
)
from distill.runs.registry import Registry
from distill.runs.resume import config_dict, setting_changes


class RunRecord:
    """The manifest of one run in progress, written at `path` and registered."""

    def __init__(
        self, stage: str, path: Path, cfg: Any, *, resume: bool = False, enabled: bool = True, name: str | None = None
    ) -> None:
        self.stage, self.path, self.enabled, self.resume = stage, Path(path), enabled, resume
        self.config = config_dict(cfg)
        self.name = name or self.path.parent.name
        self.manifest: RunManifest | None = None
        self._last_beat = 0.0
        self._warned = False

    # -----------------------------------------------------------------------------------------
    # lifecycle

    def start(self) -> RunRecord:
        """Write the manifest as running (a resumed run keeps its id) and register it."""
        if not self.enabled:
            return self
        now = time.time()
        old = read_manifest(self.path) if self.path.is_file() else None
        if self.resume and old is not None:
            m = dataclasses.replace(old, status="running", reason=None, ended=None, resumed=[*old.resumed, now])
            # distill.runs.resume has refused every other difference: what is left only says how the run proceeds
            if changed := setting_changes(old.config, self.config):
                m.changes = [*old.changes, {"resumed": now, "settings": changed}]
            self.config = {**old.config, **self.config}  # the resolved settings set up later stay as recorded
        else:
            m = RunManifest(
                id=new_run_id(now), stage=self.stage, name=self.name, out="", argv=[], config={}, started=now
            )
            if old is not None:  # a run that never reached a checkpoint, started over in the same directory
                self._registry(lambda r: r.remove(old.id))
        m.argv, m.config, m.out, m.heartbeat = command_line(), self.config, str(self.path.parent.resolve()), now
        for key, value in this_process().items():
            setattr(m, key, value)
        self.manifest = m
        self._write()
        return self

    def update(self, **fields: Any) -> None:
        """Set manifest fields (cache_key, view, model, parent_run, summary, config entries via config=...)."""
        if not self.enabled:
            return
        assert self.manifest is not None, "start() first"
        for key, value in fields.items():
            if key == "config":
                self.manifest.config.update(value)
            else:
                setattr(self.manifest, key, value)
        self._write()

    def heartbeat(self, metrics: dict[str, Any]) -> None:
        """Record the latest metrics and that the run is alive; writes at most every HEARTBEAT_EVERY seconds."""
        if not self.enabled or self.manifest is None:
            return
        now = time.time()
        self.manifest.metrics = metrics
        if now - self._last_beat >= HEARTBEAT_EVERY:
            self.manifest.heartbeat = now
            self._write()

    def finish(self, metrics: dict[str, Any], **fields: Any) -> None:
        """The run ended well: its final metrics (and any other fields, e.g. summary)."""
        self._end("finished", None, metrics=metrics, **fields)

    def fail(self, reason: str, status: Status = "failed") -> None:
        """The run ended badly, for `reason` (one sentence)."""
        self._end(status, reason)

    def _end(self, status: Status, reason: str | None, **fields: Any) -> None:
        if not self.enabled or self.manifest is None:
            return
        for key, value in fields.items():
            setattr(self.manifest, key, value)
        self.manifest.status, self.manifest.reason = status, reason
        self.manifest.ended = self.manifest.heartbeat = time.time()
        self._write()

    def __enter__(self) -> RunRecord:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> bool:
        if error is None or self.manifest is None or self.manifest.status != "running":
            return False
        if isinstance(error, KeyboardInterrupt):  # Ctrl-C or SIGTERM (distill.stopping.Interrupted)
            self.fail(str(error) or "interrupted by Ctrl-C (SIGINT)", "interrupted")
        elif isinstance(error, DistillError):
            self.fail(str(error))
        elif isinstance(error, SystemExit):
            self.fail(f"exited with code {error.code}") if error.code else self.finish(self.manifest.metrics)
        else:
            self.fail(f"{type(error).__name__}: {error}")
        return False

    # -----------------------------------------------------------------------------------------
    # files

    def _write(self) -> None:
        assert self.manifest is not None
        self._last_beat = time.time()
        with manifest_lock(self.path):
            if self.path.is_file():  # keep what others attached meanwhile (eval results)
                on_disk = read_manifest(self.path)
                if on_disk.id == self.manifest.id:
                    self.manifest.eval = {**self.manifest.eval, **on_disk.eval}
            write_manifest(self.path, self.manifest)
            # under the lock: copies reach the registry in the order they reached the file
            manifest = self.manifest
            self._registry(lambda r: r.put(manifest, self.path))

    def _registry(self, action: Any) -> None:
        try:
            action(Registry())
        except (DistillError, sqlite3.Error, OSError) as e:
            if not self._warned:
                typer.echo(
                    f"note: the run registry was not updated ({e}); {self.path} is written, and "
                    "`distill runs --scan DIR` adds it later",
                    err=True,
                )
                self._warned = True


def attach_eval(model: str | Path, benchmark: str, results: dict[str, Any]) -> Path | None:
    """Add `results` under `benchmark` to the manifest of the run whose model is `model`; its path, or None."""
    path = run_of_model(model)
    if path is None:
        return None
    with manifest_lock(path):
        manifest = read_manifest(path)
        manifest.eval[benchmark] = results
        write_manifest(path, manifest)
        try:  # under the lock: copies reach the registry in the order they reached the file
            Registry().put(manifest, path)
        except (DistillError, sqlite3.Error, OSError) as e:
            typer.echo(f"note: the run registry was not updated ({e}); {path} holds the results", err=True)
    return path
