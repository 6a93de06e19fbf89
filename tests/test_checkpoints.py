"""The run directory both training recipes share: start/resume rules, checkpoints with step and RNG,
the non-finite-loss stop, metrics truncated on resume, and a run record free of machine paths."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.checkpoints import RunDirectory, portable_paths
from distill.errors import DistillError


def test_a_new_run_and_a_resume_are_checked_before_anything_loads(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    with pytest.raises(DistillError, match=r"--resume: .*run has no checkpoint to resume from; run without --resume\."):
        run.check_start(resume=True)
    run.check_start(resume=False)  # nothing there yet: a new run may start
    run.save_checkpoint(1, {"weights": torch.zeros(2)})
    with pytest.raises(DistillError, match=r"already holds a run; pass --resume to continue it or choose another"):
        run.check_start(resume=False)
    run.check_start(resume=True)


def test_a_checkpoint_carries_the_step_and_restores_the_rng(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    torch.manual_seed(3)
    run.save_checkpoint(2, {"weights": torch.arange(3)})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    # a resumed process starts from other generator states
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    last, state = run.load_checkpoint(map_location="cpu")
    assert last.name == "step-00000002" and state["step"] == 2 and state["weights"].tolist() == [0, 1, 2]
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_a_non_finite_loss_stops_the_run_naming_the_step(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    run.stop_if_not_finite(0.5, 1)
    with pytest.raises(DistillError, match=r"loss became nan at step 3; .* No checkpoint was saved .* start again"):
        run.stop_if_not_finite(float("nan"), 3)  # nothing to --resume from: the sentence must not suggest it
    run.save_checkpoint(5, {})
    for bad in (float("nan"), float("inf")):
        with pytest.raises(DistillError, match=rf"loss became {bad} at step 7; .* kept .*step-00000005.*--resume"):
            run.stop_if_not_finite(bad, 7)


def test_resumed_metrics_drop_the_rows_past_the_checkpoint(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    run.start_metrics(0)
    for step in (1, 2, 3):
        run.log_metrics({"step": step, "loss": 1.0 / step})
    run.start_metrics(2)
    assert [json.loads(r)["step"] for r in run.metrics.read_text().splitlines()] == [1, 2]


def test_run_records_hold_no_machine_paths(tmp_path: Path) -> None:
    inside = tmp_path / "runs" / "teacher" / "init"
    record = {
        "config": {"student": str(inside), "out": tmp_path / "runs" / "teacher" / "run", "traces": None, "lr": 0.1},
        "source": {"cache": "/somewhere/else/caches/3f9a", "prompts": "arith:train"},
        "student": {"hub_id": "Qwen/Qwen2.5-Math-1.5B", "modules": ["q_proj"], "dir": Path("relative/dir")},
    }
    assert portable_paths(record, cwd=tmp_path) == {
        "config": {"student": "runs/teacher/init", "out": "runs/teacher/run", "traces": None, "lr": 0.1},
        "source": {"cache": "3f9a", "prompts": "arith:train"},  # outside the working directory: its name
        "student": {"hub_id": "Qwen/Qwen2.5-Math-1.5B", "modules": ["q_proj"], "dir": "relative/dir"},
    }
