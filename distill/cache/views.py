"""Views: named selections of a cache's records, written by the filter next to the cache.

A view never copies or edits shards. It is one JSON file, `views/<name>.json` (schema: `format.View`),
holding the key of the cache it was made from (so a view cannot be applied to another cache), the
indices of the kept records, and whatever per-record verdicts and report the filter wants to keep
with it. `write_view` is the one writer and `read_view_file` the one reader of these files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from distill.atomic import write_json_atomic
from distill.cache.format import READABLE_VERSIONS, VIEWS_DIR, View
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
    view = View(cache.key, name, len(cache), sorted(int(i) for i in kept), dict(extra or {}))
    write_json_atomic(path, view.to_json())
    return path


def read_view_file(path: Path) -> View:
    """The view stored at `path`; DistillError when it is unreadable or of an unknown version."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DistillError(f"View {path} is unreadable ({e}); run `distill filter` again to rewrite it.") from e
    version = doc.get("format_version") if isinstance(doc, dict) else None
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise DistillError(
            f"View {path} has format version {version!r}, which this distill does not know (it reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}); upgrade distill or run `distill filter` again."
        )
    try:
        return View.from_json(doc)
    except ValueError as e:
        raise DistillError(f"View {path} is damaged ({e}); run `distill filter` again to rewrite it.") from e


def load_view(cache: TeacherCache, name: str) -> View:
    """View `name` of `cache`, checked to have been made from that cache."""
    path = view_path(cache.path, name)
    if not path.is_file():
        known = ", ".join(sorted(list_views(cache.path))) or "none"
        raise DistillError(f"Cache {cache.path} has no view {name!r} (views: {known}); run `distill filter` first.")
    view = read_view_file(path)
    if view.cache_key != cache.key:
        raise DistillError(
            f"View {path} was written for cache {view.cache_key}, not for {cache.key}; "
            "filter this cache again to make a view of it."
        )
    return view


def view_indices(cache: TeacherCache, name: str) -> np.ndarray:
    """int64 indices of the records kept by view `name`."""
    return np.asarray(load_view(cache, name).kept, dtype=np.int64)


def list_views(cache_path: Path) -> dict[str, int]:
    """View name → number of kept records, for every view of a cache (-1: unreadable, shown rather than hidden)."""
    out = {}
    for f in sorted((Path(cache_path) / VIEWS_DIR).glob("*.json")):
        try:
            out[f.stem] = len(read_view_file(f).kept)
        except DistillError:
            out[f.stem] = -1
    return out
