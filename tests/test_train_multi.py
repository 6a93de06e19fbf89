"""`distill train --cache A --cache B`: several teacher caches in one run, on tiny Qwen2 teachers of one tokenizer.

Per-cache metrics, the manifest and the listings that name every cache, resume, one cache read exactly as
before, the cross-tokenizer path with a cache per tokenizer, and the bad input of several caches.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distill.cache import open_cache, write_view
from distill.data import PackedLoader, plan_rows
from distill.generate import GenerateConfig, run_generate
from distill.models.tiny import build_tiny_model, default_corpus
from distill.presets import resolve_preset
from distill.train import TrainConfig, TrainRecipe, run_train

SMALL = dict(hidden_size=64, num_heads=2, num_kv_heads=1, num_layers=1)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight sums and products with a domain each."""
    rows = [
        {"id": f"q{i}", "prompt": f"What is {i} {op} {i + 2}?", "answer": str(i + i + 2 if op == "+" else i * (i + 2)),
         "domain": "add" if op == "+" else "mul"}
        for i, op in zip(range(8), "+*+*+*+*", strict=True)
    ]  # fmt: skip
    path = tmp_path_factory.mktemp("prompts") / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_cache(teacher: Path, prompts: Path, out: Path, top_k: int) -> Path:
    return run_generate(
        GenerateConfig(
            teacher=str(teacher),
            prompts=str(prompts),
            samples_per_prompt=2,
            max_new_tokens=20,
            top_k=top_k,
            temperature=1.0,
            backend="hf",
            dtype="float32",
            out=out,
        )  # fmt: skip
    )


@pytest.fixture(scope="module")
def caches(tiny_model: Path, prompts: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two caches of two teachers of one tokenizer (the tiny model's corpus), top-8 and top-5; B has a view."""
    root = tmp_path_factory.mktemp("caches")
    other = build_tiny_model(root / "teacher-b", vocab_size=512, hidden_size=128, seed=4, corpus=default_corpus(0))
    a, b = make_cache(tiny_model, prompts, root / "a", 8), make_cache(other, prompts, root / "b", 5)
    write_view(open_cache(b), "even", list(range(0, 16, 2)))
    return a, b


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("student"), seed=1, corpus=default_corpus(0), **SMALL)


def config(student: Path, caches: list[str], out: Path, **kw) -> TrainConfig:
    base = dict(student=str(student), cache=caches, out=out, max_steps=6, batch_rows=4, micro_rows=2,
                max_length=256, lr=3e-3, warmup_ratio=0.0, save_every=2, seed=3)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True, text=True)


def train_args(student: Path, caches: list[str], out: Path, *extra: str) -> list[str]:
    args = ["train", "--student", str(student), "--out", str(out), "--max-steps", "8", "--batch-rows", "4",
            "--micro-rows", "2", "--max-length", "256", "--lr", "3e-3", "--warmup-ratio", "0", "--save-every", "2",
            "--seed", "3", *extra]  # fmt: skip
    return args + [x for c in caches for x in ("--cache", c)]


# ---------------------------------------------------------------------------------------------
# what a run on several caches records


