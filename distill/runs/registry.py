"""The run registry: one embedded SQLite database under `$DISTILL_HOME` indexing every run's manifest.

Why SQLite: it ships with Python, needs no server, and its locking lets many processes write one
file safely — parallel experiments, every rank-0 of several torchrun jobs, an `eval` attaching its
results while a `distill runs` reads. Write-ahead logging (WAL) lets readers proceed while a writer
commits; each write is one short `BEGIN IMMEDIATE` transaction, and a writer that finds the
database locked waits (`busy_timeout`) instead of failing. WAL needs every process on one host
(shared memory); on a network file system SQLite falls back to its rollback journal, which still
serialises writers.

The registry is an index, not the truth: every row is a copy of a run's `run.json`, keyed by run
id, with the directory the manifest was found in. `scan` rebuilds rows from manifests on disk, so a
deleted database or moved run directories lose nothing. A run whose registry write fails (a
read-only `$DISTILL_HOME`) keeps training; its manifest is written all the same.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distill.errors import DistillError
from distill.outputs import Output, check_outputs
from distill.paths import distill_home
from distill.runs.manifest import MANIFEST, RunManifest, liveness, manifest_lock, read_manifest, write_manifest

REGISTRY_NAME = "runs.sqlite"
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    stage TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    cache_key TEXT,
    started REAL NOT NULL,
    path TEXT NOT NULL,
    manifest TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_cache ON runs (cache_key);
"""


def registry_path() -> Path:
    """`$DISTILL_HOME/runs.sqlite`."""
    return distill_home() / REGISTRY_NAME


class Registry:
    """Every run known under one `$DISTILL_HOME`, as manifests (each with `.path`, its run.json)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path else registry_path()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # SQLite writes its journal next to the database, even to read: a home that is a file or read-only is a
        # sentence here, not "unable to open database file" (a training run notes it and goes on, distill.runs.record)
        fix = "set DISTILL_HOME to a writable directory"
        check_outputs([Output(self.path.parent, "the run registry's directory", fix=fix)])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout = 60000")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise DistillError(f"{self.path} was written by a newer distill (schema {version}); upgrade distill.")
            if version < SCHEMA_VERSION:
                db.execute("PRAGMA journal_mode = WAL")  # persistent: set once, when the file is made
                db.execute("BEGIN IMMEDIATE")
                db.executescript(SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")
            yield db
        except sqlite3.DatabaseError as e:
            raise DistillError(
                f"The run registry {self.path} cannot be used ({e}); move it away and rebuild it "
                "with `distill runs --scan DIR`."
            ) from None
        finally:
            db.close()

    # -----------------------------------------------------------------------------------------
    # writing

    def put(self, manifest: RunManifest, path: Path) -> None:
        """Insert or replace the row of `manifest`, found at `path` (its run.json)."""
        row = (
            manifest.id,
            manifest.stage,
            manifest.name,
            manifest.status,
            manifest.cache_key,
            manifest.started,
            str(Path(path).resolve()),
            json.dumps(dataclasses.asdict(manifest)),
        )
        with self._connect() as db:
            db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "stage=excluded.stage, name=excluded.name, status=excluded.status, cache_key=excluded.cache_key, "
                "started=excluded.started, path=excluded.path, manifest=excluded.manifest",
                row,
            )

    def remove(self, run_id: str) -> None:
        """Forget the run `run_id` (its directory now holds another run)."""
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def scan(self, root: Path) -> list[Path]:
        """Register every manifest under `root` (run.json and eval's NAME.run.json); returns those read."""
        found = []
        for path in sorted([*Path(root).rglob(MANIFEST), *Path(root).rglob("*." + MANIFEST)]):
            try:
                manifest = read_manifest(path)
            except DistillError:
                continue
            self.put(manifest, path)
            found.append(path)
        return found

    # -----------------------------------------------------------------------------------------
    # reading

    def runs(self, cache_key: str | None = None, stage: str | None = None) -> list[tuple[RunManifest, Path]]:
        """(manifest, run.json path) of every run, oldest first, with killed runs found and recorded; with
        `cache_key` (a key or a prefix), the runs that read that cache, alone or among others."""
        query, args = "SELECT manifest, path FROM runs WHERE 1=1", []
        if cache_key:  # the column holds a run's first cache; the manifest, every cache it read (checked below)
            query += " AND (cache_key = ? OR cache_key LIKE ? OR manifest LIKE ?)"
            args += [cache_key, cache_key + "%", f'%"cache_key": "{cache_key}%']
        if stage:
            query += " AND stage = ?"
            args.append(stage)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY started", args).fetchall()
        out = []
        for text, path in rows:
            manifest = RunManifest(**json.loads(text))
            if cache_key and not any(k.startswith(cache_key) for k in manifest.cache_keys):
                continue  # the key appeared in the manifest elsewhere (a parent run's, a path)
            out.append((self._settle(manifest, Path(path)), Path(path)))
        return out

    def find(self, ref: str) -> tuple[RunManifest, Path]:
        """A run by its directory (or run.json), its id, a unique id prefix, or its unique name."""
        path = Path(ref)
        if path.exists():
            file = path / MANIFEST if path.is_dir() else path
            if path.is_dir() and not file.is_file() and (path.parent / MANIFEST).is_file():
                file = path.parent / MANIFEST  # OUT/model
            manifest = read_manifest(file)
            self.put(manifest, file)
            return self._settle(manifest, file), file
        every = self.runs()
        for match in (
            [r for r in every if r[0].id == ref],
            [r for r in every if r[0].id.startswith(ref)],
            [r for r in every if r[0].name == ref],
        ):
            if len(match) == 1:
                return match[0]
            if len(match) > 1:
                ids = ", ".join(m.id for m, _ in match[:5])
                raise DistillError(f"{ref!r} names {len(match)} runs ({ids}); give a run id or directory instead.")
        raise DistillError(
            f"No run {ref!r} in the registry {self.path}: give a run directory, a run id or a name from `distill runs` "
            "(runs moved from elsewhere: `distill runs --scan DIR`)."
        )

    def _settle(self, manifest: RunManifest, path: Path) -> RunManifest:
        """Record a run found dead as killed, in its manifest (when still reachable) and its row."""
        status, reason = liveness(manifest)
        if status == manifest.status:
            return manifest
        if path.is_file():
            with manifest_lock(path):
                current = read_manifest(path)
                if current.pid_started == manifest.pid_started and current.status == "running":
                    current.status, current.reason, current.ended = status, reason, current.heartbeat
                    write_manifest(path, current)
                # else: resumed or ended since the row was written (its registry write failed): the file knows better
                if current.id != manifest.id:  # the directory now holds another run: this one is gone with it
                    self.remove(manifest.id)
                self.put(current, path)  # under the lock, as every writer of the manifest registers it
            return current
        else:
            manifest = dataclasses.replace(manifest, status=status, reason=reason, ended=manifest.heartbeat)
        self.put(manifest, path)
        return manifest
