"""`distill train` end to end on tiny Qwen2 models: export, resume after kill -9, 2 processes on gloo, bad input."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.cache import open_cache, write_view
from distill.errors import DistillError
from distill.generate import GenerateConfig, run_generate
from distill.models.tiny import build_tiny_model, default_corpus
from distill.train import TrainConfig, run_train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smaller random Qwen2 with the teacher's tokenizer (same corpus → same BPE)."""
    return build_tiny_model(
        tmp_path_factory.mktemp("student"),
        hidden_size=64,
        num_heads=2,
        num_kv_heads=1,
        num_layers=1,
        seed=1,
        corpus=default_corpus(0),
    )


@pytest.fixture(scope="module")
def teacher_cache(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [json.loads(line) for line in (DATA / "gsm8k_test.jsonl").read_text().splitlines()[:8]]
    prompts = tmp_path_factory.mktemp("p") / "gsm8k8.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_generate(
        GenerateConfig(
            teacher=str(tiny_model),
            prompts=str(prompts),
            mapping="gsm8k",
            samples_per_prompt=2,
            max_new_tokens=24,
            top_k=8,
            temperature=1.0,
            backend="hf",
            dtype="float32",
            out=tmp_path_factory.mktemp("c") / "cache",
        )
    )


def config(student: Path, cache: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        student=str(student),
        cache=str(cache),
        out=out,
        max_steps=6,
        batch_rows=4,
        micro_rows=2,
        max_length=512,
        lr=3e-3,
        warmup_ratio=0.0,
        save_every=2,
        seed=3,
    )
    return TrainConfig(**{**base, **kw})


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def cli(*args: str, env_extra: dict | None = None) -> list[str]:
    return [sys.executable, "-m", "distill", "train", *args]


def train_args(student: Path, cache: Path, out: Path, steps: int = 6) -> list[str]:
    return [
        "--student",
        str(student),
        "--cache",
        str(cache),
        "--out",
        str(out),
        "--max-steps",
        str(steps),
        "--batch-rows",
        "4",
        "--micro-rows",
        "2",
        "--max-length",
        "512",
        "--lr",
        "3e-3",
        "--warmup-ratio",
        "0",
        "--save-every",
        "2",
        "--seed",
        "3",
    ]


def test_kd_training_lowers_the_loss_and_exports_a_loadable_model(
    student: Path, teacher_cache: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = run_train(config(student, teacher_cache, tmp_path / "run", max_steps=12))
    rows = metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert all(np.isfinite(r["loss"]) and r["kd"] > 0 for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["kd"] < rows[0]["kd"]
    assert rows[0]["loss"] == pytest.approx(0.5 * rows[0]["ce"] + 0.5 * rows[0]["kd"], rel=1e-5)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("What is 2 + 2?", return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=5, do_sample=False).shape[1] == ids.shape[1] + 5
    meta = json.loads((out / "distill_train.json").read_text())
    assert meta["source"]["cache_key"] == open_cache(teacher_cache).key and meta["config"]["alpha"] == 0.5
    # the record travels with the model: no absolute path of this machine (outside the working directory: names)
    assert '"/' not in (out / "distill_train.json").read_text() and meta["config"]["out"] == "run"
    assert (tmp_path / "run" / "tensorboard").is_dir()
    # the run recorded itself: resolved settings, the cache, final metrics over the last steps
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["stage"] == "train" and run["status"] == "finished" and run["cache_key"] == open_cache(teacher_cache).key
    assert run["config"]["lr"] == 3e-3 and run["config"]["init"] is not None and run["summary"]["top_k"] > 0
    assert run["metrics"]["steps"] == 12 and run["metrics"]["tokens"] == sum(r["tokens"] for r in rows)
    assert run["metrics"]["kd"] == pytest.approx(np.mean([r["kd"] for r in rows]))  # all 12 are the last 50


@pytest.mark.vllm
def test_exported_student_runs_in_vllm(student: Path, teacher_cache: Path, tmp_path: Path) -> None:
    out = run_train(config(student, teacher_cache, tmp_path / "run", max_steps=2, alpha=1.0))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "4"}) + "\n")
    env = {**os.environ, "DISTILL_HOME": str(tmp_path / "home")}
    gen = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill",
            "generate",
            "--teacher",
            str(out),
            "--prompts",
            str(prompts),
            "--max-new-tokens",
            "6",
            "--top-k",
            "2",
            "--dtype",
            "float32",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert gen.returncode == 0, gen.stderr[-2000:]
    cache = open_cache(gen.stdout.strip().splitlines()[-1])
    assert cache.provenance["engine"] == "vllm" and 0 < cache[0].num_tokens <= 6


