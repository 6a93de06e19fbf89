"""Run directories shared by the training stages (`distill train`, `distill grpo`).

A run directory holds `run.json` (the run's manifest: distill.runs), `checkpoints/step-NNNNNNNN/state.pt`
(each written under a temp name, fsynced, then renamed, so a kill never leaves a half checkpoint that
`--resume` would pick), `metrics.jsonl` (one JSON row per step; on resume rows past the checkpoint are
dropped and recomputed), and `model/`, the exported Hugging Face directory (weights, tokenizer,
generation config and a JSON record of the run) that transformers and vLLM load, also written under
a temp name and renamed.

`RunDirectory` is the lifecycle both recipes share, so its rules and sentences exist once: refuse
to start over an existing run or to resume one without a checkpoint (checked before anything heavy
loads), save and restore the step and RNG with every checkpoint, stop on a non-finite loss naming
the step, and export the model with a record whose paths mean the same on any machine (absolute
paths become relative to the working directory, or just their names: `portable_paths`).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.atomic import TMP_SUFFIX, write_json_atomic
from distill.errors import DistillError
from distill.presets import write_preset_record
from distill.runs import MANIFEST, RunRecord

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
MODEL = "model"


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU) generator states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    """Undo `rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())  # a checkpoint loaded with map_location="cuda" moved it


class _WholeWrites:
    """A file whose `write` writes all it is given or keeps the OSError it met in `error`: torch.save swallows it and
    raises a bare RuntimeError ("unexpected pos"), which would hide why (a full disk, a file-size limit) and where."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        view, done = memoryview(data).cast("B"), 0
        try:
            while done < len(view):
                done += os.write(self.file.fileno(), view[done:])  # the next call after a short one raises
        except OSError as e:
            self.error = e
            raise
        return done

    def flush(self) -> None:
        pass


def write_checkpoint(root: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Save `state` as root/step-NNNNNNNN/state.pt atomically; keep the last `keep` checkpoints."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / (final.name + TMP_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with open(tmp / "state.pt", "wb") as f:
        out = _WholeWrites(f)
        try:
            torch.save(state, out)
            os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:  # a full disk or a file-size limit: earlier checkpoints stay, no temp
            shutil.rmtree(tmp, ignore_errors=True)
            error = out.error or e
            if not isinstance(error, OSError):
                raise
            raise type(error)(error.errno, error.strerror, str(tmp / "state.pt")) from None
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(p for p in root.glob("step-*") if not p.name.endswith(TMP_SUFFIX))[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint directory under `root`, or None."""
    done = sorted(p for p in root.glob("step-*") if not p.name.endswith(TMP_SUFFIX)) if root.exists() else []
    return done[-1] if done else None


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop metric rows past `step` (they will be recomputed)."""
    if not path.exists():
        return
    rows = [r for r in path.read_text().splitlines() if r.strip() and json.loads(r)["step"] <= step]
    path.write_text("".join(r + "\n" for r in rows))


def export_model(
    model: Any, tokenizer: Any, final: Path, record_name: str, record: dict[str, Any], preset: Any = None
) -> Path:
    """Write `model` + `tokenizer` + sampling defaults + `record_name` (JSON) as a HF directory at `final`; with
    `preset` (the one the model was trained from), the directory remembers it (presets.PRESET_RECORD), so that a
    later command starting from it keeps that preset's size-dependent defaults."""
    from transformers import GenerationConfig

    tmp = final.with_name(final.name + TMP_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=0.6,
        top_p=0.95,
    ).save_pretrained(tmp)
    write_json_atomic(tmp / record_name, record)
    write_preset_record(tmp, preset)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def portable_paths(obj: Any, cwd: Path | None = None) -> Any:
    """`obj` (a run record: dicts, lists, strings, paths) with every absolute path made machine-independent.

    An absolute path under the working directory `cwd` (default: the current one) becomes relative
    to it, as the user would type it from there (`runs/arith-teacher/init`); any other absolute path
    becomes its last component (a cache directory's name is its key). Relative paths, preset names
    and hub ids are kept as given. `Path` values come back as strings, so the result is JSON.
    """
    if isinstance(obj, dict):
        return {k: portable_paths(v, cwd) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable_paths(v, cwd) for v in obj]
    if not isinstance(obj, (str, Path)) or not os.path.isabs(obj):
        return str(obj) if isinstance(obj, Path) else obj
    here = (cwd or Path.cwd()).resolve()
    path = Path(os.path.normpath(obj))
    return str(path.relative_to(here)) if path.is_relative_to(here) and path != here else path.name


class RunDirectory:
    """A training run's directory: `checkpoints/`, `metrics.jsonl` and the exported `model/` under `path`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / CHECKPOINTS
        self.metrics = self.path / METRICS
        self.model = self.path / MODEL

    def check_start(self, resume: bool) -> None:
        """Refuse to start over an existing run, or to resume a run without a checkpoint.

        Called before any model loads, so a wrong --out or --resume costs nothing.
        """
        if resume and latest_checkpoint(self.checkpoints) is None:
            raise self._no_checkpoint()
        if not resume and self.checkpoints.exists():
            raise DistillError(
                f"{self.path} already holds a run; pass --resume to continue it or choose another --out."
            )

    def record(self, stage: str, cfg: Any, enabled: bool = True) -> RunRecord:
        """The run's manifest, OUT/run.json, kept in the registry; enter it (after `check_start`) to start."""
        return RunRecord(stage, self.path / MANIFEST, cfg, resume=cfg.resume, enabled=enabled)

    def save_checkpoint(self, step: int, state: dict[str, Any]) -> Path:
        """Write `state` plus the step and the RNG states as checkpoint `step`; keeps the last two."""
        return write_checkpoint(self.checkpoints, step, {**state, "step": step, "rng": rng_state()})

    def load_checkpoint(self, map_location: Any = None) -> tuple[Path, dict[str, Any]]:
        """The newest checkpoint's directory and state (its "step" included), with the RNG states restored."""
        last = latest_checkpoint(self.checkpoints)
        if last is None:
            raise self._no_checkpoint()
        state = torch.load(last / "state.pt", weights_only=False, map_location=map_location)
        restore_rng(state["rng"])
        return last, state

    def save_policy(self, step: int, policy: Any, optimizer: Any) -> Path:
        """Checkpoint a rollout stage (grpo, onpolicy): its policy's and optimiser's state, with the RNG states."""
        return self.save_checkpoint(step, {"model": policy.state_dict(), "optimizer": optimizer.state_dict()})

    def restore_policy(self, policy: Any, optimizer: Any, map_location: Any = None) -> tuple[Path, int]:
        """Load the newest checkpoint into `policy` and `optimizer` (and the RNG states); its directory and step."""
        last, state = self.load_checkpoint(map_location=map_location)
        policy.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return last, state["step"]

    def _no_checkpoint(self) -> DistillError:
        return DistillError(f"--resume: {self.path} has no checkpoint to resume from; run without --resume.")

    def start_metrics(self, step: int) -> None:
        """Create the run directory and drop metric rows past `step` (a resumed run recomputes them)."""
        self.path.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.metrics, step)

    def log_metrics(self, row: dict[str, Any]) -> None:
        """Append one step's metrics as a JSON line."""
        with open(self.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")

    def metric_rows(self) -> list[dict[str, Any]]:
        """Every step's metrics so far (a resumed run's included)."""
        if not self.metrics.exists():
            return []
        return [json.loads(r) for r in self.metrics.read_text().splitlines() if r.strip()]

    def final_metrics(self, keys: tuple[str, ...], last: int = 50) -> dict[str, float]:
        """Each of `keys` averaged over the last `last` steps (one step's value is noise), plus `steps`."""
        rows = self.metric_rows()
        tail = rows[-last:]
        out: dict[str, float] = {"steps": rows[-1]["step"] if rows else 0}
        for key in keys:
            values = [r[key] for r in tail if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if values:
                out[key] = sum(values) / len(values)
        return out

    def stop_if_not_finite(self, loss: float, step: int) -> None:
        """Stop the run with a sentence when the loss of `step` is NaN or infinite; the checkpoints stay."""
        if not math.isfinite(loss):
            last = latest_checkpoint(self.checkpoints)
            where = (
                f"The last good checkpoint is kept ({last}); lower --lr or check the data, then --resume."
                if last is not None
                else "No checkpoint was saved before it; lower --lr or check the data, and start again."
            )
            raise DistillError(f"The loss became {loss} at step {step}; training stopped. {where}")

    def export(self, model: Any, tokenizer: Any, record_name: str, record: dict[str, Any], preset: Any = None) -> Path:
        """Write the Hugging Face directory `model/` with the run's record (`portable_paths` applied) and the preset
        it was trained from (`export_model`)."""
        return export_model(model, tokenizer, self.model, record_name, portable_paths(record), preset)
