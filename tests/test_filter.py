"""`distill filter` end to end: a cache of known-correct and known-wrong traces, the view and its report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from distill.cache import CacheSpec, CacheWriter, Record, list_views, load_view, open_cache
from distill.errors import DistillError
from distill.filter import FilterConfig, run_filter
from distill.verify import MAX_DEFAULT_WORKERS, default_workers
from distill.verify.pool import TimeoutPool

# (prompt id, sample, completion after the primed "<think>\n", gold, finish reason)
TRACES = [
    ("p0", 0, "2 + 2 = 4</think> \\boxed{4}", "4", "stop"),
    ("p0", 1, "2 + 2 = 5</think> \\boxed{5}", "4", "stop"),
    ("p0", 2, "four</think> The answer: \\boxed{4}", "4", "stop"),
    ("p1", 0, "half of one</think> \\boxed{\\frac{1}{2}}", "0.5", "stop"),
    ("p1", 1, "half of one, thinking forever and", "0.5", "length"),
    ("p2", 0, "no idea</think> maybe 7", "7", "stop"),
    ("p2", 1, "7</think> \\boxed{7}</think>", "7", "stop"),
    ("p3", 0, "10 - 3</think> \\boxed{7}", "7", "stop"),
]
EXPECTED_MATH = [True, False, True, True, False, False, False, True]  # p2/1: nothing after the last </think>
EXPECTED_FORMAT = [True, True, True, True, False, True, False, True]


def write_cache(model: Path, path: Path, traces: list[tuple], question: dict[str, str] | None = None) -> Path:
    """A cache of `traces` (as TRACES) with a chat-rendered prompt each; `question` adds meta["question"]."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    writer = CacheWriter(
        path, CacheSpec(top_k=2, vocab_size=len(tok)), key="filter-test", provenance={"teacher": "tiny"}
    )
    rng = np.random.default_rng(0)
    for pid, s, text, gold, finish in traces:
        q = (question or {}).get(pid, f"question {pid}")
        prompt = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if finish == "stop" else [])
        t = len(ids)
        meta = {"prompt_id": pid, "sample_index": s, "answer": gold, "finish_reason": finish}
        writer.append(
            Record(
                prompt_ids=np.asarray(tok(prompt + "<think>\n", add_special_tokens=False)["input_ids"], np.int32),
                completion_ids=np.asarray(ids, np.int32),
                topk_ids=np.stack([ids, [(i + 1) % len(tok) for i in ids]], axis=1).astype(np.int32),
                topk_logprobs=np.tile([-0.1, -2.5], (t, 1)).astype(np.float32),
                sampled_logprobs=rng.uniform(-2, 0, t).astype(np.float32),
                meta=meta | ({"question": q} if question else {}),
            )
        )
    return writer.finish(tokenizer=tok)


@pytest.fixture
def cache(tiny_model: Path, tmp_path: Path) -> Path:
    return write_cache(tiny_model, tmp_path / "cache", TRACES)


def test_view_holds_exactly_the_passing_records_and_the_report_agrees(cache: Path) -> None:
    report = run_filter(FilterConfig(cache=str(cache), verifiers="math,format", name="ok", workers=2))
    view = load_view(open_cache(cache), "ok")
    passing = [i for i, (m, f) in enumerate(zip(EXPECTED_MATH, EXPECTED_FORMAT, strict=True)) if m and f]
    assert view.kept == passing == [0, 2, 3, 7]
    assert report["passed"] == report["kept"] == len(passing) and report["records"] == len(TRACES)
    assert report["failed"] == len(TRACES) - len(passing) and report["unknown"] == 0
    assert report["per_verifier"] == {"math": sum(EXPECTED_MATH) / 8, "format": sum(EXPECTED_FORMAT) / 8}
    assert report["per_verifier_unknown"] == {"math": 0.0, "format": 0.0}
    assert report["prompts_with_a_correct_sample"] == 3 and report["prompts"] == 4
    assert report["truncation_rate"] == 1 / 8
    verdicts = view.extra["verdicts"]
    assert verdicts["1"]["math"][0] == "failed" and "wrong answer" in verdicts["1"]["math"][1]
    assert verdicts["0"] == {"math": ["passed", "correct"], "format": ["passed", "well formed"]}
    assert sum(report["reasons"].values()) == (8 - sum(EXPECTED_MATH)) + (8 - sum(EXPECTED_FORMAT))
    assert list_views(cache) == {"ok": 4}


