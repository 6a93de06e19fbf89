"""`distill eval`: the metrics against a hand count, and a real run on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from distill.evaluate import EvalConfig, majority, pass_at_k, run_eval, score_problems
from distill.verify import verify_batch


def box(x: str) -> str:
    return f"<think>\nwork\n</think>\n\\boxed{{{x}}}"


def test_metrics_agree_with_a_hand_count() -> None:
    problems = [{"id": "a", "answer": "4"}, {"id": "b", "answer": "1/2"}, {"id": "c", "answer": "7"}]
    texts = [
        [box("4"), box("5"), box("4"), "<think>\nno answer\n</think>"],  # 2 of 4 right; vote 4 → right
        [box("0.5"), box("\\frac{1}{2}"), box("1"), box("1")],  # 2 of 4; vote "1" (2 votes, first) → wrong
        [box("8"), box("8"), box("8"), box("8")],  # 0 of 4
    ]
    verdicts = [verify_batch("math", ts, [q["answer"]] * 4, workers=2) for q, ts in zip(problems, texts, strict=True)]
    result = score_problems(problems, texts, verdicts)
    s = result["summary"]
    # by hand: pass@1 = (2/4 + 2/4 + 0) / 3; cons@4 = (1 + 0 + 0) / 3
    assert s["pass@1"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert s["cons@4"] == pytest.approx(1 / 3)
    # pass@2 per problem = 1 - C(2,2)/C(4,2) = 5/6 for the first two, 0 for the last
    assert s["pass@2"] == pytest.approx((5 / 6 + 5 / 6 + 0) / 3)
    assert s["pass@4"] == pytest.approx(2 / 3)
    rows = {r["id"]: r for r in result["problems"]}
    assert rows["b"]["majority_answer"] == "1" and not rows["b"]["cons"] and rows["a"]["correct"] == 2
    assert rows["a"]["samples"][3]["extracted"] is None


def test_unknown_samples_are_reported_apart_and_count_as_not_passed() -> None:
    problems = [{"id": "a", "answer": "4"}, {"id": "no-gold", "answer": None}]
    texts = [[box("4"), box("5")], [box("4"), box("4")]]
    verdicts = [verify_batch("math", ts, [q["answer"]] * 2, workers=1) for q, ts in zip(problems, texts, strict=True)]
    result = score_problems(problems, texts, verdicts)
    s = result["summary"]
    assert s["unknown"] == 2 and s["unknown_rate"] == 2 / 4
    assert s["pass@1"] == pytest.approx((1 / 2 + 0) / 2) and s["cons@2"] == pytest.approx(1 / 2)  # unknown: not passed
    rows = {r["id"]: r for r in result["problems"]}
    assert (rows["a"]["unknown"], rows["no-gold"]["unknown"], rows["no-gold"]["correct"]) == (0, 2, 0)
    assert [x["status"] for x in rows["a"]["samples"] + rows["no-gold"]["samples"]] == [
        "passed",
        "failed",
        "unknown",
        "unknown",
    ]


def test_pass_at_k_and_majority() -> None:
    assert pass_at_k(10, 0, 1) == 0 and pass_at_k(10, 10, 5) == 1 and pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))
    assert majority(["2", "3", "3", "2"]) == "2" and majority([None, None]) is None


def test_eval_runs_end_to_end_on_the_arith_task(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    result = run_eval(
        EvalConfig(
            model=str(tiny_model),
            prompts="arith:test",
            samples=2,
            max_new_tokens=12,
            backend="hf",
            limit=3,
            out=out,
            dtype="float32",
        )
    )
    saved = json.loads(out.read_text())
    assert saved["summary"]["problems"] == 3 and saved["summary"]["samples"] == 2
    assert (
        len(saved["problems"][0]["samples"]) == 2 and saved["problems"][0]["answer"] == result["problems"][0]["answer"]
    )
    assert saved["summary"]["pass@1"] == pytest.approx(sum(p["pass@1"] for p in saved["problems"]) / 3)
    assert saved["summary"]["unknown"] == 0 and saved["summary"]["unknown_rate"] == 0  # every arith problem has a gold


def test_completions_keep_their_think_block_for_the_verifiers(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    from distill.models.tokenizer import decode_completion
    from distill.verify import VERIFIERS

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt = tok("<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n")["input_ids"]
    completion = tok("2 + 2 = 4\n</think>\nso \\boxed{4}<|im_end|>")["input_ids"]
    text = decode_completion(tok, completion, prompt)
    assert text == "<think>\n2 + 2 = 4\n</think>\nso \\boxed{4}"  # </think> is a special token: kept
    assert VERIFIERS["format"](text, None).passed and VERIFIERS["math"](text, "4").passed


def test_eval_with_the_format_verifier_judges_the_finish_reason(tmp_path: Path) -> None:
    def run(max_new_tokens: int) -> dict:
        cfg = EvalConfig(model="arith-teacher", prompts="arith:test", samples=1, max_new_tokens=max_new_tokens,
                         backend="hf", limit=3, verifier="format", dtype="float32")  # fmt: skip
        return run_eval(cfg)

    cut = run(4)  # the bundled teacher's traces are longer: every completion is cut at the limit
    assert cut["summary"]["pass@1"] == 0
    assert all(p["samples"][0]["reason"].startswith("truncated at the length limit") for p in cut["problems"])
    assert run(200)["summary"]["pass@1"] == 1  # room to finish: the teacher's traces are well formed


def test_the_printed_table_reports_unknown_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "no_gold.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"What is {i} + {i}?"}) + "\n" for i in range(2)))
    cfg = EvalConfig(model="arith-teacher", prompts=str(prompts), samples=1, max_new_tokens=8, backend="hf",
                     dtype="float32")  # fmt: skip
    summary = run_eval(cfg)["summary"]
    assert summary["unknown"] == 2 and summary["pass@1"] == 0  # no gold answers: nothing could be checked
    assert "unknown    100.0  (2 samples could not be checked)" in capsys.readouterr().out


def test_a_context_too_short_for_max_new_tokens_is_said_and_max_model_len_raises_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A reasoning model whose context leaves less than --max-new-tokens is cut short and scores as wrong: eval says
    so (instead of a silently lower pass@1), and --max-model-len gives it the room."""

    def run(**kw: int) -> dict:
        cfg = EvalConfig(model="arith-teacher", prompts="arith:test", samples=1, max_new_tokens=200, backend="hf",
                         limit=2, verifier="format", dtype="float32", **kw)  # fmt: skip
        return run_eval(cfg)

    short = run(max_model_len=60)  # the rendered prompts are ~40 tokens: ~20 left for a ~50-token trace
    assert short["summary"]["pass@1"] == 0
    assert "leaves 2 of 2 prompts less than --max-new-tokens 200" in capsys.readouterr().err
    assert run(max_model_len=512)["summary"]["pass@1"] == 1
    assert "less than --max-new-tokens" not in capsys.readouterr().err
