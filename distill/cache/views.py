"""Views: named selections of a cache's records, written by the filter next to the cache.

A view never copies or edits shards. It is one JSON file, `views/<name>.json`, holding the key of
the cache it was made from (so a view cannot be applied to another cache), the indices of the
kept records, and whatever per-record verdicts and report the filter wants to keep with it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from distill.atomic import write_json_atomic
from distill.cache.format import FORMAT_VERSION, VIEWS_DIR
from distill.cache.reader import TeacherCache
from distill.errors import DistillError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def view_path(cache_path: Path, name: str) -> Path:
    if not _NAME.match(name):
        raise DistillError(f"View name {name!r} is not allowed; use letters, digits, '.', '_' and '-'.")
    return Path(cache_path) / VIEWS_DIR / f"{name}.json"


def write_view(cache: TeacherCache, name: str, kept: list[int], extra: dict[str, Any] | None = None) -> Path:
    """Save the record indices `kept` (plus `extra`, e.g. verdicts and a report) as view `name`."""
    bad = [i for i in kept if not 0 <= i < len(cache)]
    if bad:
        raise DistillError(f"View {name!r} lists records {bad[:5]} that cache {cache.path} does not have.")
    path = view_path(cache.path, name)
    path.parent.mkdir(exist_ok=True)
    doc = {"format_version": FORMAT_VERSION, "cache_key": cache.key, "name": name, "records": len(cache)}
    doc.update(extra or {})
    doc["kept"] = sorted(int(i) for i in kept)
    write_json_atomic(path, doc)
    return path


def load_view(cache: TeacherCache, name: str) -> dict[str, Any]:
    """The view document, checked against the cache it is applied to."""
    path = view_path(cache.path, name)
    if not path.is_file():
        known = ", ".join(sorted(list_views(cache.path))) or "none"
        raise DistillError(f"Cache {cache.path} has no view {name!r} (views: {known}); run `distill filter` first.")
    doc = json.loads(path.read_text())
    if doc.get("cache_key") != cache.key:
        raise DistillError(
            f"View {path} was written for cache {doc.get('cache_key')}, not for {cache.key}; "
            "filter this cache again to make a view of it."
        )
    return doc


def view_indices(cache: TeacherCache, name: str) -> np.ndarray:
    """int64 indices of the records kept by view `name`."""
    return np.asarray(load_view(cache, name)["kept"], dtype=np.int64)


def list_views(cache_path: Path) -> dict[str, int]:
    """View name → number of kept records, for every view of a cache."""
    out = {}
    for f in sorted((Path(cache_path) / VIEWS_DIR).glob("*.json")):
        try:
            out[f.stem] = len(json.loads(f.read_text())["kept"])
        except (OSError, ValueError, KeyError):
            out[f.stem] = -1  # unreadable view: shown, not hidden
    return out
