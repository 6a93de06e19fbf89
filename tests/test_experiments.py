"""`distill runs` and `distill compare` over recorded runs: which settings differ, seed groups, the report."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distill.cli import app
from distill.configs import TrainConfig
from distill.experiments import compare, differing
from distill.runs import Registry, RunRecord, attach_eval
from distill.runs.table import format_table, run_rows
from tests.cache.test_views_admin import make_cache


def record_run(root: Path, name: str, cache_key: str, scores: dict[str, float], **options: object) -> Path:
    """A finished train run as a stage records it: manifest, metrics.jsonl, model/ with eval results attached."""
    cfg = TrainConfig(student="arith-student", cache="c", view="correct", out=root / name, **options)  # type: ignore[arg-type]
    with RunRecord("train", root / name / "run.json", cfg) as record:
        record.update(cache_key=cache_key, summary={"top_k": 20}, config={"lr": 3e-3})
        rows = [{"step": s, "loss": 2.0 / s, "ce": 1.0 / s, "kd": 1.0 / s, "tokens": 100} for s in range(1, 21)]
        (root / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        record.finish({"ce": 0.05, "kd": 0.05, "steps": 20, "tokens": 2000})
    (root / name / "model").mkdir()
    for benchmark, value in scores.items():
        attach_eval(root / name / "model", benchmark, {"pass@1": value, "samples": 4})
    return root / name


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Four runs of one cache: --kd forward and reverse, seeds 0 and 1 each; one run of another cache."""
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    scores = {("forward", 0): 0.50, ("forward", 1): 0.46, ("reverse", 0): 0.40, ("reverse", 1): 0.30}
    for (kd, seed), score in scores.items():
        record_run(tmp_path, f"{kd}-s{seed}", "cafe01", {"arith:test": score, "gsm8k": score / 2}, kd=kd, seed=seed)
    record_run(tmp_path, "other", "beef02", {"arith:test": 0.9}, alpha=1.0)
    return tmp_path


def test_compare_finds_the_one_setting_that_differs_and_groups_seeds(runs: Path) -> None:
    chosen = Registry().runs(cache_key="cafe01")
    assert [m.name for m, _ in chosen] == ["forward-s0", "forward-s1", "reverse-s0", "reverse-s1"]
    assert differing(chosen) == ["kd", "seed"]  # out differs too, but where a run wrote is not a setting
    result = compare(chosen)
    groups = {g["label"]: g for g in result["groups"]}
    assert set(groups) == {"kd=forward", "kd=reverse"}
    reverse = groups["kd=reverse"]["pass1"]["arith:test"]
    assert reverse["mean"] == pytest.approx(0.35) and reverse["std"] == pytest.approx(statistics.pstdev([0.4, 0.3]))
    assert groups["kd=forward"]["seeds"] == [0, 1]
    assert result["benchmarks"] == ["arith:test", "gsm8k"]
    assert [r["pass@1 gsm8k"] for r in result["table"]] == ["25.0", "23.0", "20.0", "15.0"]


def test_compare_command_writes_the_report(runs: Path) -> None:
    out = runs / "cmp"
    result = CliRunner().invoke(app, ["compare", "--cache", "cafe", str(runs / "other"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "kd=reverse" in result.output and "35.0 ± 5.0" in result.output
    report = (out / "report.md").read_text()
    assert "| name | stage | student | alpha | kd | seed |" in report  # alpha differs once the SFT run is in
    for png in ("curves_loss.png", "curves_ce.png", "curves_kd.png", "accuracy.png"):
        assert (out / png).stat().st_size > 1000 and f"({png})" in report
    as_json = CliRunner().invoke(app, ["compare", "forward-s0", "reverse-s0", "--json"])
    assert json.loads(as_json.output)["differing"] == ["kd"]


def test_runs_lists_a_cache_s_runs_with_their_scores(runs: Path) -> None:
    listed = CliRunner().invoke(app, ["runs", "--cache", "cafe01", "--json"])
    rows = json.loads(listed.output)
    assert [r["name"] for r in rows] == ["forward-s0", "forward-s1", "reverse-s0", "reverse-s1"]
    first = rows[0]
    assert {"id", "stage", "status", "out", "cache_key", "config", "metrics", "eval"} <= set(first)
    assert first["config"]["kd"] == "forward" and first["config"]["batch_rows"] == 8 and first["config"]["lr"] == 3e-3
    assert first["eval"]["arith:test"]["pass@1"] == 0.5 and first["status"] == "finished"
    table = CliRunner().invoke(app, ["runs", "--stage", "train"]).output.splitlines()
    assert table[0].split()[:4] == ["name", "stage", "student", "kind"] and len(table) == 6
    sft = next(line for line in table if line.startswith("other"))
    assert " sft " in sft and "90.0" in sft


def test_unknown_run_is_one_sentence(runs: Path) -> None:
    result = CliRunner().invoke(app, ["compare", "nope"])
    assert result.exit_code != 0 and "No run 'nope' in the registry" in str(result.exception)
    year = Registry().runs()[0][0].id[:4]  # every id starts with the year
    ambiguous = CliRunner().invoke(app, ["compare", year])
    assert f"{year!r} names 5 runs" in str(ambiguous.exception)


def test_table_drops_empty_columns() -> None:
    text = format_table([{"a": "1", "b": "-"}, {"a": "22", "b": "-"}])
    assert text.splitlines() == ["a", "1", "22"]
    assert run_rows([]) == []


def test_cache_info_lists_the_runs_trained_on_the_cache(runs: Path) -> None:
    make_cache(runs / "cache", 4, key="cafe01")
    text = CliRunner().invoke(app, ["cache", "info", str(runs / "cache")]).output
    assert "4 trained on this cache" in text and "reverse-s1" in text and "other" not in text.split("trained")[1]
    info = json.loads(CliRunner().invoke(app, ["cache", "info", str(runs / "cache"), "--json"]).output)
    assert sorted(r["name"] for r in info["runs"]) == ["forward-s0", "forward-s1", "reverse-s0", "reverse-s1"]
