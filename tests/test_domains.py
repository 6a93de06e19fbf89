"""A prompt's domain, from every kind of source through generate, score and eval, with no glue in between."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.cache import open_cache
from distill.configs import EvalConfig, GenerateConfig, ScoreConfig
from distill.errors import DistillError
from distill.evaluate import run_eval, score_problems
from distill.generate import run_generate
from distill.prompts import load_prompts, load_traces, record_meta
from distill.score import run_score
from distill.tasks import arith
from distill.verify import Verdict

ROWS = [
    {"id": "a", "prompt": "Compute 2 + 3.", "answer": "5", "domain": "add", "topic": "sums"},
    {"id": "b", "prompt": "Compute 4 * 3.", "answer": "12", "domain": "mul", "topic": "products"},
    {"id": "c", "prompt": "Compute 7 - 1.", "answer": "6", "domain": "add", "topic": "sums"},
]


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "domains.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_sources_keep_their_domain(prompts: Path, tmp_path: Path) -> None:
    assert [q["domain"] for q in load_prompts(str(prompts))[0]] == ["add", "mul", "add"]  # the `domain` column
    named = load_prompts(str(prompts), domain_field="topic")[0]
    assert [q["domain"] for q in named] == ["sums", "products", "sums"]
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"prompt": "x", "answer": "1"}) + "\n")
    assert "domain" not in load_prompts(str(plain))[0][0]
    assert record_meta(load_prompts(str(plain))[0][0]) == {"answer": "1", "question": "x"}  # as before domains
    with pytest.raises(DistillError, match="Domain field 'area' is not in .*columns found: id, prompt, answer"):
        load_prompts(str(prompts), domain_field="area")
    traces = tmp_path / "traces.jsonl"
    traces.write_text("".join(json.dumps({**r, "completion": "\\boxed{1}"}) + "\n" for r in ROWS))
    assert [q["domain"] for q in load_traces(str(traces))[0]] == ["add", "mul", "add"]


def test_the_arith_task_has_two_domains() -> None:
    test = load_prompts("arith:test")[0]
    assert {q["domain"] for q in test} == {"add", "mul"}
    assert all((q["domain"] == "mul") == ("*" in q["prompt"]) for q in test)
    assert sum(q["domain"] == "add" for q in arith.problems("train")) == 2522  # of 4,000
    with pytest.raises(DistillError, match="--domain-field apply to prompt files and datasets, not to the task"):
        load_prompts("arith:test", domain_field="topic")


def test_generate_and_score_keep_the_domain_in_every_record(tiny_model: Path, prompts: Path, tmp_path: Path) -> None:
    run = dict(teacher=str(tiny_model), top_k=3, backend="hf", dtype="float32")
    generated = open_cache(
        run_generate(GenerateConfig(prompts=str(prompts), samples_per_prompt=2, max_new_tokens=6, **run))
    )
    domains = {q["id"]: q["domain"] for q in ROWS}
    assert len(generated) == 6 and all(r.meta["domain"] == domains[r.meta["prompt_id"]] for r in generated)
    rescored = open_cache(run_score(ScoreConfig(traces=str(generated.path), **run)))  # a cache's records keep theirs
    assert all(r.meta["domain"] == domains[r.meta["prompt_id"]] for r in rescored)
    traces = tmp_path / "traces.jsonl"
    traces.write_text("".join(json.dumps({**r, "completion": "\\boxed{1}"}) + "\n" for r in ROWS))
    from_file = open_cache(run_score(ScoreConfig(traces=str(traces), domain_field="topic", **run)))
    assert sorted(r.meta["domain"] for r in from_file) == ["products", "sums", "sums"]
    with pytest.raises(DistillError, match="is a cache: its records keep the domain"):
        run_score(ScoreConfig(traces=str(generated.path), domain_field="topic", **run))


def test_pass_at_1_per_domain() -> None:
    ok, no = Verdict("passed", "", "1"), Verdict("failed", "", "2")
    problems = [{"id": "a", "domain": "add"}, {"id": "b", "domain": "mul"}, {"id": "c", "domain": "add"}, {"id": "d"}]
    verdicts = [[ok, ok], [no, no], [ok, no], [no, ok]]
    s = score_problems(problems, [["\\boxed{1}"] * 2] * 4, verdicts)["summary"]
    assert s["domains"] == {
        "(none)": {"problems": 1, "pass@1": 0.5, "cons@2": 0.0},
        "add": {"problems": 2, "pass@1": 0.75, "cons@2": 1.0},
        "mul": {"problems": 1, "pass@1": 0.0, "cons@2": 0.0},
    }
    assert "domains" not in score_problems([{"id": "x"}], [["\\boxed{1}"]], [[ok]])["summary"]  # none has one


def test_eval_reports_pass_at_1_per_domain(prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval.json"
    cfg = EvalConfig(model="arith-teacher", prompts=str(prompts), samples=2, max_new_tokens=96, backend="hf",
                     dtype="float32", out=out)  # fmt: skip
    result = run_eval(cfg)
    domains = result["summary"]["domains"]
    assert set(domains) == {"add", "mul"} and domains["add"]["problems"] == 2 and domains["mul"]["problems"] == 1
    by_id = {p["id"]: p for p in result["problems"]}
    assert domains["add"]["pass@1"] == (by_id["a"]["pass@1"] + by_id["c"]["pass@1"]) / 2
    assert [p["domain"] for p in result["problems"]] == ["add", "mul", "add"]
    printed = capsys.readouterr().out
    lines = [line.split() for line in printed.splitlines() if line.startswith("pass@1 ")]
    assert ["pass@1", "add", f"{100 * domains['add']['pass@1']:.1f}", "(2", "problems)"] in lines
    assert json.loads(out.read_text())["summary"]["domains"] == domains