def test_records_without_a_gold_answer_are_counted_unknown_not_failed(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    traces = [
        ("p0", 0, "2 + 2 = 4</think> \\boxed{4}", "4", "stop"),  # passed
        ("p0", 1, "2 + 2 = 5</think> \\boxed{5}", "4", "stop"),  # failed
        ("p1", 0, "3 + 3 = 6</think> \\boxed{6}", None, "stop"),  # unknown: nothing to compare with
        ("p1", 1, "3 + 3 = 6, and on and on", None, "length"),  # failed (format), though math is unknown
    ]
    path = write_cache(tiny_model, tmp_path / "gold", traces)
    report = run_filter(FilterConfig(cache=str(path), verifiers="math,format", name="g", workers=1))
    view = load_view(open_cache(path), "g")
    assert view.kept == [0]  # an unknown record is not kept
    assert (report["passed"], report["failed"], report["unknown"]) == (1, 2, 1)
    assert report["pass_rate"] == 1 / 4 and report["unknown_rate"] == 1 / 4
    assert report["per_verifier"] == {"math": 1 / 4, "format": 3 / 4}
    assert report["per_verifier_unknown"] == {"math": 2 / 4, "format": 0.0}
    assert [view.extra["verdicts"][str(i)]["math"][0] for i in range(4)] == ["passed", "failed", "unknown", "unknown"]
    assert report["reasons"]["math (unknown): no gold answer to compare with"] == 2
    printed = capsys.readouterr().out
    assert "passed 1 (25.0%), failed 2, unknown 1 (25.0%, could not be checked), kept 1" in printed
    assert "math 25.0% (unknown 50.0%)" in printed


def test_keep_first_and_best_of_n(cache: Path) -> None:
    run_filter(FilterConfig(cache=str(cache), verifiers="math", name="first", keep="first", workers=1))
    assert load_view(open_cache(cache), "first").kept == [0, 3, 7]  # one per prompt that has a pass
    run_filter(FilterConfig(cache=str(cache), verifiers="math", name="best", keep="best-of-n", workers=1))
    best = load_view(open_cache(cache), "best").kept
    assert len(best) == 3 and {TRACES[i][0] for i in best} == {"p0", "p1", "p3"}


def test_best_of_n_scores_a_flat_teacher_by_its_trace_logprobs(tiny_model: Path, tmp_path: Path) -> None:
    """Sample 0 has a teacher flat over 151,936 tokens (trace logprob −11.9 a token), sample 1 a confident teacher
    whose trace tokens are outside its top-2 (−13 a token). Before format 3, the flat top-2's mass (1.3e-5) decoded
    as 0 and sample 0 scored −inf."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    vocab = 151_936
    writer = CacheWriter(tmp_path / "c", CacheSpec(top_k=2, vocab_size=vocab), key="flat", provenance={})
    for s, text in enumerate(["2 + 2 = 4</think> \\boxed{4}", "four</think> The answer: \\boxed{4}"]):
        ids = np.asarray(tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id], np.int32)
        flat = s == 0
        top = (
            np.stack([ids, ids + 1], 1) if flat else np.tile(np.array([vocab - 2, vocab - 1], np.int32), (len(ids), 1))
        )
        lp = np.tile([-np.log(vocab)] * 2 if flat else [-0.5, -1.5], (len(ids), 1)).astype(np.float32)
        sampled = np.full(len(ids), -np.log(vocab) if flat else -13.0, np.float32)
        meta = {"prompt_id": "p0", "sample_index": s, "answer": "4", "finish_reason": "stop"}
        writer.append(Record(np.array([1, 2], np.int32), ids, top.astype(np.int32), lp, sampled, meta))
    writer.finish(tokenizer=tok)
    run_filter(FilterConfig(cache=str(tmp_path / "c"), verifiers="math", name="best", keep="best-of-n", workers=1))
    assert load_view(open_cache(tmp_path / "c"), "best").kept == [0]
    assert np.isfinite(open_cache(tmp_path / "c")[0].sampled_logprobs).all()


@pytest.mark.slow
def test_cli_and_bad_input(cache: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "distill", "filter", str(cache), "--verifiers", "math", "--name", "m"],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "view 'm': 4 of 8 records kept" in out.stdout
    assert json.loads((cache / "views" / "m.json").read_text())["report"]["passed"] == 4
    with pytest.raises(DistillError, match="unknown verifier.*vibes.*known: math, code"):
        run_filter(FilterConfig(cache=str(cache), verifiers="math,vibes"))
    with pytest.raises(DistillError, match="--keep must be one of"):
        run_filter(FilterConfig(cache=str(cache), keep="some"))


def test_the_default_worker_count_respects_the_cap(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    many = set(range(4 * MAX_DEFAULT_WORKERS))  # a big node: more cores than sympy workers are worth
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: many, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: len(many))
    asked: list[int] = []
    real_map = TimeoutPool.map

    def spy(self: TimeoutPool, items: list, timeout: float, workers: int, progress: object = None) -> list:
        asked.append(workers)
        return real_map(self, items, timeout=timeout, workers=workers, progress=progress)

    monkeypatch.setattr(TimeoutPool, "map", spy)
    assert default_workers() == MAX_DEFAULT_WORKERS
    report = run_filter(FilterConfig(cache=str(cache), verifiers="math", name="default-workers"))
    assert asked == [MAX_DEFAULT_WORKERS] and report["passed"] == sum(EXPECTED_MATH)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert default_workers() == 2


def _no_tokenizer_files(tok: Path) -> None:
    for f in tok.iterdir():
        f.unlink()


def _corrupt_tokenizer_json(tok: Path) -> None:
    (tok / "tokenizer.json").write_text('{"version": "1.0", "model": ')


def _no_tokenizer_json(tok: Path) -> None:  # transformers then loads the special tokens alone, without a word
    (tok / "tokenizer.json").unlink()


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_no_tokenizer_files, _corrupt_tokenizer_json, _no_tokenizer_json])
def test_a_damaged_saved_tokenizer_is_one_sentence_and_no_view(cache: Path, damage: Callable[[Path], None]) -> None:
    damage(cache / "tokenizer")
    out = subprocess.run(
        [sys.executable, "-m", "distill", "filter", str(cache), "--verifiers", "math", "--name", "m"],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    [sentence] = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert f"tokenizer saved with cache {cache}" in sentence
    assert f"copy the teacher's tokenizer files (tokenizer.json, tokenizer_config.json) into {cache / 'tokenizer'}" in (
        sentence
    )
    assert list_views(cache) == {} and not (cache / "views").exists()


def test_lang_judges_the_reasoning_against_the_question_script(tiny_model: Path, tmp_path: Path) -> None:
    zh = "一个数加上它自己的一半等于十五，这个数是多少？"
    reasoning_zh = "设这个数为未知数，它加上自己的一半就是它的一点五倍，一点五倍等于十五，所以这个数等于十"
    reasoning_mixed = (
        "Let the number be unknown. Adding half of the number to the number itself gives three halves of "
        "the number, and three halves of the number equals fifteen, therefore the number equals fifteen "
        "divided by three halves which gives exactly ten, 所以"
    )
    traces = [
        ("zh", 0, f"{reasoning_zh}</think> \\boxed{{10}}", "10", "stop"),
        ("zh", 1, f"{reasoning_mixed}</think> \\boxed{{10}}", "10", "stop"),
        ("en", 0, f"{reasoning_mixed}</think> \\boxed{{10}}", "10", "stop"),
    ]
    path = write_cache(
        tiny_model, tmp_path / "zh", traces, question={"zh": zh, "en": "What number plus half itself is 15?"}
    )
    report = run_filter(FilterConfig(cache=str(path), verifiers="lang", name="lang", workers=1))
    view = load_view(open_cache(path), "lang")
    # the gold answer "10" has no script: judged against it, the Chinese reasoning would fail as "not latin"
    assert view.kept == [0, 2] and report["passed"] == 2
    assert "not cjk" in view.extra["verdicts"]["1"]["lang"][1]
