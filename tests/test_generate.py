"""`distill generate` / `distill score` on a real tiny Qwen2 through real vLLM (CPU build) and transformers.

Fidelity is checked against an independent transformers forward pass over the cached tokens; the
crash test SIGKILLs a real `distill generate` process and reruns it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.cache import open_cache
from distill.cache.admin import merge_caches
from distill.errors import DistillError
from distill.generate import GenerateConfig, plan, run_generate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GEN_ARGS = [
    "--samples-per-prompt",
    "2",
    "--max-new-tokens",
    "24",
    "--top-k",
    "5",
    "--temperature",
    "1.0",
    "--dtype",
    "float32",
    "--precision",
    "fp32",
    "--seed",
    "7",
]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six real GSM8K test problems (gold answer after '####'), as a local JSONL file."""
    rows = [json.loads(line) for line in (DATA / "gsm8k_test.jsonl").read_text().splitlines()[:6]]
    path = tmp_path_factory.mktemp("prompts") / "gsm8k6.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


def distill(*args: str, home: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISTILL_HOME": str(home)}
    out = subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True, text=True, env=env)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def vllm_command(tiny_model: Path, prompts_file: Path) -> list[str]:
    """The one vLLM generate command the fixture runs and the cache-hit test repeats verbatim."""
    return ["generate", "--teacher", str(tiny_model), "--prompts", str(prompts_file), "--mapping", "gsm8k", *GEN_ARGS]


@pytest.fixture(scope="module")
def vllm_cache(tiny_model: Path, prompts_file: Path, home: Path) -> Path:
    out = distill(*vllm_command(tiny_model, prompts_file), home=home)
    return Path(out.stdout.strip().splitlines()[-1])


