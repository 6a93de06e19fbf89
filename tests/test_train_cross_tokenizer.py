"""`distill train --cross-tokenizer` on real caches of the bundled teacher: the identity invariant through the
CLI, the bundled student of another family and tokenizer, packing cuts, LoRA, views and two processes; and on
traces with emoji and CJK text: a tiny Llama whose tokenizer has Llama 2's layout (byte fallback) as its own
student (the identity invariant) and as the student of the bundled teacher, with completions that are only the
stop token, end inside a character or hold a stray byte."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from distill.alignment import Alignment
from distill.cache import CacheWriter, Record, open_cache, write_view
from distill.generate import GenerateConfig, run_generate
from distill.models.tokenizer import cache_tokenizer, load_tokenizer
from distill.presets import resolve_preset
from distill.retokenize import collate_aligned, retokenize
from tests.tokenizer_cases import build_byte_fallback_model

pytestmark = pytest.mark.slow
SAME = resolve_preset("arith-student", "student").hub_id  # the teacher's tokenizer
OTHER = resolve_preset("arith-student-bpe", "student").hub_id  # Llama, its own BPE: numbers whole


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled teacher's traces of 12 arith:train problems, 2 samples each, top-20 + tail."""
    return run_generate(
        GenerateConfig(
            teacher="arith-teacher",
            prompts="arith:train",
            limit=12,
            samples_per_prompt=2,
            max_new_tokens=96,
            top_k=20,
            backend="hf",
            dtype="float32",
            out=tmp_path_factory.mktemp("xt") / "cache",
        )
    )


def train(cache: Path, out: Path, *extra: str, student: str = "arith-student-bpe", steps: int = 3) -> dict:
    """Run `distill train` in a subprocess as a user would; its metrics rows and stderr."""
    args = ["--student", student, "--cache", str(cache), "--out", str(out), "--max-steps", str(steps)]
    args += ["--batch-rows", "4", "--micro-rows", "2", "--lr", "3e-3", "--warmup-ratio", "0", "--seed", "5"]
    proc = subprocess.run(
        [sys.executable, "-m", "distill", "train", *args, *extra],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"rows": rows, "stderr": proc.stderr, "run": json.loads((out / "run.json").read_text())}


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "model.safetensors")


def test_identical_tokenizers_train_exactly_as_without_the_flag(cache: Path, tmp_path: Path) -> None:
    """The invariant: a student of the teacher's tokenizer trains bit for bit the same with --cross-tokenizer
    (re-tokenised, aligned, mapped, through cross_tokenizer_kd) as without it, for KD kinds and tails."""
    lengths = open_cache(cache).lengths().sum(-1)
    assert (lengths > 100).any() and (lengths <= 50).sum() == 0  # at --max-length 100 some records are cut
    for kind, tail in (("reverse", "bucket"), ("jsd", "renorm")):
        knobs = ["--kd", kind, "--tail", tail, "--alpha", "0.3", "--max-length", "100"]
        plain = train(cache, tmp_path / f"plain-{kind}", *knobs, student="arith-student")
        xt = train(cache, tmp_path / f"xt-{kind}", *knobs, "--cross-tokenizer", student="arith-student")
        assert "100.0% one-to-one" in xt["stderr"]
        for a, b in zip(plain["rows"], xt["rows"], strict=True):
            assert (a["loss"], a["ce"], a["kd"], a["tokens"]) == (b["loss"], b["ce"], b["kd"], b["tokens"])
            assert b["merged"] == 0.0 and b["kd"] > 0
        w_plain, w_xt = weights(tmp_path / f"plain-{kind}"), weights(tmp_path / f"xt-{kind}")
        assert all(torch.equal(w_plain[k], w_xt[k]) for k in w_plain)


def test_a_student_of_another_tokenizer_learns_from_the_teacher(cache: Path, tmp_path: Path) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "distill", "train", "--student", "arith-student-bpe", "--cache", str(cache),
         "--out", str(tmp_path / "refused"), "--max-steps", "1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode == 1 and "--cross-tokenizer" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "refused" / "model").exists()

    out = train(cache, tmp_path / "xt", "--cross-tokenizer", "--kd", "reverse", steps=8)
    report = out["run"]["summary"]["cross_tokenizer"]
    assert 0.3 < report["one_to_one"] < 0.9 and report["merged"] > 0.1 and report["student_per_teacher_token"] < 1
    # numbers merge; digits and letters the student extends (its "17", the teacher's "Result") are not mapped
    assert 0.3 < report["mapped_positions"] < report["one_to_one"] and 0.3 < report["mapped_mass"] < 0.9
    assert "with counterparts in the vocabulary map: taught by KD" in out["stderr"]
    rows = out["rows"]
    assert all(r["kd"] > 0 and r["merged"] > 0 for r in rows)
    assert np.mean([r["loss"] for r in rows[-3:]]) < np.mean([r["loss"] for r in rows[:3]])
    # the export is the student's own: its tokenizer, a model transformers loads with it
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "xt" / "model")
    assert tok.tokenize(" 17") == load_tokenizer(OTHER).tokenize(" 17") == ["Ġ17"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "xt" / "model")
    assert model.config.model_type == "llama"
    # the merged-span term is in the loss, weighed by --xt-weight
    none = train(cache, tmp_path / "no-merged", "--cross-tokenizer", "--kd", "reverse", "--xt-weight", "0", steps=1)
    one = rows[0]
    assert none["rows"][0]["merged"] == pytest.approx(one["merged"], rel=1e-6)
    assert one["loss"] - none["rows"][0]["loss"] == pytest.approx(0.5 * one["merged"], rel=1e-4)


