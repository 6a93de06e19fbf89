"""Where distill keeps things on disk.

Everything lives under one root, `$DISTILL_HOME` (default `~/.cache/distill`), so that a cluster
can point every job at one shared file system and every later experiment finds the teacher
caches the first one paid for.
"""

import os
from pathlib import Path


def distill_home() -> Path:
    """The root directory: `$DISTILL_HOME`, or `~/.cache/distill`."""
    env = os.environ.get("DISTILL_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "distill"


def cache_root() -> Path:
    """The directory holding one sub-directory per teacher cache, named by its content key."""
    return distill_home() / "caches"
