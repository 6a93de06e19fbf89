"""`distill onpolicy` end to end on the bundled arith models: real vLLM rollouts, a real teacher forward.

- a 3-step run (the bundled base student under the bundled teacher) logs every metric, writes the
  teacher's scores of its rollouts as a cache whose logprobs equal an independent teacher forward over
  the teacher's rendering of the prompt, records its manifest with the teacher self-check, and exports a
  model transformers loads;
- `--resume` from the step-2 checkpoint recomputes step 3 exactly and writes no score twice;
- the teacher as its own student sees a reverse KL of exactly 0, a zero gradient, and unchanged weights;
- `--loss topk` with verifier rewards mixed in trains and logs the KD term and the rewards;
- a tokenizer or template mismatch, and bad settings, exit 1 with one sentence before anything is written.

The advantage and the clipped objective are checked against hand-computed values in tests/losses/test_onpolicy.py.
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
STUDENT = Path(resolve_preset("arith-student", "teacher").hub_id)
SMALL = [
    "--prompts",
    "arith:train",
    "--group-size",
    "2",
    "--batch-size",
    "8",
    "--micro-batch",
    "4",
    "--max-new-tokens",
    "48",
    "--lr",
    "1e-3",
    "--warmup-steps",
    "0",
    "--save-every",
    "1",
    "--seed",
    "3",
    # the per-token reverse KL at μ = 1 under a constant rate: the path these tests take apart (the defaults,
    # top-k at μ = 4 under a cosine, run in test_demo and below)
    "--loss",
    "reverse",
    "--iterations",
    "1",
    "--lr-schedule",
    "constant",
]
RUN_ARGS = ["--student", "arith-student", "--teacher", "arith-teacher", *SMALL]
FIELDS = {
    "step",
    "reverse_kl",
    "reverse_kl_first_quarter",
    "reverse_kl_last_quarter",
    "completion_len_mean",
    "truncated_frac",
    "rollout_tokens",
    "rollout_s",
    "teacher_s",
    "update_s",
    "sync_s",
    "seconds",
    "logprob_mismatch_mean",
    "logprob_mismatch_max",
    "loss",
    "grad_norm",
    "ratio_mean",
    "clip_low",
    "clip_high",
}


def distill(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True, text=True, env=env)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).state_dict()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onpolicy") / "run"
    proc = distill("onpolicy", *RUN_ARGS, "--steps", "3", "--out", str(out))
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
        # the base student is far from the teacher: a clearly positive reverse KL, and a gradient
        assert r["reverse_kl"] > 0.1 and r["grad_norm"] > 0
        # μ = 1: the ratio is exactly 1 and nothing clips; the engine samples from the trainer's weights
        assert r["ratio_mean"] == 1.0 and r["clip_low"] == r["clip_high"] == 0.0
        assert r["logprob_mismatch_mean"] < 0.05
    lengths = [r["completion_len_mean"] * 8 for r in rows]
    assert [r["rollout_tokens"] for r in rows] == pytest.approx([sum(lengths[: i + 1]) for i in range(3)])
    assert "reward_mean" not in rows[0]  # rewards are off at --reward-weight 0
    moved = weights(run / "model")
    start = weights(STUDENT)
    assert any(not torch.equal(moved[k], start[k]) for k in start)
    assert json.loads((run / "model" / "distill_onpolicy.json").read_text())["steps"] == 3
    # the model remembers the preset it came from: a later command gets its defaults (512-token rows)
    assert resolve_preset(str(run / "model"), "student").train.max_length == 512
    assert latest_checkpoint(run / "checkpoints").name == "step-00000003"

    stderr = (run.parent / "stderr.txt").read_text()
    assert "teacher self-check: 4 greedy completions of its own" in stderr
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["stage"] == "onpolicy" and manifest["status"] == "finished"
    check = manifest["summary"]["teacher_self_check"]
    assert check["completions"] == 4 and check["max_gap"] < 1e-4 and -1.0 < check["mean_logprob"] < 0
    assert manifest["metrics"]["reverse_kl"] == pytest.approx(sum(r["reverse_kl"] for r in rows) / 3)


@pytest.mark.vllm
def test_the_teachers_scores_are_a_cache_equal_to_an_independent_teacher_forward(run: Path) -> None:
    from transformers import AutoModelForCausalLM

    from distill.cache import TeacherCache

    info = json.loads(distill("cache", "info", str(run / "cache"), "--json").stdout)
    assert info["complete"] and info["records"] == 3 * 8 and info["top_k"] == 20
    cache = TeacherCache(run / "cache")
    teacher = AutoModelForCausalLM.from_pretrained(TEACHER).eval()
    for rec in cache.records([0, 11, 23]):
        assert rec.meta["step"] in (1, 2, 3) and rec.meta["answer"] is not None
        ids = torch.tensor([[*rec.prompt_ids.tolist(), *rec.completion_ids.tolist()]])
        p, t = len(rec.prompt_ids), len(rec.completion_ids)
        with torch.no_grad():
            logp = torch.log_softmax(teacher(ids).logits[0, p - 1 : p + t - 1].float(), -1)  # (T, V)
        want = logp.gather(-1, torch.as_tensor(rec.completion_ids, dtype=torch.long)[:, None])[:, 0]
        assert torch.allclose(torch.as_tensor(rec.sampled_logprobs), want, atol=1e-5)  # fp32 scores, stored exactly
        assert torch.equal(torch.as_tensor(rec.topk_ids[:, 0], dtype=torch.long), logp.argmax(-1))


@pytest.mark.vllm
def test_resume_recomputes_the_last_step_exactly(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    shutil.copytree(run, out)
    shutil.rmtree(out / "checkpoints" / "step-00000003")
    shutil.rmtree(out / "model")
    # only what names the run: every other setting (G 2, batch 8, lr, 3 steps, ...) comes back from its run.json
    names = ["--student", "arith-student", "--teacher", "arith-teacher", "--prompts", "arith:train"]
    proc = distill("onpolicy", *names, "--out", str(out), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(step 2)" in proc.stderr and "teacher self-check" not in proc.stderr
    first, resumed = (json.loads((d / "run.json").read_text())["config"] for d in (run, out))
    assert {k: v for k, v in resumed.items() if k not in ("out", "resume")} == {
        k: v for k, v in first.items() if k not in ("out", "resume")
    }
    before, after = metrics(run), metrics(out)
    assert [r["step"] for r in after] == [1, 2, 3]
    for key in ("reverse_kl", "reverse_kl_last_quarter", "completion_len_mean", "loss", "grad_norm", "rollout_tokens"):
        assert after[2][key] == pytest.approx(before[2][key], rel=1e-5, abs=1e-7), key
    assert torch.equal(*(torch.cat([w.flatten() for w in weights(d / "model").values()]) for d in (run, out)))
    info = json.loads(distill("cache", "info", str(out / "cache"), "--json").stdout)
    assert info["complete"] and info["records"] == 3 * 8  # the redone step's scores are not written twice


@pytest.mark.vllm
def test_resume_with_other_settings_is_refused_and_the_run_stays_finished(run: Path, tmp_path: Path) -> None:
    """Not the scores cache's fault, and the finished run is not marked failed: the settings are named at once."""
    out = tmp_path / "other"
    shutil.copytree(run, out)
    manifest = (out / "run.json").read_bytes()
    proc = distill("onpolicy", *RUN_ARGS, "--loss", "topk", "--steps", "4", "--out", str(out), "--resume")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "--loss was reverse, now topk" in proc.stderr and "cache" not in proc.stderr
    assert (out / "run.json").read_bytes() == manifest


