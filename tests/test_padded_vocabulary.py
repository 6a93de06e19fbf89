"""Padded vocabularies (Qwen2.5: 151,665 tokens, 151,936 rows) through generate, score, train and on-policy scoring.

The teacher is a random tiny Qwen2 whose embedding has 768 rows for its tokenizer's 512 tokens: a third of
the rows are padding, so its top-k holds padding rows at nearly every position. Both engines (real vLLM on
CPU, transformers) must keep k real tokens per position, fold the padding mass into the tail (checked against
an independent transformers forward over every row), never sample a padding row, and count the folded
entries in the cache's summary. A second teacher whose padding rows dominate shows the masking holds where
sampling without it would pick padding nearly every time, and vLLM's sentence where its top-k + margin runs out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.cache import open_cache
from distill.models.tiny import build_tiny_model

TOKENS, ROWS, K = 512, 768, 8
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ARGS = [
    "--mapping",
    "gsm8k",
    "--samples-per-prompt",
    "2",
    "--max-new-tokens",
    "16",
    "--temperature",
    "1.0",
    "--dtype",
    "float32",
    "--precision",
    "fp32",
]


def distill(*args: str, home: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISTILL_HOME": str(home), "VLLM_LOGGING_LEVEL": "WARNING"}
    out = subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True, text=True, env=env)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def padded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Qwen2 with 768 embedding rows for its tokenizer's 512 tokens."""
    from transformers import AutoTokenizer

    path = build_tiny_model(
        tmp_path_factory.mktemp("padded"), vocab_size=TOKENS, hidden_size=128, model_vocab_size=ROWS
    )
    assert len(AutoTokenizer.from_pretrained(path)) == TOKENS
    return path


