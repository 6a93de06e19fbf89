"""Prompt sources on the real benchmark files in shared/data, and rendering in the R1 convention."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distill.errors import DistillError
from distill.presets import R1_INSTRUCTION
from distill.prompts import load_prompts, load_traces, render_prompt, shard_slice
from distill.verify import last_boxed

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_gsm8k_mapping_parses_the_gold_after_hashes() -> None:
    prompts, where = load_prompts(str(DATA / "gsm8k_test.jsonl"), mapping="gsm8k")
    assert len(prompts) == 1319 and where.endswith("gsm8k_test.jsonl")
    assert prompts[0]["answer"] == "18" and prompts[0]["prompt"].startswith("Janet")
    assert all("####" not in p["answer"] and "," not in p["answer"] for p in prompts)
    assert [p["id"] for p in prompts[:3]] == ["0", "1", "2"]  # row numbers: stable under --limit and slicing


def test_math500_and_aime_fields_are_detected() -> None:
    math500, _ = load_prompts(str(DATA / "math500.jsonl"), limit=5)
    assert len(math500) == 5 and math500[0]["answer"].startswith("\\left( 3")
    aime, _ = load_prompts(str(DATA / "aime24.jsonl"))
    assert len(aime) == 30 and all(p["answer"].isdigit() for p in aime)  # integers in the file, strings here
    assert json.loads((DATA / "aime24.jsonl").read_text().splitlines()[0])["answer"] == int(aime[0]["answer"])


def test_csv_parquet_json_and_id_column(tmp_path: Path) -> None:
    rows = [
        {"uuid": "a1", "problem": "1+1?", "solution": "so \\boxed{2}"},
        {"uuid": "b2", "problem": "2+2?", "solution": "4"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    (tmp_path / "p.json").write_text(json.dumps(rows))
    (tmp_path / "p.csv").write_text("uuid,problem,solution\na1,1+1?,2\nb2,2+2?,4\n")
    for name in ("p.parquet", "p.json", "p.csv"):
        prompts, _ = load_prompts(str(tmp_path / name))
        assert [p["id"] for p in prompts] == ["a1", "b2"] and prompts[1]["prompt"] == "2+2?"
    numina, _ = load_prompts(str(tmp_path / "p.parquet"), mapping="numinamath")
    assert numina[0]["answer"] == "2"  # NuminaMath's gold is the last \boxed{} of its solution


def test_bad_sources_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(DistillError, match="does not exist"):
        load_prompts(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DistillError, match="not a file, a built-in set"):
        load_prompts("nonsense")
    with pytest.raises(DistillError, match="Unknown mapping 'gsm9k'"):
        load_prompts(str(DATA / "aime24.jsonl"), mapping="gsm9k")
    with pytest.raises(DistillError, match="Cannot load dataset openai/gsm8k"):
        load_prompts("gsm8k")  # the real hub loader, offline here: fails at once with the fix


def test_traces_from_columns_and_from_chats(tmp_path: Path) -> None:
    rows = [
        {"problem": "1 + 1?", "answer": "2", "response": "<think>\n1 + 1</think> \\boxed{2}"},
        {"problem": "2 + 2?", "answer": "4", "response": "<think>\n2 + 2</think> \\boxed{4}"},
    ]
    (tmp_path / "flat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def openai(r: dict) -> dict:
        turns = [{"role": "user", "content": r["problem"]}, {"role": "assistant", "content": r["response"]}]
        return {"messages": turns, "answer": r["answer"]}

    def sharegpt(r: dict) -> dict:
        turns = [("system", "Be brief."), ("human", r["problem"]), ("gpt", r["response"])]
        return {"conversations": [{"from": f, "value": v} for f, v in turns], "answer": r["answer"]}

    (tmp_path / "openai.jsonl").write_text("".join(json.dumps(openai(r)) + "\n" for r in rows))
    (tmp_path / "sharegpt.jsonl").write_text("".join(json.dumps(sharegpt(r)) + "\n" for r in rows))
    want = [
        {"id": str(i), "prompt": r["problem"], "answer": r["answer"], "completion": r["response"]}
        for i, r in enumerate(rows)
    ]
    for name in ("flat", "openai", "sharegpt"):
        assert load_traces(str(tmp_path / f"{name}.jsonl"))[0] == want, name
    assert load_traces(str(tmp_path / "openai.jsonl"), limit=1)[0] == want[:1]

    (tmp_path / "unanswered.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DistillError, match="The chat in row 0 of .*unanswered.jsonl has no user turn followed by"):
        load_traces(str(tmp_path / "unanswered.jsonl"))
    with pytest.raises(DistillError, match="No completion field .*columns found: problem, answer, response"):
        load_traces(str(tmp_path / "flat.jsonl"), completion_field="output")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DistillError, match="Trace source .*empty.jsonl is empty"):
        load_traces(str(tmp_path / "empty.jsonl"))


def test_shards_are_disjoint_and_cover_everything() -> None:
    prompts = [{"id": str(i)} for i in range(10)]
    parts = [shard_slice(prompts, i, 3) for i in range(3)]
    ids = [p["id"] for part in parts for p in part]
    assert sorted(ids, key=int) == [str(i) for i in range(10)] and len(set(ids)) == 10
    with pytest.raises(DistillError, match="--shard-index"):
        shard_slice(prompts, 3, 3)


def test_render_follows_the_r1_convention(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = render_prompt(tok, "What is 2+2?", R1_INSTRUCTION, None, "<think>\n")
    assert text == f"<|im_start|>user\nWhat is 2+2?\n{R1_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n<think>\n"
    math500, _ = load_prompts(str(DATA / "math500.jsonl"), limit=1)  # its prompt already carries the instruction
    assert render_prompt(tok, math500[0]["prompt"], R1_INSTRUCTION, None, "").count(R1_INSTRUCTION) == 1
    tok.chat_template = tok.chat_template + "{% if add_generation_prompt %}<think>\n{% endif %}"
    assert render_prompt(tok, "x", R1_INSTRUCTION, "Be brief.", "<think>\n").count("<think>") == 1
    assert "<|im_start|>system\nBe brief." in render_prompt(tok, "x", "", "Be brief.", "")


@pytest.mark.parametrize(
    ("solution", "gold"),
    [
        ("a \\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces, the last box
        ("so the answer is \\boxed {\\frac{1}{2}}.", "\\frac{1}{2}"),  # a space before the brace
        ("hence \\fbox{7}", "7"),
        ("so $\\boxed 5$", "5"),
        ("the set \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
        ("\\boxed{ 3 } and a dangling \\boxed{", "3"),  # stripped; a box that never closes is no gold
        ("none", None),
    ],
)
def test_numinamath_gold_is_the_verifiers_last_box(tmp_path: Path, solution: str, gold: str | None) -> None:
    """The prompt loader reads a solution's boxed gold with the math verifier's parser, not a weaker copy."""
    (tmp_path / "p.jsonl").write_text(json.dumps({"problem": "?", "solution": solution}) + "\n")
    prompts, _ = load_prompts(str(tmp_path / "p.jsonl"), mapping="numinamath")
    assert prompts[0]["answer"] == gold == last_boxed(solution)