def test_packing_cuts_views_and_lora(cache: Path, tmp_path: Path) -> None:
    """Rows packed and records cut by --max-length keep teacher rows and student rows in step; a view selects the
    records; LoRA adapters train and merge."""
    c = open_cache(cache)
    write_view(c, "first", list(range(0, len(c), 2)), {})
    out = train(cache, tmp_path / "lora", "--cross-tokenizer", "--view", "first", "--lora", "--max-length", "96")
    assert out["run"]["summary"]["records"] == (len(c) + 1) // 2
    assert all(np.isfinite(r["loss"]) and r["merged"] > 0 for r in out["rows"])
    base, merged = load_file(Path(OTHER) / "model.safetensors"), weights(tmp_path / "lora")
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert changed and all("proj" in k for k in changed)


def test_cut_records_keep_whole_groups_and_rows_in_order(cache: Path) -> None:
    c = open_cache(cache)
    teacher, student = cache_tokenizer(c), load_tokenizer(OTHER)
    aligned = retokenize(c, teacher, student)
    report = aligned.report
    assert report.one_to_one + report.merged + report.unmatched == pytest.approx(1.0)
    first = aligned[0].alignment
    for n in range(first.num_student + 1):
        cut = first.cut(n)
        assert cut.num_student == n and sorted(s for _, g in cut.groups for s in g) == list(range(n))
        assert sorted(t for t, _ in cut.groups for t in t) == list(range(cut.num_teacher))
        assert sum(cut.counts.values()) == cut.num_teacher
    # a micro-batch of two rows cut at 10 completion tokens of the first record: the second row's first record
    # is cut too and its second gets no room; teacher rows follow the student's loss positions
    width = len(aligned[0].student.prompt_ids) + 10
    batch = collate_aligned([[aligned[0]], [aligned[1], aligned[2]]], width, 0)
    t = batch.aligned
    p1, c1 = len(aligned[1].student.prompt_ids), len(aligned[1].student.completion_ids)
    cuts = [aligned[0].alignment.cut(10), aligned[1].alignment.cut(min(c1, width - p1)), aligned[2].alignment.cut(0)]
    assert cuts[2].num_student == cuts[2].num_teacher == 0
    expected = Alignment.concat(cuts)  # the records' cut groups end to end: the batch's
    assert t.teacher_bounds.tolist() == expected.teacher_bounds.tolist()
    assert t.student_bounds.tolist() == expected.student_bounds.tolist()
    assert int(t.student_bounds[-1]) == batch.num_tokens == 10 + min(c1, width - p1)
    n0 = cuts[0].num_teacher
    assert torch.equal(t.ids[:n0], torch.from_numpy(aligned[0].teacher.completion_ids[:n0].astype(np.int64)))
    assert len(t.ids) == n0 + cuts[1].num_teacher


@pytest.mark.torchrun
def test_two_processes_on_gloo_match_one(cache: Path, tmp_path: Path) -> None:
    one = train(cache, tmp_path / "one", "--cross-tokenizer", "--kd", "reverse", steps=2)
    args = ["--student", "arith-student-bpe", "--cache", str(cache), "--out", str(tmp_path / "two"), "--max-steps", "2"]
    args += ["--batch-rows", "4", "--micro-rows", "2", "--lr", "3e-3", "--warmup-ratio", "0", "--seed", "5"]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531", "-m",
         "distill", "train", *args, "--cross-tokenizer", "--kd", "reverse"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows, one["rows"], strict=True):
        assert a["tokens"] == b["tokens"]
        for key in ("loss", "ce", "kd", "merged"):
            assert a[key] == pytest.approx(b[key], abs=1e-5, rel=0), key
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4


# ---------------------------------------------------------------------------------------------
# emoji and CJK text; byte-fallback tokenizers; completions that are empty or not whole characters

TRACES = [  # emoji twice and CJK outside the byte-fallback vocabulary: runs of <0xNN> tokens
    ("What is 12 × 3?", "<think>\nCompute 12×3 = 36. 😀😀 中文字 so we think: café</think>\n\\boxed{36}"),
    ("Add 17 and 25.", "<think>\nso we add 17 + 25 = 42 🎉 好的</think>\n\\boxed{42}"),
    ("What is 7 - 2?", "<think>\n7 - 2 = 5 ✓ 完成</think>\n\\boxed{5}"),
]


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a tokenizer of Llama 2's layout (tests/tokenizer_cases.py)."""
    return build_byte_fallback_model(tmp_path_factory.mktemp("llama") / "model")


