"""Experiment trackers behind `--report-to`: TensorBoard, Weights & Biases and MLflow, any of them at once.

`--report-to` takes comma-separated names (`tensorboard,wandb`) or `none`, like Hugging Face Trainer's
`report_to`; `tracker_problems` checks it for config validation without importing any tracker. Every tracker
works without a network and writes under the run directory unless told otherwise:

- tensorboard: event files in `run_dir/tensorboard` (view with `tensorboard --logdir RUN_DIR`). It is a core
  dependency, so if it is missing anyway the run goes on with a note and metrics.jsonl only.
- wandb: mode `WANDB_MODE` if set, else `online` when `WANDB_API_KEY` is set and `offline` otherwise (a
  `wandb login` credential alone does not switch it online: set WANDB_MODE=online). Offline runs land in
  `run_dir/wandb/offline-run-*`; upload them later with `wandb sync RUN_DIR/wandb/offline-run-*`. The wandb run
  id is the distill run id, so a resumed run continues the same wandb run (offline, each session gets its own
  folder carrying that id). Project: `WANDB_PROJECT`, else "distill".
- mlflow: tracking URI `MLFLOW_TRACKING_URI` if set, else a file store in `run_dir/mlruns` (view with
  `mlflow ui --backend-store-uri RUN_DIR/mlruns`; point MLFLOW_TRACKING_URI at one shared store or server to
  compare runs). mlflow 3 refuses file stores unless MLFLOW_ALLOW_FILE_STORE=true, which is set for the
  process when the URI is a file store: its suggested sqlite backend needs sqlalchemy, which mlflow-skinny
  lacks. The mlflow run id is kept in `run_dir/mlflow_run_id`, so `resume=True` appends to the same run.
  Experiment: `MLFLOW_EXPERIMENT_NAME`, else "distill".

Trackers are rank-0 business: under torchrun, call `open_trackers` on rank 0 only and log from there.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import os
import re
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import typer

from distill.atomic import write_bytes_atomic
from distill.errors import DistillError

TRACKERS = ("tensorboard", "wandb", "mlflow")
PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}  # tracker -> module; tensorboard is a core dependency


def _names(report_to: str) -> list[str]:
    return list(dict.fromkeys(n.strip() for n in report_to.split(",") if n.strip()))


def tracker_problems(report_to: str) -> list[str]:
    """Sentences for config validation: unknown names in `report_to`, `none` combined with a tracker, and a
    named tracker whose package is not installed. Empty when `report_to` is valid; imports no tracker."""
    names, problems = _names(report_to), []
    for name in names:
        if name not in (*TRACKERS, "none"):
            problems.append(f"--report-to has unknown tracker {name!r}: choose from {', '.join(TRACKERS)} or none")
    if "none" in names and len(names) > 1:
        problems.append(f"--report-to {report_to!r} combines none with trackers: give none alone or only trackers")
    for name in names:
        if name in PACKAGES and importlib.util.find_spec(PACKAGES[name]) is None:
            problems.append(f"--report-to {name} needs the {PACKAGES[name]} package: pip install 'distill[{name}]'")
    return problems


class _Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self, failed: bool = False) -> None: ...


class Trackers:
    """The trackers of one run: `log` sends a step's metrics to each, `close` finishes them all."""

    def __init__(self, trackers: list[_Tracker]) -> None:
        self._trackers = trackers

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log `metrics` (names like "train/loss") at `step`; non-numeric and non-finite values are skipped."""
        clean = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
        }
        if clean:
            for tracker in self._trackers:
                tracker.log(clean, step)

    def close(self, failed: bool = False) -> None:
        """Finish every tracker (flushes files, ends runs, as failed ones if `failed`); again: nothing."""
        while self._trackers:
            self._trackers.pop().close(failed)

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.close(failed=kind is not None)


class _TensorBoard:
    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run: Any) -> None:
        self.run = run

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class _MLflow:
    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def _first_line(e: Exception) -> str:
    """The first line of a tracker's error, to quote inside our one-sentence DistillError."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _tensorboard(run_dir: Path) -> _Tracker | None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        typer.echo("note: tensorboard is not installed; metrics go to metrics.jsonl only", err=True)
        return None
    return _TensorBoard(SummaryWriter(str(run_dir / "tensorboard")))