@pytest.mark.slow
def test_kill_then_resume_gives_the_uninterrupted_losses(student: Path, teacher_cache: Path, tmp_path: Path) -> None:
    run_train(config(student, teacher_cache, tmp_path / "whole", max_steps=8))
    whole = metrics(tmp_path / "whole")

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        cli(*train_args(student, teacher_cache, out, steps=8)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 180
    while not (out / "checkpoints" / "step-00000004").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists()  # it really died before the end
    killed_id = json.loads((out / "run.json").read_text())["id"]
    resumed = subprocess.run(
        cli(*train_args(student, teacher_cache, out, steps=8), "--resume"), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    got = metrics(out)
    assert [r["step"] for r in got] == list(range(1, 9))
    run = json.loads((out / "run.json").read_text())  # the resumed run is the same run, finished
    assert run["id"] == killed_id and run["status"] == "finished" and len(run["resumed"]) == 1
    for a, b in zip(got, whole, strict=True):
        for key in ("loss", "ce", "kd", "grad_norm"):
            assert a[key] == pytest.approx(b[key], abs=1e-5, rel=0), (a["step"], key)


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_the_printed_resume_finishes_as_the_uninterrupted_run(
    student: Path, teacher_cache: Path, tmp_path: Path
) -> None:
    """What Slurm and Kubernetes send on preemption: the step in progress ends with a checkpoint, the run says
    `interrupted` (run.json and the registry), one sentence names the command that continues it, and that command,
    run as printed, ends where an uninterrupted run ends."""
    from distill.runs import Registry

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps = 12
    whole = tmp_path / "whole"
    whole_args = cli(*train_args(student, teacher_cache, whole, steps=steps))
    subprocess.run(whole_args, check=True, capture_output=True, env=env)

    out = tmp_path / "stopped"
    proc = subprocess.Popen(
        cli(*train_args(student, teacher_cache, out, steps=steps)), stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.time() + 180
    while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text().strip():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first step was logged"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143 and "Traceback" not in err, err[-2000:]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted" and run["reason"].startswith("interrupted by SIGTERM after step")
    stopped_at = len(metrics(out))
    assert 0 < stopped_at < steps and not (out / "model").exists()
    assert (out / "checkpoints" / f"step-{stopped_at:08d}").is_dir()  # the checkpoint of the step it stopped after
    assert {m.id: m.status for m, _ in Registry().runs(stage="train")}[run["id"]] == "interrupted"
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: interrupted by SIGTERM after step") and "continue it with: distill train" in line
    command = shlex.split(line.split("continue it with: ", 1)[1])
    assert command[-1] == "--resume"

    resumed = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"(step {stopped_at})" in resumed.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    assert [r["loss"] for r in metrics(out)] == [r["loss"] for r in metrics(whole)]
    w1, w2 = AutoModel(whole / "model"), AutoModel(out / "model")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_resume_brings_back_the_runs_own_settings(student: Path, teacher_cache: Path, tmp_path: Path) -> None:
    """A resume that leaves out --kd and --view (as "the same command with --resume" is often typed) continues the
    run as it started, not with the defaults; more --max-steps is allowed and recorded."""
    write_view(open_cache(teacher_cache), "resume-half", list(range(0, len(open_cache(teacher_cache)), 2)))
    out = tmp_path / "run"
    first = subprocess.run(
        cli(*train_args(student, teacher_cache, out, steps=2), "--kd", "reverse", "--view", "resume-half"),
        capture_output=True,
        text=True,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    before = json.loads((out / "run.json").read_text())
    resumed = subprocess.run(
        cli(*train_args(student, teacher_cache, out, steps=4), "--resume"), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming with the run's own settings: " in resumed.stderr and "--kd reverse" in resumed.stderr
    after = json.loads((out / "run.json").read_text())
    assert after["id"] == before["id"] and after["view"] == "resume-half"
    assert after["config"] == {**before["config"], "max_steps": 4, "resume": True}
    assert [c["settings"] for c in after["changes"]] == [{"max_steps": [2, 4]}]
    trained = json.loads((out / "model" / "distill_train.json").read_text())["config"]
    assert (trained["kd"], trained["view"]) == ("reverse", "resume-half")  # what the model was trained with
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]


def test_resume_with_other_settings_is_refused_naming_each(student: Path, teacher_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    subprocess.run(cli(*train_args(student, teacher_cache, out, steps=2), "--kd", "reverse"), check=True,
                   capture_output=True)  # fmt: skip
    manifest = (out / "run.json").read_bytes()
    other = subprocess.run(
        cli(*train_args(student, teacher_cache, out, steps=4), "--kd", "forward", "--alpha", "0.3", "--resume"),
        capture_output=True,
        text=True,
    )
    assert other.returncode == 1 and "Traceback" not in other.stderr
    assert "--kd was reverse, now forward" in other.stderr and "--alpha was 0.5, now 0.3" in other.stderr
    assert "choose another --out" in other.stderr
    assert (out / "run.json").read_bytes() == manifest  # nothing rewritten, the run still finished
    # the Python API keeps the same promise: a field left at its default comes back from the run
    run_train(config(student, teacher_cache, out, max_steps=3, resume=True))
    assert json.loads((out / "run.json").read_text())["config"]["kd"] == "reverse"


@pytest.mark.torchrun
def test_two_processes_on_gloo_match_one(student: Path, teacher_cache: Path, tmp_path: Path) -> None:
    run_train(config(student, teacher_cache, tmp_path / "one", max_steps=4))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29517",
        "-m",
        "distill",
        "train",
        *train_args(student, teacher_cache, tmp_path / "two", steps=4),
    ]
    two = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    assert "sharding: FSDP2 over 2 processes" in two.stderr
    # the same global batch: 4 rows per step, 2 per process; sums over ranks differ only in float order
    for a, b in zip(metrics(tmp_path / "two"), metrics(tmp_path / "one"), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5, rel=0) and a["tokens"] == b["tokens"]
    w1 = AutoModel(tmp_path / "one" / "model")
    w2 = AutoModel(tmp_path / "two" / "model")
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4
    # DDP, asked for by name (FSDP2 never falls back to it quietly), trains the same model
    cmd[cmd.index(str(tmp_path / "two"))] = str(tmp_path / "ddp")
    ddp = subprocess.run(
        [*cmd, "--sharding", "ddp"], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "sharding: DDP over 2 processes" in ddp.stderr
    w3 = AutoModel(tmp_path / "ddp" / "model")
    assert max((w1[k] - w3[k]).abs().max().item() for k in w1) < 1e-4


def AutoModel(path: Path) -> dict[str, torch.Tensor]:  # noqa: N802 - reads like the transformers loader it wraps
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_gradient_checkpointing_recomputes_the_same_training(
    student: Path, teacher_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers.models.qwen2 import modeling_qwen2

    calls = {"n": 0}
    forward = modeling_qwen2.Qwen2DecoderLayer.forward

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling_qwen2.Qwen2DecoderLayer, "forward", counted)
    run_train(config(student, teacher_cache, tmp_path / "plain", max_steps=3))
    plain, calls["n"] = calls["n"], 0
    run_train(config(student, teacher_cache, tmp_path / "ckpt", max_steps=3, gradient_checkpointing=True))
    assert calls["n"] == 2 * plain  # every layer runs again in the backward pass
    for a, b in zip(metrics(tmp_path / "ckpt"), metrics(tmp_path / "plain"), strict=True):
        for key in ("loss", "ce", "kd", "grad_norm"):
            assert a[key] == pytest.approx(b[key], abs=1e-5, rel=0), (a["step"], key)
    w1, w2 = AutoModel(tmp_path / "plain" / "model"), AutoModel(tmp_path / "ckpt" / "model")
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-5


def test_lora_trains_adapters_and_merges_them(student: Path, teacher_cache: Path, tmp_path: Path) -> None:
    out = run_train(config(student, teacher_cache, tmp_path / "lora", max_steps=3, lora=True, lr=1e-2))
    merged, base = AutoModel(out), AutoModel(student)
    assert set(merged) == set(base)  # merged on export: a plain model, no adapter weights
    changed = [k for k in base if not torch.equal(merged[k], base[k])]
    assert changed and all(any(m in k for m in ("proj",)) for k in changed)


def test_sft_from_plain_traces(student: Path, tmp_path: Path) -> None:
    traces = tmp_path / "traces.jsonl"
    traces.write_text(
        "".join(
            json.dumps(
                {
                    "question": f"What is {i} + 1?",
                    "answer": str(i + 1),
                    "completion": f"<think>\n{i} + 1 = {i + 1}</think> \\boxed{{{i + 1}}}",
                }
            )
            + "\n"
            for i in range(8)
        )
    )
    out = run_train(
        TrainConfig(
            student=str(student),
            traces=str(traces),
            alpha=1.0,
            out=tmp_path / "sft",
            max_steps=4,
            batch_rows=2,
            max_length=256,
            lr=3e-3,
        )
    )
    rows = metrics(tmp_path / "sft")
    assert len(rows) == 4 and all(r["kd"] == 0 for r in rows) and out.is_dir()


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"alpha": 1.5}, "--alpha must be in \\[0, 1\\]"),
        ({"temperature": 0.0}, "--temperature must be > 0"),
        ({"kd": "wasserstein"}, "--kd must be one of"),
    ],
)
def test_bad_settings_are_reported(student: Path, teacher_cache: Path, tmp_path: Path, kw: dict, message: str) -> None:
    with pytest.raises(DistillError, match=message):
        run_train(config(student, teacher_cache, tmp_path / "x", **kw))


def test_unknown_student(teacher_cache: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        cli("--student", "qwen-3b", "--cache", str(teacher_cache), "--out", str(tmp_path / "x")),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "Unknown model 'qwen-3b'" in out.stderr and "qwen-1.5b" in out.stderr


def test_tokenizer_mismatch_names_both(teacher_cache: Path, tmp_path: Path) -> None:
    other = build_tiny_model(
        tmp_path / "other",
        hidden_size=64,
        num_heads=2,
        num_kv_heads=1,
        num_layers=1,
        corpus=[line.upper() for line in default_corpus(9)],
    )
    with pytest.raises(DistillError, match="different vocabularies.*tokenizer family, or pass --cross-tokenizer"):
        run_train(config(other, teacher_cache, tmp_path / "x"))


def test_same_vocabulary_other_specials_adopts_the_teacher_tokenizer(
    teacher_cache: Path, student: Path, tmp_path: Path
) -> None:
    variant = tmp_path / "variant"
    shutil.copytree(student, variant)
    cfg = json.loads((variant / "tokenizer_config.json").read_text())
    (variant / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (variant / "tokenizer_config.json").write_text(json.dumps(cfg))
    out = run_train(config(variant, teacher_cache, tmp_path / "x", max_steps=1))
    assert (out / "chat_template.jinja").read_text() == (
        Path(open_cache(teacher_cache).tokenizer_path) / "chat_template.jinja"
    ).read_text()


def test_view_from_another_cache_and_empty_view(student: Path, teacher_cache: Path, tmp_path: Path) -> None:
    cache = open_cache(teacher_cache)
    write_view(cache, "none", [])
    with pytest.raises(DistillError, match="keeps no records"):
        run_train(config(student, teacher_cache, tmp_path / "x", view="none"))
    other = tmp_path / "other"
    shutil.copytree(teacher_cache, other)
    index = json.loads((other / "index.json").read_text())
    index["key"] = "somethingelse"
    (other / "index.json").write_text(json.dumps(index))
    write_view(open_cache(other), "mine", [0, 1])
    (teacher_cache / "views" / "mine.json").write_text((other / "views" / "mine.json").read_text())
    with pytest.raises(DistillError, match="written for cache somethingelse"):
        run_train(config(student, teacher_cache, tmp_path / "y", view="mine"))


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(
    student: Path, teacher_cache: Path, tmp_path: Path
) -> None:
    with pytest.raises(DistillError, match=r"loss became (nan|inf|-inf) at step \d+"):
        run_train(config(student, teacher_cache, tmp_path / "x", lr=1e30, save_every=1, grad_clip=1e30))
    assert sorted(p.name for p in (tmp_path / "x" / "checkpoints").iterdir())  # the good ones are still there
    assert not (tmp_path / "x" / "model").exists()


def test_sampled_kd_reads_extra_teacher_samples_from_the_cache(
    student: Path, teacher_cache: Path, tmp_path: Path
) -> None:
    from distill.cache import CacheSpec, CacheWriter

    source = open_cache(teacher_cache)
    rng = np.random.default_rng(0)
    spec = CacheSpec(top_k=source.spec.top_k, vocab_size=source.spec.vocab_size, extra_k=4)
    writer = CacheWriter(tmp_path / "sampled", spec, key="sampled", provenance=source.provenance)
    for rec in source:
        probs = np.exp(rec.topk_logprobs) / np.exp(rec.topk_logprobs).sum(1, keepdims=True)
        picks = np.stack([rng.choice(rec.topk_ids.shape[1], 4, p=p) for p in probs])
        rec.extra_ids = np.take_along_axis(rec.topk_ids, picks, axis=1)  # (T, 4) draws from the teacher
        rec.extra_logprobs = np.take_along_axis(rec.topk_logprobs, picks, axis=1)  # their teacher logprobs
        writer.append(rec)
    shutil.copytree(source.tokenizer_path, tmp_path / "tok")
    writer.finish(tokenizer=_Saved(tmp_path / "tok"))
    run_train(config(student, tmp_path / "sampled", tmp_path / "run", max_steps=2, kd="sampled"))
    rows = metrics(tmp_path / "run")
    assert all(np.isfinite(r["kd"]) and r["kd"] > 0 for r in rows)
    with pytest.raises(DistillError, match="needs tokens drawn from the teacher"):
        run_train(config(student, teacher_cache, tmp_path / "x", kd="sampled"))


class _Saved:
    def __init__(self, path: Path) -> None:
        self.path = path

    def save_pretrained(self, target: Path) -> None:
        shutil.copytree(self.path, target)


def test_side_by_side_runs_equal_the_same_runs_alone(student: Path, teacher_cache: Path, tmp_path: Path) -> None:
    """What the demo and kd_vs_sft do: two `distill train` at once, one thread each; each is the run made alone."""
    from distill.demo import train_side_by_side

    jobs = {
        "kd": ["train", *train_args(student, teacher_cache, tmp_path / "kd", steps=3), "--alpha", "0.5"],
        "sft": ["train", *train_args(student, teacher_cache, tmp_path / "sft", steps=3), "--alpha", "1"],
    }
    runs = train_side_by_side(jobs, tmp_path, 3, threads=1)
    assert runs == {name: tmp_path / name / "model" for name in jobs}
    assert [len(metrics(tmp_path / name)) for name in jobs] == [3, 3]
    alone = tmp_path / "alone"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(cli(*train_args(student, teacher_cache, alone, steps=3), "--alpha", "0.5"), check=True, env=env)
    assert [m["loss"] for m in metrics(alone)] == [m["loss"] for m in metrics(tmp_path / "kd")]
    side, by_itself = AutoModel(runs["kd"]), AutoModel(alone / "model")
    assert all(torch.equal(side[k], by_itself[k]) for k in by_itself)
    assert not torch.equal(side["model.norm.weight"], AutoModel(runs["sft"])["model.norm.weight"])


def test_side_by_side_stops_the_others_when_one_fails(
    student: Path, teacher_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import typer

    from distill.demo import _steps_done, train_side_by_side

    jobs = {
        "bad": ["train", "--student", "qwen-3b", "--cache", str(teacher_cache), "--out", str(tmp_path / "bad")],
        "long": ["train", *train_args(student, teacher_cache, tmp_path / "long", steps=100_000)],
    }
    with pytest.raises(typer.Exit) as stopped:
        train_side_by_side(jobs, tmp_path, 100_000, threads=1)
    assert stopped.value.exit_code == 1
    err = capsys.readouterr().err
    assert "Unknown model 'qwen-3b'" in err  # the failed run's own sentence, from its log
    assert f"the BAD student's training failed; its log is {tmp_path / 'train-bad.log'}" in err
    assert _steps_done(tmp_path / "long") < 100_000  # stopped, not waited for
