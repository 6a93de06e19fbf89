"""`distill demo` (what `make demo` runs), at a small size: every stage runs and the report is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_every_stage_and_writes_the_report(tmp_path: Path) -> None:
    env = {**os.environ, "DISTILL_HOME": str(tmp_path / "home")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill",
            "demo",
            "--out",
            str(tmp_path / "demo"),
            "--prompts",
            "6",
            "--steps",
            "2",
            "--eval-problems",
            "3",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    for key in ("teacher_pass1", "kd_pass1", "sft_pass1", "train_records", "kept_records", "seconds"):
        assert key in summary
    assert summary["train_records"] == 6 and 0 <= summary["kept_records"] <= 6
    # the two students differ only in the loss: KD at α 0.5 and the demo's τ, SFT at α 1
    configs = {
        n: json.loads((tmp_path / "demo" / n / "model" / "distill_train.json").read_text())["config"]
        for n in ("kd", "sft")
    }
    assert (configs["kd"]["alpha"], configs["kd"]["temperature"]) == (0.5, summary["kd_temperature"]) == (0.5, 4.0)
    assert configs["sft"]["alpha"] == 1.0
    assert {k: v for k, v in configs["kd"].items() if k not in ("alpha", "temperature", "out")} == {
        k: v for k, v in configs["sft"].items() if k not in ("alpha", "temperature", "out")
    }
    assert all(0 <= summary[k] <= 1 for k in ("teacher_pass1", "kd_pass1", "sft_pass1"))
    for name in ("report.md", "curves.png", "accuracy.png", "filter.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    assert "![accuracy](accuracy.png)" in (tmp_path / "demo" / "report.md").read_text()
    table = out.stdout[out.stdout.index("model") :]
    assert "teacher" in table and "kd" in table and "sft" in table
    if not summary["bundled_teacher"]:
        assert "no bundled arith teacher" in out.stdout  # says plainly that the comparison means nothing