@pytest.fixture(scope="module")
def padding_heavy(padded: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The padded teacher with its padding rows scaled ×20: they hold most of every position's mass."""
    import shutil

    from safetensors.torch import load_file, save_file

    path = tmp_path_factory.mktemp("heavy")
    shutil.copytree(padded, path, dirs_exist_ok=True)
    weights = load_file(path / "model.safetensors")
    weights["model.embed_tokens.weight"][TOKENS:] *= 20  # tied: the output rows too
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [json.loads(line) for line in (DATA / "gsm8k_test.jsonl").read_text().splitlines()[:3]]
    path = tmp_path_factory.mktemp("prompts") / "gsm8k3.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


def generate_hf(teacher: Path, prompts: Path, out: Path, **kw: object) -> Path:
    """`distill generate --backend hf` in this process (the settings of ARGS, top-k K unless given)."""
    from distill.generate import GenerateConfig, run_generate

    settings = dict(samples_per_prompt=2, max_new_tokens=16, temperature=1.0, dtype="float32", precision="fp32")
    config = dict(teacher=str(teacher), prompts=str(prompts), mapping="gsm8k", top_k=K, backend="hf", out=out)
    return run_generate(GenerateConfig(**{**settings, **config, **kw}))


@pytest.fixture(scope="module")
def vllm_cache(padded: Path, prompts: Path, home: Path) -> tuple[Path, str]:
    out = distill(
        "generate", "--teacher", str(padded), "--prompts", str(prompts), "--top-k", str(K), *ARGS, home=home
    )  # fmt: skip
    return Path(out.stdout.strip().splitlines()[-1]), out.stdout


@pytest.fixture(scope="module")
def hf_cache(padded: Path, prompts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_hf(padded, prompts, tmp_path_factory.mktemp("hf") / "cache")


def full_logprobs(model: torch.nn.Module, prompt_ids: np.ndarray, completion_ids: np.ndarray) -> np.ndarray:
    """(T, ROWS) float64 log-softmax over every row at each completion position, from a transformers forward."""
    ids = torch.from_numpy(np.concatenate([prompt_ids, completion_ids]).astype(np.int64))[None]
    p, t = len(prompt_ids), len(completion_ids)
    with torch.no_grad():
        return torch.log_softmax(model(ids).logits[0, p - 1 : p - 1 + t].double(), -1).numpy()


def assert_padding_folded(cache_path: Path, model_dir: Path, k: int = K, tol: float = 1e-4) -> dict[str, int]:
    """Every record holds real tokens only, the best k of them, with the exact tail (padding mass included) and
    the trace tokens' logprobs over every row; returns the padding counts the cache's provenance must report."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    cache = open_cache(cache_path)
    entries = positions = padding_mass = 0.0
    for rec in cache:
        assert rec.completion_ids.max() < TOKENS and rec.topk_ids.max() < TOKENS  # no padding row anywhere
        ref = full_logprobs(model, rec.prompt_ids, rec.completion_ids)  # (T, ROWS)
        t = np.arange(rec.num_tokens)
        best = np.sort(ref[:, :TOKENS], axis=1)[:, ::-1][:, :k]
        np.testing.assert_allclose(rec.topk_logprobs, best, atol=tol, rtol=0)  # the best k real tokens, in order
        np.testing.assert_allclose(np.take_along_axis(ref, rec.topk_ids.astype(np.int64), 1), best, atol=tol, rtol=0)
        outside = ref.copy()
        np.put_along_axis(outside, rec.topk_ids.astype(np.int64), -np.inf, axis=1)
        np.testing.assert_allclose(rec.tail_logprobs, np.logaddexp.reduce(outside, axis=1), atol=tol, rtol=0)
        np.testing.assert_allclose(rec.sampled_logprobs, ref[t, rec.completion_ids], atol=tol, rtol=0)
        folded = (np.argsort(-ref, axis=1)[:, :k] >= TOKENS).sum(axis=1)  # padding rows in the top-k of all rows
        entries += folded.sum()
        positions += np.count_nonzero(folded)
        padding_mass += np.exp(ref[:, TOKENS:]).sum()
    assert entries > 0 and padding_mass > 0  # the test means something: padding ranks and holds mass
    return {"tokens": TOKENS, "model_rows": ROWS, "folded_entries": int(entries), "folded_positions": int(positions)}


def assert_reported(cache_path: Path, stdout: str, counts: dict[str, int]) -> None:
    """The counts are in the index provenance and in the summary the command printed."""
    assert open_cache(cache_path).provenance["padding"] == counts
    assert (
        f"padding: the model has {ROWS} rows for {TOKENS} tokens; {counts['folded_entries']} top-k entries at "
        f"{counts['folded_positions']} positions were padding rows, folded into the tail"
    ) in stdout


# ---------------------------------------------------------------------------------------------
# generate


@pytest.mark.vllm
def test_vllm_generate_folds_padding_into_the_tail(vllm_cache: tuple[Path, str], padded: Path) -> None:
    path, stdout = vllm_cache
    assert len(open_cache(path)) == 6
    assert_reported(path, stdout, assert_padding_folded(path, padded))


def test_hf_generate_folds_padding_into_the_tail(
    hf_cache: Path, padded: Path, prompts: Path, capsys: pytest.CaptureFixture
) -> None:
    from distill.cli import cache_info

    counts = assert_padding_folded(hf_cache, padded)
    generate_hf(padded, prompts, hf_cache)  # a cache hit: prints no summary, but `cache info` shows the counts
    capsys.readouterr()
    cache_info(str(hf_cache))
    assert_reported(hf_cache, capsys.readouterr().out, counts)


def test_folded_counts_survive_an_interrupted_run_and_a_merge(
    hf_cache: Path, padded: Path, prompts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counts cover the records on disk: a run stopped after 2 records and resumed, and two slices merged,
    report what the uninterrupted run reports."""
    from distill.cache.admin import merge_caches
    from distill.engines import Completion, Request, SamplingSpec
    from distill.engines.hf_engine import HFEngine

    whole = open_cache(hf_cache).provenance["padding"]
    real_generate = HFEngine.generate

    def stops_after_two(self: HFEngine, requests: Iterable[Request], spec: SamplingSpec) -> Iterator[Completion]:
        for i, c in enumerate(real_generate(self, requests, spec)):
            if i == 2:
                raise KeyboardInterrupt
            yield c

    monkeypatch.setattr(HFEngine, "generate", stops_after_two)
    with pytest.raises(KeyboardInterrupt):
        generate_hf(padded, prompts, tmp_path / "resumed")
    partial = open_cache(tmp_path / "resumed", allow_incomplete=True)
    assert len(partial) == 2 and 0 < partial.provenance["padding"]["folded_entries"] < whole["folded_entries"]
    monkeypatch.setattr(HFEngine, "generate", real_generate)
    assert open_cache(generate_hf(padded, prompts, tmp_path / "resumed")).provenance["padding"] == whole
    slices = [generate_hf(padded, prompts, tmp_path / f"slice{i}", shard_index=i, num_shards=2) for i in range(2)]
    assert open_cache(merge_caches(slices, tmp_path / "merged")).provenance["padding"] == whole


def test_hf_extra_samples_are_real_tokens(padded: Path, prompts: Path, tmp_path: Path) -> None:
    """Sampled-KD draws come from the teacher over its real tokens (renormalised): a padding row is no token."""
    from transformers import AutoModelForCausalLM

    path = generate_hf(padded, prompts, tmp_path / "cache", top_k=2, extra_samples=4, limit=1)
    model = AutoModelForCausalLM.from_pretrained(padded, dtype=torch.float32).eval()
    for rec in open_cache(path):
        assert rec.extra_ids.max() < TOKENS
        ref = full_logprobs(model, rec.prompt_ids, rec.completion_ids)[:, :TOKENS]
        real = ref - np.logaddexp.reduce(ref, axis=1, keepdims=True)
        np.testing.assert_allclose(rec.extra_logprobs, np.take_along_axis(real, rec.extra_ids, 1), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# score


@pytest.mark.vllm
def test_vllm_score_folds_padding_into_the_tail(vllm_cache: tuple[Path, str], padded: Path, home: Path) -> None:
    out = distill(
        "score", "--teacher", str(padded), "--traces", str(vllm_cache[0]), "--top-k", str(K), "--dtype", "float32",
        "--precision", "fp32",
        home=home,
    )  # fmt: skip
    path = Path(out.stdout.strip().splitlines()[-1])
    assert len(open_cache(path)) == 6
    assert_reported(path, out.stdout, assert_padding_folded(path, padded))


def test_hf_score_folds_padding_into_the_tail(
    hf_cache: Path, padded: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from distill.score import ScoreConfig, run_score

    config = ScoreConfig(teacher=str(padded), traces=str(hf_cache), top_k=K, backend="hf", dtype="float32")
    path = run_score(replace(config, precision="fp32", out=tmp_path / "scored"))
    assert len(open_cache(path)) == 6
    assert_reported(path, capsys.readouterr().out, assert_padding_folded(path, padded))


# ---------------------------------------------------------------------------------------------
# padding that dominates: the masks hold, and vLLM's margin runs out with a sentence


def test_hf_never_samples_padding_that_holds_most_of_the_mass(
    padding_heavy: Path, prompts: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    path = generate_hf(padding_heavy, prompts, tmp_path / "cache")
    assert_padding_folded(path, padding_heavy)
    model = AutoModelForCausalLM.from_pretrained(padding_heavy, dtype=torch.float32).eval()
    rec = open_cache(path)[0]
    tail = np.exp(full_logprobs(model, rec.prompt_ids, rec.completion_ids)[:, TOKENS:]).sum(axis=1)
    assert tail.mean() > 0.9  # unmasked, nearly every sampled token would have been a padding row


@pytest.mark.vllm
def test_vllm_never_samples_padding_and_says_when_its_top_k_is_all_padding(
    padding_heavy: Path, prompts: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    out = distill(
        "generate", "--teacher", str(padding_heavy), "--prompts", str(prompts), "--top-k", "0", *ARGS, home=tmp_path,
    )  # fmt: skip
    cache = open_cache(Path(out.stdout.strip().splitlines()[-1]))
    assert len(cache) == 6
    model = AutoModelForCausalLM.from_pretrained(padding_heavy, dtype=torch.float32).eval()
    for rec in cache:
        assert rec.completion_ids.max() < TOKENS  # the logit bias masked every padding row...
        ref = full_logprobs(model, rec.prompt_ids, rec.completion_ids)
        assert np.exp(ref[:, TOKENS:]).sum(axis=1).mean() > 0.9  # ...which hold most of the mass, and
        # the recorded logprobs are raw, over every row: vLLM takes them before it applies the bias
        np.testing.assert_allclose(rec.sampled_logprobs, ref[np.arange(rec.num_tokens), rec.completion_ids], atol=1e-4)
    refused = distill(
        "generate", "--teacher", str(padding_heavy), "--prompts", str(prompts), "--top-k", "4", *ARGS,
        home=tmp_path, check=False,
    )  # fmt: skip
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"are padding rows (ids ≥ {TOKENS}, the tokenizer's size; the model has {ROWS} rows)" in refused.stderr
    assert "lower --top-k, or use --backend hf" in refused.stderr


# ---------------------------------------------------------------------------------------------
# students and on-policy scoring


def test_a_student_with_padded_rows_trains_on_the_cache_without_cross_tokenizer(
    hf_cache: Path, padded: Path, tmp_path: Path
) -> None:
    """The student has the teacher's tokenizer and 640 rows (its own padding); ids are tokens, so nothing maps."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.train import TrainConfig, run_train

    student = build_tiny_model(
        tmp_path / "student", hidden_size=64, num_heads=2, num_kv_heads=1, num_layers=1, seed=1,
        tokenizer=AutoTokenizer.from_pretrained(padded), model_vocab_size=640,
    )  # fmt: skip
    out = run_train(
        TrainConfig(
            student=str(student),
            cache=str(hf_cache),
            out=tmp_path / "run",
            max_steps=6,
            batch_rows=2,
            micro_rows=2,
            max_length=512,
            lr=3e-3,
            warmup_ratio=0.0,
            save_every=6,
            seed=3,
        )
    )
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(np.isfinite(r["loss"]) and r["kd"] > 0 for r in rows)
    assert rows[-1]["kd"] < rows[0]["kd"]
    assert AutoModelForCausalLM.from_pretrained(out).get_output_embeddings().weight.shape[0] == 640


def test_onpolicy_teacher_view_keeps_real_tokens_and_the_exact_tail(padded: Path) -> None:
    """`distill onpolicy`'s in-process teacher scoring: top-k of the real rows, the tail over every other row."""
    from transformers import AutoModelForCausalLM

    from distill.engines import Completion
    from distill.rollouts import micro_batches
    from distill.teacher_scores import teacher_view

    model = AutoModelForCausalLM.from_pretrained(padded, dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    rows = [
        Completion(("p", i), [5, 9, 14, 20], rng.integers(0, TOKENS, n).astype(np.int32), None, None, None, "stop")
        for i, n in enumerate([12, 7])
    ]
    (mb,) = micro_batches(rows, [0, 1], 2, pad=0)
    with torch.no_grad():  # as the stage calls it
        views, _ = teacher_view(model, mb, K, 1.0, "cpu", TOKENS)
    folded = 0
    for view, c in zip(views, rows, strict=True):
        ref = full_logprobs(model, np.asarray(c.prompt_ids), c.completion_ids)
        assert view["topk_ids"].max() < TOKENS
        np.testing.assert_allclose(view["topk_logprobs"], np.sort(ref[:, :TOKENS], 1)[:, ::-1][:, :K], atol=1e-5)
        outside = ref.copy()
        np.put_along_axis(outside, view["topk_ids"].astype(np.int64), -np.inf, axis=1)
        np.testing.assert_allclose(view["tail_logprobs"], np.logaddexp.reduce(outside, axis=1), atol=1e-5)
        folded += int((np.argsort(-ref, axis=1)[:, :K] >= TOKENS).sum())
    assert folded > 0


@pytest.mark.parametrize("teacher_backend", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_onpolicy_topk_from_a_padded_teacher_trains_a_student_without_padding(
    padded: Path, tmp_path: Path, teacher_backend: str
) -> None:
    """The teacher's scores of the student's rollouts hold real tokens only (before: ids up to 767 reached a
    512-row student and the loss stopped the run), with the exact tail, padding mass included."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student = build_tiny_model(
        tmp_path / "student", hidden_size=64, num_heads=2, num_kv_heads=1, num_layers=1, seed=1,
        tokenizer=AutoTokenizer.from_pretrained(padded),
    )  # fmt: skip
    out = tmp_path / "run"
    if teacher_backend == "hf":
        from distill.onpolicy import OnPolicyConfig, run_onpolicy

        run_onpolicy(
            OnPolicyConfig(
                student=str(student),
                teacher=str(padded),
                prompts="arith:train",
                group_size=2,
                batch_size=4,
                micro_batch=4,
                max_new_tokens=16,
                loss="topk",
                steps=1,
                self_check=0,
                backend="hf",
                out=out,
            )
        )
    else:  # vLLM starts in a process of its own, as in the other vLLM tests
        distill(
            "onpolicy", "--student", str(student), "--teacher", str(padded), "--prompts", "arith:train",
            "--group-size", "2", "--batch-size", "4", "--micro-batch", "4", "--max-new-tokens", "16", "--loss", "topk",
            "--steps", "1", "--self-check", "0", "--backend", "hf", "--teacher-backend", "vllm", "--out", str(out),
            home=tmp_path,
        )  # fmt: skip
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(row["loss"]) and row["kd"] > 0 and row["grad_norm"] > 0
    model = AutoModelForCausalLM.from_pretrained(padded, dtype=torch.float32).eval()
    scores = open_cache(out / "cache")
    assert len(scores) == 4 and scores.spec.vocab_size == TOKENS
    for rec in scores:
        assert rec.topk_ids.max() < TOKENS and rec.completion_ids.max() < TOKENS
        ref = full_logprobs(model, rec.prompt_ids, rec.completion_ids)
        outside = ref.copy()
        np.put_along_axis(outside, rec.topk_ids.astype(np.int64), -np.inf, axis=1)
        np.testing.assert_allclose(rec.tail_logprobs, np.logaddexp.reduce(outside, axis=1), atol=1e-4, rtol=0)
