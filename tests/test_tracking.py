"""`--report-to` trackers, with the real packages in their local modes: what is logged is read back from disk.

TensorBoard through its EventAccumulator, MLflow through MlflowClient on the run's file store, and wandb by
parsing its offline `.wandb` file: wandb 0.31 writes no `wandb-summary.json` offline, only that record log
(LevelDB log format, protobuf `Record`s), which `wandb sync` uploads later.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distill.errors import DistillError
from distill.tracking import open_trackers, tracker_problems

LOSSES = {1: 2.5, 2: 1.25, 3: 0.625}  # exact in float32, so TensorBoard returns them unchanged


@pytest.fixture
def local_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network and nothing outside tmp_path: wandb offline and silent, its home folders moved, no user
    tracker settings leaking in."""
    for var in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_NAME"):
        monkeypatch.delenv(var, raising=False)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # no usage pings: mlflow reads DO_NOT_TRACK only as "true" (conftest sets "1"), wandb reports its own errors
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    # open_trackers sets MLFLOW_ALLOW_FILE_STORE for the process: recorded here so that the test's end removes it
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")


def wandb_history(path: Path) -> list[dict[str, Any]]:
    """The history rows of an offline wandb run file: a 7-byte header, then 32 KiB blocks of LevelDB log
    records (crc32, length, type), each full record a protobuf `Record`."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, chunk, rows = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: the record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in items})
    return rows


def mlflow_run(run_dir: Path) -> tuple[Any, str]:
    """A client on the run's mlflow file store, and the run's mlflow id. Imported here, after `local_env`,
    because mlflow decides about telemetry when it is first imported."""
    from mlflow.tracking import MlflowClient

    return MlflowClient((run_dir / "mlruns").resolve().as_uri()), (run_dir / "mlflow_run_id").read_text().strip()


def test_every_tracker_records_the_logged_values(local_env: None, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = {"lr": 0.001, "model": {"name": "tiny", "layers": 2}, "notes": "x" * 7000}
    trackers = open_trackers("tensorboard, wandb,mlflow", run_dir, "run-1", "tiny-run", config, resume=False)
    for step, loss in LOSSES.items():
        trackers.log({"train/loss": loss, "train/nan": float("nan"), "train/text": "skip"}, step)  # type: ignore[dict-item]
    trackers.close()
    trackers.close()  # a second close does nothing

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert events.Tags()["scalars"] == ["train/loss"]
    assert {e.step: e.value for e in events.Scalars("train/loss")} == LOSSES

    client, run_id = mlflow_run(run_dir)
    assert {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")} == LOSSES
    run = client.get_run(run_id)
    assert run.info.run_name == "tiny-run" and run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "tiny" and run.data.params["lr"] == "0.001"
    assert run.data.params["notes"] == "x" * 6000  # cut to mlflow's limit on a param's length
    assert set(run.data.metrics) == {"train/loss"}

    (offline,) = (run_dir / "wandb").glob("offline-run-*-run-1")
    history = wandb_history(offline / "run-run-1.wandb")
    assert {row["_step"]: row["train/loss"] for row in history} == LOSSES
    assert not any("train/nan" in row or "train/text" in row for row in history)


def test_a_resumed_run_continues_the_same_mlflow_and_wandb_runs(
    local_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_MODE")  # neither WANDB_MODE nor WANDB_API_KEY: offline by default
    run_dir = tmp_path / "run"
    with open_trackers("mlflow,wandb", run_dir, "run-1", "r", {"lr": 0.1}, resume=False) as trackers:
        trackers.log({"train/loss": 3.0}, 1)
    with open_trackers("mlflow,wandb", run_dir, "run-1", "r", {"lr": 0.2, "steps": 4}, resume=True) as trackers:
        trackers.log({"train/loss": 2.0}, 2)

    client, run_id = mlflow_run(run_dir)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == [(1, 3.0), (2, 2.0)]
    run = client.get_run(run_id)
    assert run.data.params == {"lr": "0.1", "steps": "4"}  # mlflow keeps a param's first value; new ones added
    assert [r.info.run_id for r in client.search_runs([run.info.experiment_id])] == [run_id]
    folders = sorted((run_dir / "wandb").glob("offline-run-*-run-1*"))
    assert len(folders) == 2 and all((f / "run-run-1.wandb").exists() for f in folders)


def test_a_run_that_fails_ends_its_tracker_runs_as_failed(local_env: None, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), open_trackers("mlflow", tmp_path / "run", "r", "r", {}, resume=False) as trackers:
        trackers.log({"train/loss": 1.0}, 1)
        raise RuntimeError("the loss became nan")
    client, run_id = mlflow_run(tmp_path / "run")
    assert client.get_run(run_id).info.status == "FAILED"


def test_tracker_problems_names_each_mistake(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracker_problems("tensorboard,wandb,mlflow") == []
    assert tracker_problems("none") == [] and tracker_problems("") == []
    (unknown,) = tracker_problems("tensorbord,wandb")
    assert "'tensorbord'" in unknown and "tensorboard, wandb, mlflow or none" in unknown
    (combined,) = tracker_problems("none,wandb")
    assert "none" in combined
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert tracker_problems("wandb,mlflow") == [
        "--report-to wandb needs the wandb package: pip install 'distill[wandb]'"
    ]
    with pytest.raises(DistillError, match="needs the wandb package"):
        open_trackers("wandb", Path("unused"), "r", "r", {}, resume=False)


def test_a_tracker_that_cannot_start_is_one_sentence(local_env: None, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "mlflow_run_id").write_text("0123456789abcdef\n")
    with pytest.raises(DistillError, match=r"^--report-to mlflow could not start a run at file:.*MLFLOW_TRACKING_URI"):
        open_trackers("tensorboard,mlflow", run_dir, "r", "r", {}, resume=True)


def test_missing_tensorboard_is_a_note_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with open_trackers("tensorboard", tmp_path, "r", "r", {}, resume=False) as trackers:
        trackers.log({"train/loss": 1.0}, 1)
    assert "tensorboard is not installed" in capsys.readouterr().err
    assert not (tmp_path / "tensorboard").exists()


def test_report_to_from_the_train_command(local_env: None, tiny_model: Path, tmp_path: Path) -> None:
    """`distill train --report-to tensorboard,wandb,mlflow`: each tracker gets every step's loss as logged."""
    from typer.testing import CliRunner

    from distill.cli import app

    traces = tmp_path / "traces.jsonl"
    rows = [{"question": f"What is {i} + 1?", "completion": f"<think>{i} + 1 = {i + 1}</think> \\boxed{{{i + 1}}}"}
            for i in range(6)]  # fmt: skip
    traces.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "sft"
    args = ["train", "--student", str(tiny_model), "--traces", str(traces), "--alpha", "1", "--max-steps", "3"]
    args += ["--batch-rows", "2", "--max-length", "128", "--out", str(out), "--report-to", "tensorboard,wandb,mlflow"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    logged = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    client, run_id = mlflow_run(out)
    assert [m.value for m in sorted(client.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)] == logged
    assert client.get_run(run_id).data.params["student"] == str(tiny_model)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    (wandb_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    history = [r for r in wandb_history(wandb_file) if "train/loss" in r]
    assert [r["train/loss"] for r in history] == pytest.approx(logged)
    manifest = json.loads((out / "run.json").read_text())
    assert (
        manifest["config"]["report_to"] == "tensorboard,wandb,mlflow"
        and wandb_file.name == f"run-{manifest['id']}.wandb"
    )
