"""`distill grpo` end to end on the bundled arith teacher: real vLLM (in subprocesses), real verifiers.

- a 3-step run writes every metric, checkpoints and a model directory transformers loads;
- `--resume` from its step-2 checkpoint recomputes step 3 exactly (same prompts, same samples);
- bad input exits 1 with one sentence (a policy without weights too);
- prompts come from a file with named columns.

Rewards of unknown verdicts (NaN, not 0) are tested with the other shared rollout pieces in
tests/test_rollouts.py; the engines' weight sync (`load_weights`) in tests/engines/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.checkpoints import latest_checkpoint
from distill.presets import resolve_preset

TEACHER = Path(resolve_preset("arith-teacher", "teacher").hub_id)
RUN_ARGS = [
    "--policy",
    "arith-teacher",
    "--prompts",
    "arith:train",
    "--group-size",
    "4",
    "--batch-size",
    "8",
    "--micro-batch",
    "4",
    "--max-new-tokens",
    "48",
    "--temperature",
    "1.5",  # the teacher is near-perfect at 1: hotter sampling gives groups a reward spread
    "--lr",
    "1e-3",
    "--save-every",
    "1",
    "--seed",
    "5",
]
FIELDS = {
    "step",
    "reward_mean",
    "reward_std",
    "reward_math_mean",
    "reward_math_std",
    "reward_format_mean",
    "reward_format_std",
    "reward_math_unknown",
    "reward_format_unknown",
    "reward_skipped",
    "zero_spread_frac",
    "truncated_frac",
    "completion_len_mean",
    "kl",
    "clip_low",
    "clip_high",
    "ratio_mean",
    "ratio_min",
    "ratio_max",
    "logprob_mismatch_mean",
    "logprob_mismatch_max",
    "loss",
    "grad_norm",
    "seconds",
}


def distill(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-m", "distill", "grpo", *args], capture_output=True, text=True, env=env)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("grpo") / "run"
    proc = distill(*RUN_ARGS, "--steps", "3", "--out", str(out), "--report-to", "tensorboard,mlflow")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out / "model")
    (out.parent / "stderr.txt").write_text(proc.stderr)
    return out


@pytest.mark.vllm
def test_a_run_logs_every_metric_and_exports_a_model(run: Path) -> None:
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert FIELDS <= set(r), FIELDS - set(r)
        assert 0 <= r["reward_mean"] <= 2 and 0 <= r["zero_spread_frac"] <= 1 and 0 <= r["truncated_frac"] <= 1
        assert r["kl"] >= 0 and r["ratio_min"] <= r["ratio_mean"] <= r["ratio_max"]
        # μ = 1: π_θold is the policy itself, so the ratio is exactly 1 and nothing clips
        assert r["ratio_min"] == r["ratio_max"] == 1.0 and r["clip_low"] == r["clip_high"] == 0.0
        # the engine samples from the weights the trainer holds (synced after every update)
        assert r["logprob_mismatch_mean"] < 1e-3
    assert any(r["zero_spread_frac"] < 1 and r["grad_norm"] > 0 for r in rows), "no step had a learning signal"
    assert rows[-1]["kl"] > 0  # the policy moved away from the reference
    stderr = (run.parent / "stderr.txt").read_text()
    for r in rows:  # a step where every reward is the same says so, pointing at the metric
        warned = f"warning: step {r['step']}: every reward is" in stderr
        assert warned == (r["reward_std"] == 0), r
    assert "zero_spread_frac" in stderr or all(r["reward_std"] > 0 for r in rows)
    assert "RotaryEmbedding" not in stderr  # vLLM's per-sync log is silenced (it buried the progress bar)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run / "model")
    tok = AutoTokenizer.from_pretrained(run / "model")
    assert tok.decode(tok("12 + 7 = 19")["input_ids"]) == "12 + 7 = 19"
    start = AutoModelForCausalLM.from_pretrained(TEACHER)
    new, old = model.state_dict(), start.state_dict()
    moved = [not torch.equal(new[k], old[k]) for k in old]
    assert any(moved)
    assert json.loads((run / "model" / "distill_grpo.json").read_text())["steps"] == 3
    assert latest_checkpoint(run / "checkpoints").name == "step-00000003"


@pytest.mark.vllm
def test_a_run_records_its_manifest_and_reports_to_its_trackers(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 reads its file store only when allowed
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = metrics(run)
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["stage"] == "grpo" and manifest["status"] == "finished" and manifest["model"] == "arith-teacher"
    assert manifest["config"]["group_size"] == int(RUN_ARGS[RUN_ARGS.index("--group-size") + 1])
    assert manifest["metrics"]["steps"] == 3
    assert manifest["metrics"]["reward_mean"] == pytest.approx(sum(r["reward_mean"] for r in rows) / 3)
    client = MlflowClient((run / "mlruns").resolve().as_uri())
    history = client.get_metric_history((run / "mlflow_run_id").read_text().strip(), "grpo/reward_mean")
    assert sorted((h.step, h.value) for h in history) == [(r["step"], r["reward_mean"]) for r in rows]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("grpo/kl")] == [1, 2, 3]


@pytest.mark.vllm
def test_resume_recomputes_the_last_step_exactly(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    shutil.copytree(run, out)
    shutil.rmtree(out / "checkpoints" / "step-00000003")
    shutil.rmtree(out / "model")
    # only what names the run: every other setting (G 4, batch 8, 3 steps, ...) comes back from its run.json
    proc = distill("--policy", "arith-teacher", "--prompts", "arith:train", "--out", str(out), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "(step 2)" in proc.stderr
    before, after = metrics(run), metrics(out)
    assert [r["step"] for r in after] == [1, 2, 3]
    for key in ("reward_mean", "completion_len_mean", "zero_spread_frac", "loss", "grad_norm", "kl"):
        assert after[2][key] == pytest.approx(before[2][key], rel=1e-5, abs=1e-7), key
    first, resumed = (json.loads((d / "run.json").read_text())["config"] for d in (run, out))
    assert {k: v for k, v in resumed.items() if k not in ("out", "resume")} == {
        k: v for k, v in first.items() if k not in ("out", "resume")
    }
    # without --resume an existing run is refused
    again = distill(*RUN_ARGS, "--steps", "3", "--out", str(out))
    assert again.returncode == 1 and "pass --resume" in again.stderr


@pytest.mark.vllm
def test_resume_with_other_settings_is_refused_and_the_run_stays_finished(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "other"
    shutil.copytree(run, out)
    manifest = (out / "run.json").read_bytes()
    proc = distill(*RUN_ARGS, "--group-size", "8", "--batch-size", "16", "--steps", "5", "--out", str(out), "--resume")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "--group-size was 4, now 8; --batch-size was 8, now 16" in proc.stderr and "--steps" not in proc.stderr
    assert (out / "run.json").read_bytes() == manifest


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (["--group-size", "1", "--batch-size", "8"], "--group-size must be at least 2, got 1"),
        (["--group-size", "4", "--batch-size", "10"], "--batch-size 10 is not a multiple of --group-size 4"),
        (["--rewards", "math,vibes"], "unknown reward(s) vibes in --rewards"),
    ],
)
def test_bad_input_exits_1_with_a_sentence(args: list[str], sentence: str, tmp_path: Path) -> None:
    proc = distill("--policy", "arith-teacher", "--prompts", "arith:train", *args, "--out", str(tmp_path / "o"))
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: Invalid grpo settings:") and sentence in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_a_policy_without_weights_is_refused(tmp_path: Path) -> None:
    from distill.models.tiny import build_tiny_model

    config_only = build_tiny_model(tmp_path / "config-only", vocab_size=300)
    (config_only / "model.safetensors").unlink()  # a model directory with a config and a tokenizer, no weights
    proc = distill("--policy", str(config_only), "--prompts", "arith:train", "--out", str(tmp_path / "o"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "has no weights" in proc.stderr and "pass a `distill train` output directory" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_prompts_from_a_file_with_named_columns(tmp_path: Path) -> None:
    """grpo reads prompts with the same options as generate and eval: --prompt-field / --answer-field."""
    from distill.tasks import arith

    rows = [{"problem_text": p["prompt"], "gold": p["answer"], "prompt": "decoy"} for p in arith.load("train")[:4]]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["--policy", "arith-teacher", "--prompts", str(path), "--prompt-field", "problem_text"]
    args += ["--answer-field", "gold", "--backend", "hf", "--group-size", "2", "--batch-size", "4"]
    args += ["--micro-batch", "4", "--max-new-tokens", "96", "--steps", "1", "--out", str(tmp_path / "o")]
    proc = distill(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = metrics(tmp_path / "o")
    assert row["reward_math_unknown"] == 0  # every gold answer was found in the named column
    assert row["reward_math_mean"] > 0.5  # and the prompts were the problems, not the decoy column