def _wandb(run_dir: Path, run_id: str, run_name: str, config: dict[str, Any]) -> _Tracker:
    import wandb

    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    try:
        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "distill",
            name=run_name,
            id=re.sub(r"[^A-Za-z0-9_.-]", "-", run_id),  # wandb refuses :;,#?/' in run ids
            dir=str(run_dir),
            config=config,
            resume="allow",
            mode=mode,
            # "create_new": with another wandb run open in the process, the default would hand back that run
            reinit="create_new",
            # console "off": distill's own progress bars and notes stay on the terminal, not redirected by wandb
            settings=wandb.Settings(console="off"),
        )
    except Exception as e:
        raise DistillError(
            f"--report-to wandb could not start a {mode} run ({_first_line(e)}): check WANDB_API_KEY and the network, "
            "or set WANDB_MODE=offline to log locally and `wandb sync` later"
        ) from e
    return _WandB(run)


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def _mlflow(run_dir: Path, run_name: str, config: dict[str, Any], resume: bool) -> _Tracker:
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

    uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").resolve().as_uri()
    if urlparse(uri).scheme in ("", "file"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # read by mlflow each time it opens the store
    id_file = run_dir / "mlflow_run_id"
    try:
        client = MlflowClient(tracking_uri=uri)
        if resume and id_file.exists():
            run = client.get_run(id_file.read_text().strip())
            client.update_run(run.info.run_id, status="RUNNING")
        else:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "distill"
            experiment = client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
            run = client.create_run(experiment_id, run_name=run_name)
            write_bytes_atomic(id_file, (run.info.run_id + "\n").encode())
        # mlflow refuses to change a logged param, so a resumed run keeps the params it started with
        params = [
            Param(k, v[:MAX_PARAM_VAL_LENGTH])
            for k, v in _flatten(config).items()
            if len(k) <= MAX_ENTITY_KEY_LENGTH and k not in run.data.params
        ]
        for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(run.info.run_id, params=params[i : i + MAX_PARAMS_TAGS_PER_BATCH])
    except Exception as e:
        raise DistillError(
            f"--report-to mlflow could not start a run at {uri} ({_first_line(e)}): check MLFLOW_TRACKING_URI, "
            f"or unset it to log under {run_dir / 'mlruns'}"
        ) from e
    return _MLflow(client, run.info.run_id)


def open_trackers(
    report_to: str, run_dir: Path, run_id: str, run_name: str, config: dict[str, Any], resume: bool
) -> Trackers:
    """Start the trackers named in `report_to` for the run in `run_dir`; call on torchrun rank 0 only.

    `run_id` must stay the same across resumes of one run (it becomes the wandb run id); `config` is the run's
    configuration (nested dicts allowed), logged as wandb config and flattened mlflow params. Raises
    DistillError naming the tracker and the fix when one cannot start; the ones already started are closed.
    """
    if problems := tracker_problems(report_to):
        raise DistillError("; ".join(problems))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trackers: list[_Tracker] = []
    try:
        for name in _names(report_to):
            if name == "tensorboard" and (tb := _tensorboard(run_dir)) is not None:
                trackers.append(tb)
            elif name == "wandb":
                trackers.append(_wandb(run_dir, run_id, run_name, config))
            elif name == "mlflow":
                trackers.append(_mlflow(run_dir, run_name, config, resume))
    except BaseException:
        Trackers(trackers).close()
        raise
    return Trackers(trackers)


# ---------------------------------------------------------------------------------------------
# the harness every training loop shares


class StepLog:
    """One run's steps as they are made: OUT/metrics.jsonl, the `--report-to` trackers, the registry's heartbeat
    and a progress bar (train, grpo and onpolicy log through it). Leaving it on an error ends the trackers' runs as
    failed, as the manifest ends; `enabled=False` (torchrun ranks other than 0) makes it silent.

        with StepLog(run, record, cfg.report_to, cfg.resume, "grpo", cfg.steps, step) as steps:
            steps.log(row, f"reward {row['reward_mean']:.3f}")
    """

    def __init__(
        self,
        run: Any,
        record: Any,
        report_to: str,
        resume: bool,
        name: str,
        total: int,
        initial: int,
        enabled: bool = True,
        tracked: tuple[str, ...] | None = None,
    ) -> None:
        """run: the RunDirectory; record: its RunRecord; name: the stage (the bar's label, the trackers' prefix);
        total / initial: the steps of the run and those done; tracked: the row keys the trackers get (None: all)."""
        self.run, self.record, self.name, self.enabled, self.tracked = run, record, name, enabled, tracked
        self._open = (report_to, resume, total, initial)
        self.trackers = Trackers([])

    def __enter__(self) -> StepLog:
        from tqdm import tqdm

        report_to, resume, total, initial = self._open
        if self.enabled:
            self.run.start_metrics(initial)  # a resumed run recomputes the rows past its checkpoint
            m = self.record.manifest
            self.trackers = open_trackers(report_to, self.run.path, m.id, m.name, m.config, resume)
        self.bar = tqdm(total=total, initial=initial, desc=self.name, disable=not self.enabled, dynamic_ncols=True)
        return self

    def log(self, row: dict[str, Any], status: str) -> None:
        """Record one step's metrics row (its "step" included) and show `status` beside the bar."""
        if not self.enabled:
            return
        self.run.log_metrics(row)
        keys = self.tracked if self.tracked is not None else [k for k in row if k != "step"]
        self.trackers.log({f"{self.name}/{k}": row[k] for k in keys if k in row}, row["step"])
        self.record.heartbeat(row)
        self.bar.set_postfix_str(status, refresh=False)
        self.bar.update(1)

    def warn(self, message: str) -> None:
        """A warning on its own line above the bar."""
        import sys

        if self.enabled:
            self.bar.write(message, file=sys.stderr)

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.bar.close()  # an error then starts on its own line, not after the bar
        self.trackers.close(failed=kind is not None)