@pytest.mark.vllm
@pytest.mark.parametrize(
    ("temperature", "loss"),
    [
        ("1.0", ["--loss", "reverse"]),
        ("0.6", ["--loss", "reverse"]),
        ("1.0", ["--loss", "reverse", "--kl-discount", "1"]),
        ("1.0", ["--loss", "full", "--kd", "forward"]),
        ("0.6", ["--loss", "full", "--kd", "reverse"]),
        ("1.0", ["--loss", "full", "--kd", "jsd"]),
    ],
)
def test_the_teacher_as_its_own_student_sees_zero_reverse_kl_and_gets_no_update(
    temperature: str, loss: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "self"
    args = ["--student", "arith-teacher", "--teacher", "arith-teacher", *SMALL, "--lr", "1e-2", "--self-check", "0"]
    args += ["--temperature", temperature, *loss]  # both sides are scored at τ: still bit-identical
    proc = distill("onpolicy", *args, "--steps", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in metrics(out):
        # the default teacher path is the trainer's own forward: bit-identical logprobs, advantages exactly 0; the
        # full-vocabulary divergence is exactly 0 too, and its gradient (written out) exactly 0
        assert r["reverse_kl"] == 0.0 and r["reverse_kl_last_quarter"] == 0.0
        assert r["loss"] == 0.0 and r["grad_norm"] == 0.0 and r.get("kd", 0.0) == 0.0
    after, before = weights(out / "model"), weights(TEACHER)
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.vllm
@pytest.mark.parametrize(
    "loss",
    [["--loss", "full", "--kd", "reverse", "--lr-schedule", "cosine"], ["--loss", "reverse", "--kl-discount", "0.9"]],
)
def test_full_vocabulary_and_discounted_losses_train(loss: list[str], tmp_path: Path) -> None:
    out = tmp_path / "learns"
    proc = distill("onpolicy", *RUN_ARGS, *loss, "--self-check", "0", "--steps", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = metrics(out)
    for r in rows:
        assert r["grad_norm"] > 0 and r["reverse_kl"] > 0.1
        if "full" in loss:  # the exact divergence is at least the top-k + tail one (a coarser partition)
            assert r["kd"] > 0.1
    # --lr 1e-3, no warm-up: constant, or a cosine that is halfway down at the second of two steps
    assert [r["lr"] for r in rows] == ([1e-3, 5e-4] if "cosine" in loss else [1e-3, 1e-3])
    assert json.loads((out / "run.json").read_text())["config"]["loss"] == loss[1]
    moved, start = weights(out / "model"), weights(STUDENT)
    assert any(not torch.equal(moved[k], start[k]) for k in start)


@pytest.mark.vllm
def test_topk_loss_with_rewards_mixed_in(tmp_path: Path) -> None:
    out = tmp_path / "topk"
    extra = ["--loss", "topk", "--kd", "forward", "--reward-weight", "0.5", "--self-check", "0"]
    proc = distill("onpolicy", *RUN_ARGS, *extra, "--steps", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in metrics(out):
        assert r["kd"] > 0.1 and r["grad_norm"] > 0
        assert {"reward_mean", "reward_math_mean", "reward_format_mean", "reward_skipped"} <= set(r)
        assert 0 <= r["reward_math_mean"] <= 1
    assert any(
        not torch.equal(a, b) for a, b in zip(weights(out / "model").values(), weights(STUDENT).values(), strict=True)
    )


@pytest.mark.vllm
def test_cross_tokenizer_with_the_teachers_tokenizer_is_the_same_run(run: Path, tmp_path: Path) -> None:
    """The identity invariant: with one tokenizer --cross-tokenizer aligns every token one-to-one and carries the
    teacher's logprobs over unchanged, so the run is the one without the flag, bit for bit."""
    out = tmp_path / "xt"
    proc = distill("onpolicy", *RUN_ARGS, "--cross-tokenizer", "--steps", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for a, b in zip(metrics(out), metrics(run)[:2], strict=True):
        assert a["xt_one_to_one"] == 1.0 and a["xt_merged"] == 0.0
        for key in ("reverse_kl", "reverse_kl_last_quarter", "completion_len_mean", "loss", "grad_norm"):
            assert a[key] == b[key], key


@pytest.mark.vllm
def test_a_student_of_another_tokenizer_learns_on_policy(tmp_path: Path) -> None:
    """arith-student-bpe (Llama, its own BPE) under the bundled teacher: the teacher scores its re-tokenised text;
    merged spans carry the teacher's log-probability of the span, so per completion the advantages sum to the
    exact log-ratio of the text."""
    from distill.cache import TeacherCache

    out = tmp_path / "xt-bpe"
    args = ["--student", "arith-student-bpe", "--teacher", "arith-teacher", *SMALL, "--cross-tokenizer"]
    proc = distill("onpolicy", *args, "--steps", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in metrics(out):
        assert 0.2 < r["xt_one_to_one"] < 0.95 and r["xt_merged"] > 0.05
        assert r["reverse_kl"] > 0.1 and r["grad_norm"] > 0
    # the scores cache holds the teacher's own tokens of the student's text
    cache = TeacherCache(out / "cache")
    from transformers import AutoTokenizer

    teacher_tok, bpe = AutoTokenizer.from_pretrained(TEACHER), AutoTokenizer.from_pretrained(out / "model")
    rec = cache[0]
    text = teacher_tok.decode(rec.completion_ids.tolist(), skip_special_tokens=False)
    assert rec.completion_ids.tolist() == teacher_tok(text, add_special_tokens=False)["input_ids"]
    assert bpe.tokenize(" 17") == ["Ġ17"] and teacher_tok.tokenize(" 17") == ["Ġ", "1", "7"]


@pytest.mark.slow
def test_cross_tokenizer_steps_over_samples_that_stop_at_once_or_break_a_character(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """arith-student-bpe (byte-level BPE) under the bundled teacher, hf engines: a step whose samples include one that
    is only the stop token, one cut inside an emoji (as --max-new-tokens cuts) and one with a stray byte trains; the
    last two are cut back to their last whole character (the teacher scores their text) and counted in `xt_cut`."""
    import dataclasses

    import numpy as np

    from distill.configs.onpolicy import OnPolicyConfig
    from distill.onpolicy import OnPolicyRecipe
    from distill.rollouts import Rollout

    cfg = OnPolicyConfig(student="arith-student-bpe", teacher="arith-teacher", prompts="arith:train", backend="hf",
                         cross_tokenizer=True, group_size=2, batch_size=4, micro_batch=4, max_new_tokens=16, steps=1,
                         out=str(tmp_path / "run"))  # fmt: skip
    recipe = OnPolicyRecipe(cfg)
    recipe.setup()
    sampled, tok, stop = recipe.rollout(), recipe.tokenizer, recipe.stops[0]
    emoji = tok("so we add 17 😀", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(emoji[-4:]) == ["ð", "Ł", "ĺ", "Ģ"]
    stray = emoji[-1]  # byte 0x80 alone: a continuation byte with nothing to continue
    written = [
        [stop],
        emoji[:-2],
        emoji[:3] + [stray] + emoji[3:] + [stop],
        list(sampled.completions[3].completion_ids),
    ]

    def sample(c, ids):  # the engine's completion with other tokens: its per-token arrays of their length
        n = len(ids)
        return dataclasses.replace(
            c, completion_ids=np.asarray(ids, np.int32), sampled_logprobs=np.full(n, -1.0, np.float32),
            topk_ids=np.zeros((n, 0), np.int32), topk_logprobs=np.zeros((n, 0), np.float32),
        )  # fmt: skip

    completions = [sample(c, ids) for c, ids in zip(sampled.completions, written, strict=True)]
    rollout = Rollout(completions, [tok.decode(ids) for ids in written], sampled.prompts)
    cut, count = recipe.grader.whole_characters(rollout)
    assert count == 2 and [len(c.completion_ids) for c in cut.completions[:3]] == [1, len(emoji) - 4, 3]
    assert cut.completions[1].finish_reason == "length" and cut.texts[1].endswith("so we add 17 ")
    monkeypatch.setattr(recipe, "rollout", lambda: rollout)
    with recipe._open_cache() as recipe.cache:
        row = recipe.step_once()
    assert row["xt_cut"] == 2 and np.isfinite(row["loss"]) and row["grad_norm"] > 0
    assert 0 < row["xt_one_to_one"] < 1


def test_a_student_of_another_tokenizer_is_refused_before_anything_runs(tmp_path: Path) -> None:
    from distill.models.tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "other", vocab_size=300)
    proc = distill(
        "onpolicy", "--student", str(other), "--teacher", "arith-teacher", *SMALL, "--out", str(tmp_path / "o")
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "have different vocabularies" in proc.stderr and "cross-tokenizer" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_a_template_that_opens_the_completion_differently_is_refused(tmp_path: Path) -> None:
    text = (Path(resolve_preset("arith-teacher", "teacher").hub_id).parent / "arith-teacher.yaml").read_text()
    preset = tmp_path / "no-think.yaml"
    preset.write_text(
        text.replace("name: arith-teacher", "name: no-think")
        .replace("hub_id: arith-teacher", f"hub_id: {TEACHER}")
        .replace('think_prefix: "<think>\\n"', 'think_prefix: ""')
    )
    proc = distill(
        "onpolicy", "--student", str(preset), "--teacher", "arith-teacher", *SMALL, "--out", str(tmp_path / "o")
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "opens its completion with ''" in proc.stderr and "same think_prefix" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_the_loss_is_topk_unless_a_setting_is_given_that_only_reverse_takes() -> None:
    from distill.configs.onpolicy import OnPolicyConfig

    base = {"student": "arith-student", "teacher": "arith-teacher", "prompts": "arith:train"}
    assert OnPolicyConfig(**base).loss == "topk"
    for only_reverse in ({"cross_tokenizer": True}, {"kl_discount": 0.5}, {"temperature": 0.6}):
        assert OnPolicyConfig(**base, **only_reverse).loss == "reverse", only_reverse
    assert OnPolicyConfig(**base, loss="full").loss == "full"


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (["--group-size", "1", "--reward-weight", "1"], "--group-size must be ≥ 1 (≥ 2 with --reward-weight"),
        (["--group-size", "4", "--batch-size", "10"], "--batch-size 10 is not a multiple of --group-size 4"),
        (["--beta", "1.5"], "--beta must be in (0, 1), got 1.5"),
        (["--loss", "topk", "--temperature", "0.6"], "--loss topk takes --temperature 1 only"),
        (["--teacher-backend", "vllm", "--temperature", "0.6"], "needs --teacher-backend hf"),
        (["--cross-tokenizer", "--loss", "topk"], "--cross-tokenizer takes --loss reverse"),
        (["--loss", "full", "--teacher-backend", "vllm"], "--loss full needs --teacher-backend hf"),
        (["--kl-discount", "1.5"], "--kl-discount must be in [0, 1], got 1.5"),
        (["--loss", "topk", "--kl-discount", "0.5"], "--kl-discount applies to --loss reverse"),
        (["--lr-schedule", "constant", "--decay-steps", "100"], "--decay-steps applies to --lr-schedule cosine"),
    ],
)
def test_bad_input_exits_1_with_a_sentence(args: list[str], sentence: str, tmp_path: Path) -> None:
    base = ["--student", "arith-student", "--teacher", "arith-teacher", "--prompts", "arith:train"]
    proc = distill("onpolicy", *base, *args, "--out", str(tmp_path / "o"))
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: Invalid onpolicy settings:") and sentence in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.vllm
def test_other_engines_transformers_rollouts_and_a_vllm_teacher(tmp_path: Path) -> None:
    out = tmp_path / "engines"
    extra = ["--backend", "hf", "--teacher-backend", "vllm", "--self-check", "2"]
    proc = distill("onpolicy", *RUN_ARGS, *extra, "--steps", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "engines hf (student) / vllm (teacher)" in proc.stderr
    # the vLLM teacher scores its own greedy text exactly as it generated it
    assert json.loads((out / "run.json").read_text())["summary"]["teacher_self_check"]["max_gap"] < 1e-4
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["reverse_kl"] > 0.1 and r["grad_norm"] > 0 and r["logprob_mismatch_mean"] < 0.05
    info = json.loads(distill("cache", "info", str(out / "cache"), "--json").stdout)
    assert info["complete"] and info["records"] == 2 * 8


def test_a_student_that_stops_on_a_token_the_teacher_does_not_is_refused() -> None:
    from distill.teacher_scores import template_problems

    teacher = resolve_preset("arith-teacher", "teacher")
    assert template_problems(teacher, teacher, [2], [2, 7]) == []
    (problem,) = template_problems(teacher, teacher, [2, 9], [2, 7])
    assert "token(s) [9] that do not end the teacher's turn (its stop tokens: [2, 7])" in problem


def test_a_student_without_weights_is_refused(tmp_path: Path) -> None:
    from distill.models.tiny import build_tiny_model

    config_only = build_tiny_model(tmp_path / "config-only", vocab_size=300)
    (config_only / "model.safetensors").unlink()
    proc = distill(
        "onpolicy", "--student", str(config_only), "--teacher", "arith-teacher", *SMALL, "--out", str(tmp_path / "o")
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "has no weights" in proc.stderr and "output directory (OUT/model) as --student" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_size_dependent_settings_default_to_the_students_preset(tmp_path: Path) -> None:
    """--lr, --batch-size and --warm-up-steps left unset come from the student preset's `onpolicy` section (a model
    directory distill wrote has its preset's); given ones are kept, and a bad preset value is a sentence."""
    from distill.configs import OnPolicyConfig
    from distill.errors import DistillError
    from distill.onpolicy import OnPolicyRecipe

    preset = resolve_preset("arith-student", "student").onpolicy
    base = {"student": "arith-student", "teacher": "arith-teacher", "prompts": "arith:train", "out": tmp_path / "o"}
    cfg = OnPolicyRecipe(OnPolicyConfig(**base)).cfg
    assert (cfg.lr, cfg.batch_size, cfg.warmup_steps) == (preset.lr, preset.batch_size, preset.warmup_steps)
    given = OnPolicyRecipe(OnPolicyConfig(**base, lr=0.0, batch_size=12, warmup_steps=3)).cfg
    assert (given.lr, given.batch_size, given.warmup_steps) == (0.0, 12, 3)
    generic = OnPolicyRecipe(OnPolicyConfig(**{**base, "student": "qwen-1.5b"})).cfg
    assert generic.lr == 1e-6  # a 1.5B student: the generic defaults
    with pytest.raises(DistillError, match=r"--batch-size \d+ is not a multiple of --group-size 7"):
        OnPolicyRecipe(OnPolicyConfig(**base, group_size=7))
    assert not (tmp_path / "o").exists()