def test_two_caches_report_each_cache_and_are_listed_by_either(
    student: Path, caches: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = caches
    out = tmp_path / "mix"
    run_train(config(student, [str(a), f"{b}:even"], out, max_steps=12, cache_weights="1,3"))
    run = json.loads((out / "run.json").read_text())
    listed = run["caches"]
    assert [(c["cache_key"], c["view"], c["records"]) for c in listed] == [
        (open_cache(a).key, None, 16),
        (open_cache(b).key, "even", 8),
    ]
    assert [c["weight"] for c in listed] == [0.25, 0.75]
    names = [c["name"] for c in listed]
    assert names == [open_cache(a).provenance["teacher"], "teacher-b"]
    rows = metrics(out)
    for name in names:  # each cache's own CE and KD, in the rows and the manifest's final metrics
        assert any(f"ce/{name}" in r and f"kd/{name}" in r for r in rows)
        assert run["metrics"][f"ce/{name}"] > 0 and run["metrics"][f"kd/{name}"] >= 0
    for r in rows:  # the step's CE is its caches' CE weighed by their tokens
        parts = [(r.get(f"ce/{n}", 0.0), r[f"tokens/{n}"]) for n in names]
        assert r["ce"] == pytest.approx(sum(ce * n for ce, n in parts) / sum(n for _, n in parts), rel=1e-5)
    model = json.loads((out / "model" / "distill_train.json").read_text())
    assert [c["cache_key"] for c in model["source"]["caches"]] == [c["cache_key"] for c in listed]

    for cache in (a, b):  # either cache lists the run, and says it shared it
        found = json.loads(cli("runs", "--cache", str(cache), "--json").stdout)
        assert [r["id"] for r in found] == [run["id"]]
        info = cli("cache", "info", str(cache))
        assert info.returncode == 0 and "1 trained on this cache (1 of them with other caches too)" in info.stdout
        assert "mix" in info.stdout and "+".join(names) in info.stdout


def test_one_cache_reads_as_it_always_has(student: Path, caches: tuple[Path, Path], tmp_path: Path) -> None:
    """One cache: the plain PackedLoader over plan_rows' order, no per-cache metrics; CACHE:VIEW is --view."""
    a, b = caches
    recipe = TrainRecipe(config(student, [f"{b}:even"], tmp_path / "x"))
    recipe.preset = resolve_preset(str(student), "student")
    recipe._setup_data()
    assert type(recipe.loader) is PackedLoader and recipe.loader.indices == list(range(0, 16, 2))
    lengths = [int(open_cache(b).lengths()[i].sum()) for i in range(0, 16, 2)]
    assert recipe.loader._plan(0) == plan_rows(lengths, 256, 3, 0)

    run_train(config(student, [f"{b}:even"], tmp_path / "colon"))
    run_train(config(student, [str(b)], tmp_path / "flag", view="even"))
    colon, flag = metrics(tmp_path / "colon"), metrics(tmp_path / "flag")
    assert set(colon[0]) == {"step", "loss", "ce", "kd", "lr", "grad_norm", "tokens", "tokens_per_s"}
    timeless = lambda row: {k: v for k, v in row.items() if k != "tokens_per_s"}  # noqa: E731
    assert [timeless(x) for x in colon] == [timeless(y) for y in flag]


def test_kill_then_resume_with_two_caches_gives_the_uninterrupted_losses(
    student: Path, caches: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = caches
    specs = [str(a), f"{b}:even"]
    whole = cli(*train_args(student, specs, tmp_path / "whole", "--cache-weights", "2,1"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "distill", *train_args(student, specs, out, "--cache-weights", "2,1")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 180
    while not (out / "checkpoints" / "step-00000004").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists()  # it really died before the end
    resumed = cli(*train_args(student, specs, out, "--cache-weights", "2,1", "--resume"))
    assert resumed.returncode == 0 and "resumed from" in resumed.stderr, resumed.stderr[-2000:]
    got, want = metrics(out), metrics(tmp_path / "whole")
    assert [r["step"] for r in got] == list(range(1, 9))
    for x, y in zip(got, want, strict=True):
        for key in y:
            if key != "tokens_per_s":
                assert x[key] == pytest.approx(y[key], abs=1e-5, rel=0), (x["step"], key)


def test_a_cache_of_another_tokenizer_is_aligned_with_cross_tokenizer(
    student: Path, caches: tuple[Path, Path], prompts: Path, tmp_path: Path
) -> None:
    """Each cache gets its own vocabulary map; without --cross-tokenizer the other tokenizer is one sentence."""
    a, _ = caches
    upper = build_tiny_model(tmp_path / "upper", vocab_size=512, hidden_size=128, seed=2,
                             corpus=[line.upper() for line in default_corpus(9)])  # fmt: skip
    c = make_cache(upper, prompts, tmp_path / "c", 8)
    refused = cli(*train_args(student, [str(a), str(c)], tmp_path / "no"))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().count("\n") == 0 and f"Cache {c} was made with another tokenizer" in refused.stderr
    assert "--cross-tokenizer" in refused.stderr

    out = tmp_path / "xt"
    run_train(config(student, [str(a), str(c)], out, cross_tokenizer=True, kd="reverse"))
    run = json.loads((out / "run.json").read_text())
    assert set(run["summary"]["cross_tokenizer"]) == {"upper", open_cache(a).provenance["teacher"]}
    assert any("kd/upper" in r for r in metrics(out))
    assert np.isfinite(run["metrics"]["loss"])


# ---------------------------------------------------------------------------------------------
# bad input: one sentence each, exit 1, nothing left behind


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--cache-weights", "1,2,3"], "--cache-weights gives 3 weight(s) for 2 --cache(s)"),
        (["--cache-weights", "1,-2"], "every --cache-weights weight must be a number > 0"),
        (["--cache-weights", "1,x"], "--cache-weights must be comma-separated numbers"),
        (["--view", "even"], "has no view 'even'"),
    ],
)
def test_bad_input_of_several_caches(
    student: Path, caches: tuple[Path, Path], tmp_path: Path, extra: list[str], says: str
) -> None:
    a, b = caches
    out = tmp_path / "bad"
    proc = cli(*train_args(student, [str(a), str(b)], out, *extra))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and says in proc.stderr, proc.stderr
    if "view" in says:
        assert f"Cache {a} has no view" in proc.stderr  # the cache that lacks it: A (B has one)
    assert not (out / "run.json").exists()


def test_weights_need_several_caches(student: Path, caches: tuple[Path, Path], tmp_path: Path) -> None:
    proc = cli(*train_args(student, [str(caches[0])], tmp_path / "one", "--cache-weights", "1"))
    assert proc.returncode == 1 and "with one cache or none there is nothing to weigh" in proc.stderr