def assert_matches_forward(cache_path: Path, model_dir: Path, tol: float = 1e-4) -> None:
    """Every completion position's top-k (and the trace token's logprob) equals a transformers forward pass."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    cache = open_cache(cache_path)
    assert len(cache) > 0
    for rec in cache:
        ids = torch.from_numpy(np.concatenate([rec.prompt_ids, rec.completion_ids]).astype(np.int64))[None]
        p, t = len(rec.prompt_ids), len(rec.completion_ids)
        with torch.no_grad():
            ref = torch.log_softmax(model(ids).logits[0, p - 1 : p - 1 + t].float(), -1).numpy()  # (T, V)
        np.testing.assert_allclose(np.take_along_axis(ref, rec.topk_ids, 1), rec.topk_logprobs, atol=tol, rtol=0)
        top = np.sort(ref, axis=1)[:, ::-1][:, : rec.topk_ids.shape[1]]
        np.testing.assert_allclose(rec.topk_logprobs, top, atol=tol, rtol=0)  # they are the top k, in order
        np.testing.assert_allclose(ref[np.arange(t), rec.completion_ids], rec.sampled_logprobs, atol=tol, rtol=0)
        outside = ref.copy()
        np.put_along_axis(outside, rec.topk_ids, -np.inf, axis=1)
        exact_tail = np.logaddexp.reduce(outside.astype(np.float64), axis=1)  # the mass outside the top-k
        np.testing.assert_allclose(rec.tail_logprobs, exact_tail, atol=tol, rtol=0)


@pytest.mark.vllm
def test_vllm_generate_matches_transformers_forward(vllm_cache: Path, tiny_model: Path) -> None:
    cache = open_cache(vllm_cache)
    assert len(cache) == 12 and sorted(cache.keys()) == sorted((str(i), s) for i in range(6) for s in range(2))
    assert cache[0].meta["answer"] == "18"  # the gold of GSM8K test row 0, parsed from '#### 18'
    assert cache[0].meta["question"].startswith("Janet’s ducks lay 16 eggs per day.")  # for the lang verifier
    assert cache.provenance["engine"] == "vllm"
    assert_matches_forward(vllm_cache, tiny_model)


@pytest.mark.slow
def test_hf_backend_matches_transformers_forward(tiny_model: Path, prompts_file: Path, home: Path) -> None:
    out = distill(
        "generate",
        "--teacher",
        str(tiny_model),
        "--prompts",
        str(prompts_file),
        "--limit",
        "3",
        "--backend",
        "hf",
        "--extra-samples",
        "3",
        *GEN_ARGS,
        home=home,
    )
    path = Path(out.stdout.strip().splitlines()[-1])
    assert len(open_cache(path)) == 6 and open_cache(path).provenance["engine"] == "hf"
    assert_matches_forward(path, tiny_model)
    # the hf engine sees full logits: every position also carries 3 tokens drawn from the teacher (τ = 1)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    for rec in open_cache(path):
        assert rec.extra_ids.shape == (rec.num_tokens, 3)
        ids = torch.from_numpy(np.concatenate([rec.prompt_ids, rec.completion_ids]).astype(np.int64))[None]
        p, t = len(rec.prompt_ids), rec.num_tokens
        with torch.no_grad():
            ref = torch.log_softmax(model(ids).logits[0, p - 1 : p - 1 + t].float(), -1).numpy()
        np.testing.assert_allclose(np.take_along_axis(ref, rec.extra_ids, 1), rec.extra_logprobs, atol=1e-4)
    refused = distill(*vllm_command(tiny_model, prompts_file), "--extra-samples", "3", home=home, check=False)
    assert refused.returncode == 1 and "vLLM does not expose" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.vllm
def test_identical_rerun_is_a_cache_hit_without_an_engine(
    vllm_cache: Path, tiny_model: Path, prompts_file: Path, home: Path
) -> None:
    t0 = time.perf_counter()
    out = distill(*vllm_command(tiny_model, prompts_file), home=home)
    elapsed = time.perf_counter() - t0
    assert "cache hit" in out.stdout and out.stdout.strip().splitlines()[-1] == str(vllm_cache)
    assert "vllm" not in out.stderr.lower()  # no engine was started
    assert elapsed < 10  # generous for a loaded CI machine; typically well under a second


@pytest.mark.vllm
@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_score_reproduces_generate_logprobs(vllm_cache: Path, tiny_model: Path, home: Path, backend: str) -> None:
    out = distill(
        "score",
        "--teacher",
        str(tiny_model),
        "--traces",
        str(vllm_cache),
        "--top-k",
        "5",
        "--backend",
        backend,
        "--dtype",
        "float32",
        "--precision",
        "fp32",
        home=home,
    )
    scored = open_cache(Path(out.stdout.strip().splitlines()[-1]))
    generated = {r.key: r for r in open_cache(vllm_cache)}
    assert sorted(scored.keys()) == sorted(generated)
    for rec in scored:
        ref = generated[rec.key]
        np.testing.assert_array_equal(rec.completion_ids, ref.completion_ids)
        np.testing.assert_array_equal(rec.topk_ids, ref.topk_ids)
        np.testing.assert_allclose(rec.topk_logprobs, ref.topk_logprobs, atol=1e-4, rtol=0)
        np.testing.assert_allclose(rec.sampled_logprobs, ref.sampled_logprobs, atol=1e-4, rtol=0)
        assert rec.meta["answer"] == ref.meta["answer"] and rec.meta["finish_reason"] == ref.meta["finish_reason"]


@pytest.mark.vllm
def test_score_extra_samples_are_draws_from_the_tempered_teacher(
    vllm_cache: Path, tiny_model: Path, home: Path
) -> None:
    """`score --extra-samples 64 --extra-temperature 2`: tokens drawn from softmax(logits / 2), their logprobs there."""
    from transformers import AutoModelForCausalLM

    args = ["score", "--teacher", str(tiny_model), "--traces", str(vllm_cache), "--top-k", "5", "--dtype", "float32"]
    refused = distill(*args, "--extra-samples", "4", home=home, check=False)
    assert refused.returncode == 1 and "vLLM does not expose" in refused.stderr and "--backend hf" in refused.stderr
    assert "Traceback" not in refused.stderr
    out = distill(*args, "--backend", "hf", "--extra-samples", "64", "--extra-temperature", "2", home=home)
    cache = open_cache(Path(out.stdout.strip().splitlines()[-1]))
    assert (cache.spec.extra_k, cache.spec.extra_temperature) == (64, 2.0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    drawn, expected = [], []
    for rec in cache:
        ids = torch.from_numpy(np.concatenate([rec.prompt_ids, rec.completion_ids]).astype(np.int64))[None]
        p, t = len(rec.prompt_ids), len(rec.completion_ids)
        with torch.no_grad():
            tempered = torch.log_softmax(model(ids).logits[0, p - 1 : p - 1 + t].float() / 2.0, -1).numpy()  # (T, V)
        np.testing.assert_allclose(np.take_along_axis(tempered, rec.extra_ids, 1), rec.extra_logprobs, atol=1e-4)
        drawn.append(rec.extra_logprobs.mean(1))  # E_{x~p_τ}[log p_τ(x)] = −H(p_τ) if the draws come from p_τ
        expected.append((np.exp(tempered) * tempered).sum(1))
    drawn, expected = np.concatenate(drawn), np.concatenate(expected)
    # drawn at τ = 1 instead, the mean log p_2 of the draws would sit well above −H(p_2): 4 standard errors
    err = drawn.std() / np.sqrt(64 * len(drawn))
    assert abs(drawn.mean() - expected.mean()) < 4 * err + 1e-3


@pytest.mark.vllm
def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(
    vllm_cache: Path, tiny_model: Path, prompts_file: Path, home: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "killed"
    args = [
        sys.executable,
        "-m",
        "distill",
        "generate",
        "--teacher",
        str(tiny_model),
        "--prompts",
        str(prompts_file),
        "--mapping",
        "gsm8k",
        *GEN_ARGS,
        "--out",
        str(out_dir),
        "--shard-size-mb",
        "0.0005",
    ]
    env = {**os.environ, "DISTILL_HOME": str(home)}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while not (out_dir / "index.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # as soon as the first shard is listed: mid-run
    proc.wait()
    partial = open_cache(out_dir, allow_incomplete=True)
    assert not partial.complete and 0 < len(partial) < 12

    rerun = subprocess.run(args, capture_output=True, text=True, env=env)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming" in rerun.stderr
    resumed, whole = open_cache(out_dir), open_cache(vllm_cache)
    keys = resumed.keys()
    assert len(keys) == len(set(keys)) == 12 and set(keys) == set(whole.keys())
    assert resumed.verify() == []
    same_text = {r.key: r.completion_ids.tolist() for r in whole} == {r.key: r.completion_ids.tolist() for r in resumed}
    print(f"resumed run reproduces the uninterrupted run's texts: {same_text}")
    assert same_text  # per-(prompt, sample) seeds: a resumed sample is the sample it would have been


@pytest.mark.slow
def test_sigterm_keeps_the_finished_records_and_the_rerun_completes_without_duplicates(
    tiny_model: Path, prompts_file: Path, home: Path, tmp_path: Path
) -> None:
    common = ["generate", "--teacher", str(tiny_model), "--prompts", str(prompts_file), "--mapping", "gsm8k"]
    args = [*common, *GEN_ARGS, "--backend", "hf", "--shard-size-mb", "0.0005"]
    whole = distill(*args, "--out", str(tmp_path / "whole"), home=home)
    assert whole.returncode == 0
    out = tmp_path / "stopped"
    env = {**os.environ, "DISTILL_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "distill", *args, "--out", str(out)], stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.time() + 120
    while not (out / "index.json").exists():  # the first shard is listed: mid-run
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first shard"
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143 and "Traceback" not in err, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: interrupted by SIGTERM")
    assert "the same command continues it: distill generate" in line
    partial = open_cache(out, allow_incomplete=True)
    assert not partial.complete and 0 < len(partial) < 12 and partial.verify() == []  # finished records, all whole

    rerun = distill(*args, "--out", str(out), home=home)
    assert "resuming" in rerun.stderr
    resumed, reference = open_cache(out), open_cache(tmp_path / "whole")
    assert sorted(resumed.keys()) == sorted(set(resumed.keys())) == sorted(reference.keys())
    assert {r.key: r.completion_ids.tolist() for r in resumed} == {r.key: r.completion_ids.tolist() for r in reference}


def test_two_slices_merged_equal_one_run(tiny_model: Path, prompts_file: Path, tmp_path: Path) -> None:
    common = dict(
        teacher=str(tiny_model),
        prompts=str(prompts_file),
        samples_per_prompt=2,
        max_new_tokens=8,
        top_k=3,
        temperature=1.0,
        backend="hf",
        dtype="float32",
    )
    slices = [run_generate(GenerateConfig(**common, shard_index=i, num_shards=2)) for i in range(2)]
    sliced_keys = [set(open_cache(s).keys()) for s in slices]
    assert not sliced_keys[0] & sliced_keys[1]
    merged = merge_caches(slices)
    whole = plan(GenerateConfig(**common))
    assert merged.name == whole.key  # the merge is what one run would have made: a rerun is a cache hit
    assert set(open_cache(merged).keys()) == {(str(i), s) for i in range(6) for s in range(2)}
    assert run_generate(GenerateConfig(**common)) == merged
    other = run_generate(GenerateConfig(**{**common, "temperature": 0.9}, shard_index=1, num_shards=2))
    with pytest.raises(DistillError, match="differ in sampling"):
        merge_caches([slices[0], other])


# ---------------------------------------------------------------------------------------------
# bad input: one sentence, non-zero exit, nothing that looks like a cache left behind


def no_caches(home: Path) -> bool:
    return not list((home / "caches").glob("*/index.json")) if (home / "caches").exists() else True


def test_unknown_teacher_lists_presets(prompts_file: Path, tmp_path: Path) -> None:
    out = distill(
        "generate", "--teacher", "r1-distill-qwen-70b", "--prompts", str(prompts_file), home=tmp_path, check=False
    )
    assert out.returncode == 1 and "Unknown model 'r1-distill-qwen-70b'" in out.stderr and "qwq-32b" in out.stderr
    assert "Traceback" not in out.stderr and no_caches(tmp_path)


def test_missing_prompt_field_names_columns(tiny_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "2+2", "gold": "4"}\n')
    out = distill("generate", "--teacher", str(tiny_model), "--prompts", str(bad), home=tmp_path, check=False)
    assert out.returncode == 1 and "No prompt field" in out.stderr and "columns found: text, gold" in out.stderr
    out = distill(
        "generate",
        "--teacher",
        str(tiny_model),
        "--prompts",
        str(bad),
        "--prompt-field",
        "question",
        home=tmp_path,
        check=False,
    )
    assert out.returncode == 1 and "'question' is not in" in out.stderr


def test_empty_prompt_set(tiny_model: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = distill("generate", "--teacher", str(tiny_model), "--prompts", str(empty), home=tmp_path, check=False)
    assert out.returncode == 1 and "is empty" in out.stderr and no_caches(tmp_path)


@pytest.mark.slow
def test_top_k_larger_than_vocabulary(tiny_model: Path, prompts_file: Path, tmp_path: Path) -> None:
    out = distill(
        "generate",
        "--teacher",
        str(tiny_model),
        "--prompts",
        str(prompts_file),
        "--top-k",
        "100000",
        home=tmp_path,
        check=False,
    )
    assert out.returncode == 1 and "larger than the teacher's vocabulary (512 tokens)" in out.stderr
    assert no_caches(tmp_path) and not list((tmp_path / "caches").glob("*"))


@pytest.mark.slow
def test_tokenizer_without_chat_template(tiny_model: Path, prompts_file: Path, tmp_path: Path) -> None:
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    out = distill("generate", "--teacher", str(bare), "--prompts", str(prompts_file), home=tmp_path, check=False)
    assert out.returncode == 1 and "has no chat template" in out.stderr and no_caches(tmp_path)


@pytest.mark.parametrize("mode", ["skip", "fail"])
def test_prompt_longer_than_context(tiny_model: Path, prompts_file: Path, tmp_path: Path, mode: str) -> None:
    long = tmp_path / "long.jsonl"
    long.write_text(
        json.dumps({"question": "short?", "answer": "1"})
        + "\n"
        + json.dumps({"question": "very long " * 200, "answer": "2"})
        + "\n"
    )
    cfg = GenerateConfig(
        teacher=str(tiny_model),
        prompts=str(long),
        max_new_tokens=4,
        top_k=2,
        backend="hf",
        max_model_len=256,
        long_prompts=mode,
    )
    if mode == "fail":
        with pytest.raises(DistillError, match="1 prompts .first: 1. are at least 256 tokens"):
            run_generate(cfg)
        assert no_caches(tmp_path / "distill-home")
        return
    cache = open_cache(run_generate(cfg))
    assert cache.keys() == [("0", 0)] and cache.provenance["skipped_prompts"] == ["1"]


# ---------------------------------------------------------------------------------------------
# generate without logprobs → select → score only the survivors; scoring a trace file


def test_top_k_0_then_score_only_the_selected_traces(tiny_model: Path, prompts_file: Path) -> None:
    from distill.cache import write_view
    from distill.score import ScoreConfig, run_score

    cheap = open_cache(
        run_generate(
            GenerateConfig(
                teacher=str(tiny_model),
                prompts=str(prompts_file),
                top_k=0,
                samples_per_prompt=2,
                max_new_tokens=8,
                backend="hf",
                dtype="float32",
                precision="fp32",
            )
        )
    )
    assert cheap.spec.top_k == 0 and cheap[0].topk_ids.shape == (8, 0)
    assert np.isfinite(cheap[0].sampled_logprobs).all()  # the trace token's logprob comes for free
    write_view(cheap, "survivors", [1, 4, 7])
    scored = open_cache(
        run_score(
            ScoreConfig(
                teacher=str(tiny_model),
                traces=str(cheap.path),
                view="survivors",
                top_k=4,
                backend="hf",
                dtype="float32",
                precision="fp32",
            )
        )
    )
    assert sorted(scored.keys()) == sorted(cheap.keys()[i] for i in (1, 4, 7))
    by_key = {r.key: r for r in cheap}
    for rec in scored:
        np.testing.assert_array_equal(rec.completion_ids, by_key[rec.key].completion_ids)
        np.testing.assert_allclose(rec.sampled_logprobs, by_key[rec.key].sampled_logprobs, atol=1e-4, rtol=0)


def test_score_a_trace_file(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from distill.score import ScoreConfig, run_score

    traces = tmp_path / "traces.jsonl"
    traces.write_text(
        json.dumps(
            {"problem": "What is 2 + 3?", "answer": "5", "completion": "<think>\nadd 2 and 3</think> \\boxed{5}"}
        )
        + "\n"
    )
    cache = open_cache(
        run_score(ScoreConfig(teacher=str(tiny_model), traces=str(traces), top_k=3, backend="hf", dtype="float32"))
    )
    tok = AutoTokenizer.from_pretrained(tiny_model)
    rec = cache[0]
    assert tok.decode(rec.completion_ids) == "<think>\nadd 2 and 3</think> \\boxed{5}<|im_end|>"
    assert tok.decode(rec.prompt_ids).endswith("<|im_start|>assistant\n")  # the trace opens its own <think>
    assert rec.meta["answer"] == "5" and rec.topk_ids.shape == (len(rec.completion_ids), 3)
    # the same trace as a chat (a system turn, an earlier exchange): the same record
    chat = tmp_path / "chat.jsonl"
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "<think>\nadd 2 and 3</think> \\boxed{5}"},
    ]
    chat.write_text(json.dumps({"messages": messages, "answer": "5"}) + "\n")
    twin = open_cache(
        run_score(ScoreConfig(teacher=str(tiny_model), traces=str(chat), top_k=3, backend="hf", dtype="float32"))
    )[0]
    np.testing.assert_array_equal(twin.prompt_ids, rec.prompt_ids)
    np.testing.assert_array_equal(twin.completion_ids, rec.completion_ids)
    assert twin.meta["question"] == "What is 2 + 3?" and twin.meta["answer"] == "5"
    missing = tmp_path / "nocompletion.jsonl"
    missing.write_text(json.dumps({"problem": "x", "text": "y"}) + "\n")
    with pytest.raises(DistillError, match="No completion field.*columns found: problem, text"):
        run_score(ScoreConfig(teacher=str(tiny_model), traces=str(missing), top_k=3, backend="hf"))
