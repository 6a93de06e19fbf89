"""Cache records re-tokenised for a student of another tokenizer (distill/retokenize.py), at the edges real teachers
reach: a completion that is only the stop token, one cut inside a character or holding stray bytes, one the student
cannot spell; and the set-up keeps the student's ids and the alignment's bounds, not the teacher's arrays.

Real tokenizers: the bundled teacher's byte-level BPE, arith-student-bpe's own BPE, and a SentencePiece BPE without
byte fallback (it writes <unk> for a character outside its vocabulary)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.cache import Record
from distill.losses.cross_tokenizer import cross_tokenizer_kd
from distill.retokenize import align_text, collate_aligned, retokenize, student_vocab_map
from tests.tokenizer_cases import bundled_tokenizer, metaspace_tokenizer

K = 4


@pytest.fixture(scope="module")
def teacher_tok():
    return bundled_tokenizer("arith-teacher")


@pytest.fixture(scope="module")
def student_tok():
    return bundled_tokenizer("arith-student-bpe")


@pytest.fixture(scope="module")
def unk_tok():
    """A SentencePiece-style BPE with an <unk> and no byte fallback: an emoji is no text it can spell."""
    return metaspace_tokenizer()


def record(tok, completion: list[int], i: int = 0) -> Record:
    """A cache record of `completion` after a short prompt, with a top-k of K per position (the trace token first)."""
    t, rng = len(completion), np.random.default_rng(i)
    topk = np.stack([rng.choice(len(tok), K, replace=False) for _ in range(t)]).reshape(t, K).astype(np.int32)
    topk[:, 0] = completion
    for row in topk:  # the trace token once per row
        row[1:][row[1:] == row[0]] = (row[0] + 1) % len(tok)
    logprobs = np.log(np.tile([0.6, 0.2, 0.1, 0.05], (t, 1))).astype(np.float32)
    prompt = np.asarray(tok("What is 2 + 3?", add_special_tokens=False)["input_ids"], np.int32)
    meta = {"prompt_id": f"q{i}", "sample_index": 0, "finish_reason": "stop"}
    return Record(prompt, np.asarray(completion, np.int32), topk, logprobs, logprobs[:, 0].copy(), meta)


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("same", [True, False])
def test_a_completion_that_is_only_the_end_token_trains_on_it(teacher_tok, student_tok, same) -> None:
    """The teacher stopped at once: the student learns to stop at once, from the teacher's row for its eos."""
    student = teacher_tok if same else student_tok
    assert align_text("", teacher_tok, [], student, [], True, "x").groups == (((0,), (0,)),)  # the two end tokens
    records = [record(teacher_tok, [teacher_tok.eos_token_id], 0), record(teacher_tok, ids(teacher_tok, "5."), 1)]
    aligned = retokenize(records, teacher_tok, student)
    assert len(aligned) == 2 and aligned.report.empty == 1 and aligned.report.records == 2
    first = aligned[0]
    assert first.student.completion_ids.tolist() == [student.eos_token_id]
    assert first.alignment.groups == (((0,), (0,)),)
    batch = collate_aligned([[first, aligned[1]]], 64, 0)
    assert batch.num_tokens == 1 + len(aligned[1].student.completion_ids)
    t = batch.aligned
    assert t.ids[0].item() == teacher_tok.eos_token_id and t.teacher_bounds[:2].tolist() == [0, 1]
    hidden = torch.randn(batch.num_tokens, 8, requires_grad=True)
    vmap = student_vocab_map(teacher_tok, student)
    out = cross_tokenizer_kd(hidden, torch.randn(len(student), 8), batch.targets[batch.targets >= 0], t, vmap)
    out.loss.backward()
    assert math.isfinite(out.loss.item()) and hidden.grad[0].abs().sum() > 0


