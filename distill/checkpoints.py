"""Run directories shared by the training stages (`distill train`, `distill grpo`).

A run directory holds `checkpoints/step-NNNNNNNN/state.pt` (each written under a temp name, fsynced,
then renamed, so a kill never leaves a half checkpoint that `--resume` would pick), `metrics.jsonl`
(one JSON row per step; on resume rows past the checkpoint are dropped and recomputed), and
`model/`, the exported Hugging Face directory (weights, tokenizer, generation config and a JSON
record of the run) that transformers and vLLM load, also written under a temp name and renamed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.atomic import TMP_SUFFIX, write_json_atomic

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU) generator states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    """Undo `rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def write_checkpoint(root: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Save `state` as root/step-NNNNNNNN/state.pt atomically; keep the last `keep` checkpoints."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / (final.name + TMP_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(state, tmp / "state.pt")
    with open(tmp / "state.pt", "rb") as f:
        os.fsync(f.fileno())
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


def export_model(model: Any, tokenizer: Any, final: Path, record_name: str, record: dict[str, Any]) -> Path:
    """Write `model` + `tokenizer` + sampling defaults + `record_name` (JSON) as a HF directory at `final`."""
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
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict with paths as strings."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}