def score(teacher: str, out: Path) -> Path:
    """TRACES teacher-forced through `teacher` (hf), top-20: a cache of its own tokens of that text."""
    from distill.configs.teacher import ScoreConfig
    from distill.score import run_score

    traces = out.parent / f"{out.name}.jsonl"
    traces.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in TRACES))
    return run_score(ScoreConfig(teacher=teacher, traces=str(traces), backend="hf", top_k=20, out=out))


def test_a_byte_fallback_tokenizer_trains_exactly_as_without_the_flag(llama: Path, tmp_path: Path) -> None:
    """The identity invariant for a tokenizer of Llama 2's layout, on text whose emoji and CJK characters it writes
    as runs of byte tokens, and whose single letters are pieces that share their bytes with a byte token."""
    cache = score(str(llama), tmp_path / "cache")
    tok = cache_tokenizer(open_cache(cache))
    written = [t for r in open_cache(cache) for t in tok.convert_ids_to_tokens(r.completion_ids.tolist())]
    assert written.count("<0xF0>") >= 3 and "k" in written and "<0xE6>" in written
    assert (open_cache(cache).lengths().sum(-1) > 100).any()  # --max-length 100 cuts a record inside its text
    knobs = ["--kd", "reverse", "--alpha", "0.3", "--batch-rows", "2", "--micro-rows", "1", "--max-length", "100"]
    plain = train(cache, tmp_path / "plain", *knobs, student=str(llama))
    xt = train(cache, tmp_path / "xt", *knobs, "--cross-tokenizer", student=str(llama))
    assert "100.0% one-to-one (100.0% with counterparts" in xt["stderr"]
    for a, b in zip(plain["rows"], xt["rows"], strict=True):
        assert (a["loss"], a["ce"], a["kd"], a["tokens"]) == (b["loss"], b["ce"], b["kd"], b["tokens"])
        assert b["merged"] == 0.0 and b["kd"] > 0
    w_plain, w_xt = weights(tmp_path / "plain"), weights(tmp_path / "xt")
    assert all(torch.equal(w_plain[k], w_xt[k]) for k in w_plain)


def test_emoji_cjk_empty_and_broken_completions_train_across_tokenizers(llama: Path, tmp_path: Path) -> None:
    """The bundled teacher (byte-level BPE: an emoji is four byte tokens) taught to the byte-fallback Llama and to
    arith-student-bpe, on its scores of TRACES plus three records real teachers write: only the stop token, a
    completion cut by --max-new-tokens inside an emoji, one with a stray byte. The run trains on all of them and
    counts the empty one and the two cut back to their last whole character."""
    scored = open_cache(score("arith-teacher", tmp_path / "scored"))
    tok = cache_tokenizer(scored)
    first = scored[0]
    emoji = [i for i, t in enumerate(tok.convert_ids_to_tokens(first.completion_ids.tolist())) if t == "ð"][0]

    def variant(rows: list[int], name: str) -> Record:  # the first record's completion positions `rows`, renamed
        arrays = ("completion_ids", "topk_ids", "topk_logprobs", "sampled_logprobs", "tail_logprobs")
        picked = {a: getattr(first, a)[np.asarray(rows)] for a in arrays}
        return dataclasses.replace(first, **picked, meta={**first.meta, "prompt_id": name})

    n = len(first.completion_ids)
    broken = variant(list(range(emoji + 2)), "cut")  # ends inside the emoji, as --max-new-tokens cuts
    stray = variant([*range(emoji), emoji + 1, *range(emoji, n)], "stray")  # the emoji's 2nd byte alone before it
    only_eos = variant([n - 1], "empty")
    assert only_eos.completion_ids.tolist() == [tok.eos_token_id]
    out = tmp_path / "edges"
    with CacheWriter(out, scored.spec, key="edges", provenance=scored.provenance) as writer:
        for rec in [*scored, broken, stray, only_eos]:
            writer.append(rec)
        writer.finish(tokenizer=tok)
    for rec in (broken, stray):
        assert "\ufffd" in tok.decode(rec.completion_ids.tolist())
    for name, student in (("llama", str(llama)), ("bpe", "arith-student-bpe")):
        run = train(out, tmp_path / name, "--cross-tokenizer", "--kd", "reverse", student=student)
        report = run["run"]["summary"]["cross_tokenizer"]
        assert (report["records"], report["empty"], report["cut"], report["skipped"]) == (6, 1, 2, 0), name
        assert "2 completion(s) cut back to their last whole character" in run["stderr"]
        assert all(np.isfinite(r["loss"]) and r["merged"] > 0 for r in run["rows"])
