"""`distill demo` (what `make demo` runs), at a small size: every stage runs and the report is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


@pytest.mark.vllm
@pytest.mark.slow
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
            "--onpolicy",
            "--onpolicy-steps",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    for key in ("teacher_pass1", "kd_pass1", "sft_pass1", "train_records", "kept_records", "seconds"):
        assert key in summary
    if summary["kept_records"]:  # the teacher's entropy on its kept traces, from the cache: a real number of nats
        assert summary["teacher_entropy_mean"] > 0 and 0 <= summary["teacher_entropy_above_half"] <= 1
    assert summary["train_records"] == 6 and 0 <= summary["kept_records"] <= 6
    # the two students differ only in the loss: KD at the demo's α and τ (1: the exact tail bucket), SFT at α 1
    configs = {
        n: json.loads((tmp_path / "demo" / n / "model" / "distill_train.json").read_text())["config"]
        for n in ("kd", "sft")
    }
    kd = (configs["kd"]["kd"], configs["kd"]["alpha"], configs["kd"]["temperature"], configs["kd"]["tail"])
    want = (summary["kd_kind"], summary["kd_alpha"], summary["kd_temperature"], summary["kd_tail"])
    assert kd == want == ("reverse", 0.5, 1.0, "bucket")
    assert configs["sft"]["alpha"] == 1.0
    # `distill train --student demo-out/kd/model` gets the bundled student's defaults, not the generic 16,384 tokens
    from distill.presets import resolve_preset

    assert resolve_preset(str(tmp_path / "demo" / "kd" / "model"), "student").train.max_length == 512
    loss = ("kd", "alpha", "temperature", "out")  # the loss's settings (and where it wrote); nothing else differs
    assert {k: v for k, v in configs["kd"].items() if k not in loss} == {
        k: v for k, v in configs["sft"].items() if k not in loss
    }
    assert all(0 <= summary[k] <= 1 for k in ("teacher_pass1", "kd_pass1", "sft_pass1"))
    for name in ("report.md", "curves.png", "accuracy.png", "filter.png", "entropy.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    assert "![accuracy](accuracy.png)" in (tmp_path / "demo" / "report.md").read_text()
    # the students train side by side, each with train_threads threads: the KD student is what the same
    # `distill train` run alone with that many threads makes, bit for bit (nothing leaks between the two)
    alone = tmp_path / "kd-alone"
    cmd = [
        sys.executable,
        "-m",
        "distill",
        "train",
        "--student",
        "arith-student" if summary["bundled_teacher"] else str(tmp_path / "demo" / "random-teacher"),
    ]
    cmd += ["--cache", str(tmp_path / "demo" / "cache"), "--alpha", "0.5", "--kd", "reverse", "--temperature", "1.0"]
    cmd += ["--tail", "bucket", "--max-steps", "2", "--save-every", "2", "--batch-rows", str(summary["batch_rows"])]
    cmd += ["--seed", "0", "--out", str(alone)] + (["--view", "correct"] if summary["kept_records"] else [])
    if not summary["bundled_teacher"]:
        cmd += ["--init", "random", "--max-length", "512"]
    threads = str(summary["train_threads"])
    subprocess.run(
        cmd, check=True, capture_output=True, env={**env, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    )
    side_by_side = load_file(tmp_path / "demo" / "kd" / "model" / "model.safetensors")
    assert side_by_side.keys() == load_file(alone / "model" / "model.safetensors").keys()
    for name, tensor in load_file(alone / "model" / "model.safetensors").items():
        assert torch.equal(tensor, side_by_side[name]), name
    assert (tmp_path / "demo" / "train-kd.log").stat().st_size > 0
    table = out.stdout[out.stdout.index("model") :]
    assert "teacher" in table and "kd" in table and "sft" in table and "opd" in table
    # --onpolicy: a fourth student, the KD student polished by `distill onpolicy` with its preset's defaults
    assert 0 <= summary["opd_pass1"] <= 1 and summary["onpolicy_steps"] == 2
    opd = json.loads((tmp_path / "demo" / "opd" / "run.json").read_text())
    assert opd["stage"] == "onpolicy" and opd["metrics"]["steps"] == 2 and opd["config"]["student"].endswith("model")
    # the KD student's model directory remembers arith-student, whose on-policy defaults are the measured recipe
    recipe = {k: opd["config"][k] for k in ("loss", "lr", "batch_size", "warmup_steps", "iterations", "lr_schedule")}
    assert recipe == {"loss": "topk", "lr": 3e-4, "batch_size": 32, "warmup_steps": 20, "iterations": 4,
                      "lr_schedule": "cosine"}  # fmt: skip
    assert "KD → on-policy" in (tmp_path / "demo" / "report.md").read_text()
    assert "[8/8] eval opd" in out.stdout
    if not summary["bundled_teacher"]:
        assert "no bundled arith teacher" in out.stdout  # says plainly that the comparison means nothing
