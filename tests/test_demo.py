"""`distill demo` (what `make demo` runs) does what it says on a fresh directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from distill.cache import open_cache


def test_demo_generates_hits_the_cache_and_scores_consistently(tmp_path: Path) -> None:
    env = {**os.environ, "DISTILL_HOME": str(tmp_path / "home")}
    out = subprocess.run(
        [sys.executable, "-m", "distill", "demo", "--out", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "cache hit: 16 prompts × 2 samples already done" in out.stdout
    gap = float(re.search(r"largest top-k logprob difference (\S+) nats", out.stdout).group(1))
    assert gap < 1e-3
    assert "not built yet: train" in out.stdout  # says plainly what does not exist yet
    assert len(open_cache(tmp_path / "demo" / "cache")) == 32