def test_completions_that_are_not_whole_characters_are_cut_back_and_counted(teacher_tok, student_tok) -> None:
    """A byte-level teacher cut by --max-new-tokens inside an emoji, or writing a stray byte: the completion is cut
    back to its last whole character (its eos with it) and counted; the rest of the run is untouched."""
    whole = ids(teacher_tok, "so we add 17 😀")
    emoji = len(ids(teacher_tok, "so we add 17 "))
    assert len(whole) - emoji == 4  # the emoji is four byte tokens
    stray = teacher_tok.convert_tokens_to_ids("Ģ")  # byte 0x80: a continuation byte with no character to continue
    eos = teacher_tok.eos_token_id
    records = [
        record(teacher_tok, whole[:-2], 0),  # ends inside the emoji
        record(teacher_tok, whole[:3] + [stray] + whole[3:] + [eos], 1),  # a stray byte, then text and the eos
        record(teacher_tok, whole + [eos], 2),  # whole
    ]
    for rec in records[:2]:
        assert "\ufffd" in teacher_tok.decode(rec.completion_ids.tolist())
    aligned = retokenize(records, teacher_tok, student_tok)
    report = aligned.report
    assert (report.records, report.cut, report.skipped) == (3, 2, 0)
    assert report.cut_tokens == 2 + (len(whole) - 3 + 1 + 1)  # the emoji's two bytes; the stray byte onwards + eos
    assert [aligned[i].alignment.num_teacher for i in range(3)] == [emoji, 3, len(whole) + 1]
    assert student_tok.decode(aligned[0].student.completion_ids) == "so we add 17 "
    assert "cut back to their last whole character" in report.summary()
    # one tokenizer on both sides: nothing is re-encoded, so nothing needs cutting (the ids align on their bytes)
    same = retokenize(records, teacher_tok, teacher_tok)
    assert same.report.cut == 0
    assert [same[i].alignment.num_teacher for i in range(3)] == [len(r.completion_ids) for r in records]


def test_a_record_the_student_cannot_spell_is_left_out_and_counted(teacher_tok, unk_tok) -> None:
    records = [
        record(teacher_tok, ids(teacher_tok, "so we add 17 😀"), 0),
        record(teacher_tok, ids(teacher_tok, "so"), 1),
    ]
    aligned = retokenize(records, teacher_tok, unk_tok)
    assert len(aligned) == 1 and aligned.indices.tolist() == [1]
    assert aligned.report.skipped == 1 and "cache record ('q0', 0)" in aligned.report.skipped_reason
    assert "1 record(s) left out" in aligned.report.summary()
    from distill.errors import DistillError

    with pytest.raises(DistillError, match="None of the 1 records could be aligned"):
        retokenize(records[:1], teacher_tok, unk_tok)


def test_set_up_keeps_ids_and_bounds_and_reads_the_teacher_on_demand(teacher_tok, student_tok) -> None:
    """Set-up holds the student's ids and the alignment's bounds (int32, flat); the teacher's top-k stays in the cache
    and is read when a step asks for the record."""

    class Counted(list):
        reads = 0

        def __getitem__(self, i):
            Counted.reads += 1
            return super().__getitem__(i)

    records = Counted(record(teacher_tok, ids(teacher_tok, f"so we add {n} and {n + 1}"), n) for n in range(5))
    aligned = retokenize(records, teacher_tok, student_tok, indices=[4, 1, 2])
    assert Counted.reads == 3 and aligned.indices.tolist() == [4, 1, 2]
    assert aligned.lengths().tolist() == [[len(aligned[i].student.prompt_ids), len(aligned[i].student.completion_ids)]
                                          for i in range(3)]  # fmt: skip
    reads = Counted.reads
    got = aligned[0]
    assert Counted.reads == reads + 1 and got.teacher is records[4]
    held = [v for v in vars(aligned).values() if hasattr(v, "values")]  # the flat stores
    assert all(h.values.dtype == np.int32 for h in held)
    assert sum(h.values.nbytes for h in held) < 4 * 4 * sum(len(r.completion_ids) + len(r.prompt_ids) for r in records)
