"""Byte alignment of two tokenizers' tokens of one text (distill/alignment.py), with real tokenizers: the bundled
teacher's byte-level BPE (Qwen's regex, 512 tokens), another byte-level BPE (GPT-2's regex, 300 tokens), a
SentencePiece-style one ("▁" markers) and one of Llama 2's layout (byte fallback), all from tests/tokenizer_cases.py.
Spans cover the text's bytes (multi-byte characters split across tokens, runs of byte-fallback tokens, SentencePiece's
prepended space, an empty text); groups match hand-worked cases; the vocabulary map pairs tokens of the same bytes
that both sides extend alike, the token a tokenizer writes first, and a tokenizer onto itself id for id."""

from __future__ import annotations

import pytest
import torch

from distill.alignment import (
    align_spans,
    alignment_shares,
    span_logprobs,
    token_bytes,
    token_extensions,
    token_spans,
    vocab_map,
)
from tests.tokenizer_cases import (
    BYTE_FALLBACK_TEXT,
    TRACE_TEXT,
    bundled_tokenizer,
    byte_fallback_tokenizer,
    byte_level_tokenizer,
    metaspace_tokenizer,
)

TEXT = TRACE_TEXT


@pytest.fixture(scope="module")
def teacher_tok():
    return bundled_tokenizer("arith-teacher")


@pytest.fixture(scope="module")
def student_tok():
    return byte_level_tokenizer()


@pytest.fixture(scope="module")
def metaspace_tok():
    return metaspace_tokenizer()


@pytest.fixture(scope="module")
def llama_tok():
    return byte_fallback_tokenizer()


def encode(tok, text: str = TEXT) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def covered(spans, positions) -> tuple[int, int]:
    return spans[positions[0]][0], spans[positions[-1]][1]


def test_identical_tokenizers_align_one_to_one_and_map_identically(teacher_tok) -> None:
    ids = encode(teacher_tok)
    spans = token_spans(teacher_tok, TEXT, ids)
    alignment = align_spans(spans, spans)
    assert alignment.groups == tuple(((i,), (i,)) for i in range(len(ids)))
    assert alignment_shares([alignment]) == {"one_to_one": 1.0, "merged": 0.0, "unmatched": 0.0}
    assert torch.equal(vocab_map(teacher_tok, teacher_tok), torch.arange(len(teacher_tok)))


# ---------------------------------------------------------------------------------------------
# alignment against hand-worked examples


def test_alignment_of_hand_worked_spans_merges_on_each_side() -> None:
    # bytes:     0 1 | 2 | 3 4 5 | 6 | 7 8 | 9 10 | (11, zero width)
    teacher = [(0, 2), (2, 3), (3, 6), (6, 7), (7, 9), (9, 11), (11, 11)]
    student = [(0, 1), (1, 2), (2, 6), (6, 7), (7, 8), (8, 10), (10, 11)]
    alignment = align_spans(teacher, student)
    assert alignment.groups == (
        ((0,), (0, 1)),  # one teacher token, two student tokens
        ((1, 2), (2,)),  # two teacher tokens, one student token
        ((3,), (3,)),
        ((4, 5), (4, 5, 6)),  # no common boundary inside 7..11
        ((6,), ()),  # a zero-width token at the end has no counterpart
    )
    assert alignment.counts == {"one_to_one": 1, "many_to_one": 2, "one_to_many": 1, "many_to_many": 2, "unmatched": 1}
    assert (alignment.num_teacher, alignment.num_student) == (7, 7)


def test_alignment_of_real_tokenizers_merges_where_their_boundaries_differ(teacher_tok, student_tok) -> None:
    text = "Compute 12×3"
    t_ids, s_ids = encode(teacher_tok, text), encode(student_tok, text)
    assert teacher_tok.convert_ids_to_tokens(t_ids) == ["Compute", "Ġ", "1", "2", "ÃĹ", "3"]
    assert student_tok.convert_ids_to_tokens(s_ids) == [*"Compute", "Ġ1", "2", "Ã", "Ĺ", "3"]
    alignment = align_spans(token_spans(teacher_tok, text, t_ids), token_spans(student_tok, text, s_ids))
    assert alignment.groups == (
        ((0,), tuple(range(7))),  # "Compute" against its seven letters
        ((1, 2), (7,)),  # " " + "1" against " 1"
        ((3,), (8,)),
        ((4,), (9, 10)),  # "×" whole against its two bytes
        ((5,), (11,)),
    )


def test_alignment_refuses_spans_of_different_texts() -> None:
    with pytest.raises(ValueError, match="different byte ranges"):
        align_spans([(0, 2), (2, 4)], [(0, 3)])
    with pytest.raises(ValueError, match="teacher spans are not contiguous"):
        align_spans([(0, 2), (3, 4)], [(0, 4)])


# ---------------------------------------------------------------------------------------------
# multi-byte characters, split or not


@pytest.mark.parametrize("side", ["teacher", "student", "metaspace"])
def test_multibyte_text_spans_cover_it_and_align(teacher_tok, student_tok, metaspace_tok, side) -> None:
    text = TEXT if side != "metaspace" else "so we add 17 + 25 = 42"  # the metaspace tokenizer has no bytes for "×"
    tok = {"teacher": teacher_tok, "student": student_tok, "metaspace": metaspace_tok}[side]
    t_ids, ids = encode(teacher_tok, text), encode(tok, text)
    spans, data = token_spans(tok, text, ids), text.encode()
    assert spans[0][0] == 0 and spans[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    t_spans = token_spans(teacher_tok, text, t_ids)
    alignment = align_spans(t_spans, spans)
    assert [i for t, _ in alignment.groups for i in t] == list(range(len(t_ids)))
    assert [i for _, s in alignment.groups for i in s] == list(range(len(ids)))
    assert all(covered(t_spans, t) == covered(spans, s) for t, s in alignment.groups)
    if side != "metaspace":  # byte-level: a token boundary falls inside a character ("é" is "Ã" + "©")
        inside = {b for b, byte in enumerate(data) if byte & 0xC0 == 0x80}
        assert any(start in inside for start, _ in spans)
        assert all(data[a:b] == token_bytes(tok)[i] for (a, b), i in zip(spans, ids, strict=True))


def test_spans_of_non_canonical_ids_are_their_bytes(teacher_tok) -> None:
    # a sampled teacher need not emit the canonical encoding: here one byte token per byte of the text
    byte_ids = [token_bytes(teacher_tok).index(bytes([b])) for b in TEXT.encode()]
    assert token_spans(teacher_tok, TEXT, byte_ids) == [(i, i + 1) for i in range(len(TEXT.encode()))]
    with pytest.raises(ValueError, match="do not spell the given text"):
        token_spans(teacher_tok, TEXT + "!", byte_ids)


# ---------------------------------------------------------------------------------------------
# vocabulary map, shares, carried log-probabilities


def test_vocab_map_pairs_tokens_of_equal_bytes_across_conventions(teacher_tok, student_tok, metaspace_tok) -> None:
    for other in (student_tok, metaspace_tok):
        vmap = vocab_map(teacher_tok, other)
        mapped = (vmap >= 0).nonzero().squeeze(-1).tolist()
        assert 50 < len(mapped) < len(teacher_tok)
        assert len(set(vmap[mapped].tolist())) == len(mapped)  # one-to-one
        assert all(token_bytes(teacher_tok)[i] == token_bytes(other)[int(vmap[i])] for i in mapped)
    answer = teacher_tok.convert_tokens_to_ids("Ġanswer")
    # "▁" words map where both sides extend them alike; "▁answer" does not: SentencePiece also has "▁answer:"
    vmap_m = vocab_map(teacher_tok, metaspace_tok)
    words = [metaspace_tok.convert_ids_to_tokens(int(vmap_m[i])) for i, b in enumerate(token_bytes(teacher_tok))
             if vmap_m[i] >= 0 and b and b.startswith(b" ") and len(b) > 2]  # fmt: skip
    assert words and all(w.startswith("▁") for w in words)
    assert token_extensions(metaspace_tok)[b" answer"] == {b" answer:"} and int(vmap_m[answer]) == -1
    # a pair maps exactly where both sides extend its bytes alike ("C" does not: the teacher has "Compute")
    vmap_s, t_ext, s_ext = (
        vocab_map(teacher_tok, student_tok),
        token_extensions(teacher_tok),
        token_extensions(student_tok),
    )
    s_ids = {b: i for i, b in enumerate(token_bytes(student_tok)) if b}
    for i, b in enumerate(token_bytes(teacher_tok)):
        if b in s_ids and i not in teacher_tok.added_tokens_decoder:
            assert (int(vmap_s[i]) >= 0) == (t_ext.get(b) == s_ext.get(b)), b
    assert int(vmap_s[teacher_tok.convert_tokens_to_ids("C")]) == -1 and b"Compute" in t_ext[b"C"]
    # the bundled students: the teacher writes every digit alone (Qwen's pre-tokenizer: its vocabulary's merged
    # digits are unreachable); arith-student-bpe writes numbers whole, so "1" is not one event and stays
    # unmapped; arith-student-bytes writes digits alone too, so they map
    bpe, by = bundled_tokenizer("arith-student-bpe"), bundled_tokenizer("arith-student-bytes")
    one = teacher_tok.convert_tokens_to_ids("1")
    assert b"1" not in t_ext and b"17" in token_extensions(bpe)[b"1"] and int(vocab_map(teacher_tok, bpe)[one]) == -1
    assert by.convert_ids_to_tokens(int(vocab_map(teacher_tok, by)[one])) == "1"
    plus = teacher_tok.convert_tokens_to_ids("Ġ+")
    assert token_extensions(teacher_tok).get(b" +") == token_extensions(student_tok).get(b" +")
    assert student_tok.convert_ids_to_tokens(int(vocab_map(teacher_tok, student_tok)[plus])) == "Ġ+"
    assert int(vocab_map(teacher_tok, student_tok)[teacher_tok.convert_tokens_to_ids("Compute")]) == -1


def test_report_shares_add_up_to_one(teacher_tok, student_tok, metaspace_tok) -> None:
    alignments = []
    for tok, text in ((student_tok, TEXT), (metaspace_tok, "so we add 17 + 25 = 42")):
        spans = token_spans(tok, text, encode(tok, text))
        alignments.append(align_spans(token_spans(teacher_tok, text, encode(teacher_tok, text)), spans))
    alignments.append(align_spans([(0, 2), (2, 2)], [(0, 1), (1, 2)]))
    for group in ([alignments[0]], [alignments[1]], alignments):
        shares = alignment_shares(group)
        assert sum(shares.values()) == pytest.approx(1.0) and shares["merged"] > 0
    assert 0 < alignment_shares(alignments)["one_to_one"] < 1 and alignment_shares(alignments)["unmatched"] > 0


def test_span_logprobs_keep_every_spans_total(teacher_tok, student_tok) -> None:
    """Student positions carry the teacher's log-probability of their span: one-to-one unchanged, a span's total
    kept (so the trace's), and identical tokenizers give the teacher's values back bit for bit."""
    t_ids, s_ids = encode(teacher_tok), encode(student_tok)
    alignment = align_spans(token_spans(teacher_tok, TEXT, t_ids), token_spans(student_tok, TEXT, s_ids))
    teacher = -torch.rand(len(t_ids), generator=torch.Generator().manual_seed(0)) * 3
    carried = span_logprobs(alignment, teacher)
    assert carried.shape == (len(s_ids),)
    for t, s in alignment.groups:
        torch.testing.assert_close(carried[list(s)].sum(), teacher[list(t)].sum())
        if len(t) == len(s) == 1:
            assert carried[s[0]] == teacher[t[0]]
    assert any(len(t) != len(s) for t, s in alignment.groups)
    same = align_spans(token_spans(teacher_tok, TEXT, t_ids), token_spans(teacher_tok, TEXT, t_ids))
    assert torch.equal(span_logprobs(same, teacher), teacher)


# ---------------------------------------------------------------------------------------------
# byte-fallback tokenizers (Llama 2 / Mistral / Gemma layout), and empty texts


def test_the_byte_fallback_tokenizer_has_llama_2s_layout(llama_tok) -> None:
    ids = encode(llama_tok, BYTE_FALLBACK_TEXT)
    tokens = llama_tok.convert_ids_to_tokens(ids)
    assert (
        llama_tok.decode(ids) == BYTE_FALLBACK_TEXT and tokens[0] == "▁"
    )  # the space SentencePiece prepends, dropped again
    assert tokens.count("<0xF0>") == 2 and "中" in tokens and "<0xE6>" in tokens  # emoji twice; CJK both ways
    assert "k" in tokens and llama_tok.convert_tokens_to_ids("<0x6B>") < llama_tok.convert_tokens_to_ids("k")


def test_byte_tokens_are_their_bytes_and_runs_of_them_align(llama_tok, teacher_tok) -> None:
    """Adjacent byte-fallback characters (an emoji twice, CJK outside the vocabulary) span their own bytes, so the
    tokenizer aligns one-to-one with itself and with a byte-level BPE that splits the same characters into bytes."""
    ids, data, table = encode(llama_tok, BYTE_FALLBACK_TEXT), BYTE_FALLBACK_TEXT.encode(), token_bytes(llama_tok)
    assert table[llama_tok.convert_tokens_to_ids("<0xF0>")] == b"\xf0" and table[llama_tok.convert_tokens_to_ids("▁")]
    spans = token_spans(llama_tok, BYTE_FALLBACK_TEXT, ids)
    assert spans[0] == (0, 0) and [data[a:b] for a, b in spans[1:]] == [table[i] for i in ids[1:]]
    assert align_spans(spans, spans).groups == tuple(((i,), (i,)) for i in range(len(ids)))
    t_ids = encode(teacher_tok, BYTE_FALLBACK_TEXT)
    t_spans = token_spans(teacher_tok, BYTE_FALLBACK_TEXT, t_ids)
    alignment = align_spans(t_spans, spans)
    assert [i for t, _ in alignment.groups for i in t] == list(range(len(t_ids)))
    assert [i for _, s in alignment.groups for i in s] == list(range(len(ids)))
    emoji = data.index("😀".encode())  # both sides write the emoji's four bytes as four tokens: one-to-one
    for offset in range(emoji, emoji + 8):
        t, s = next(g for g in alignment.groups if g[0] and t_spans[g[0][0]][0] == offset)
        assert len(t) == len(s) == 1 and spans[s[0]] == (offset, offset + 1)


def test_vocab_map_prefers_the_piece_a_tokenizer_writes_to_its_byte_token(llama_tok, teacher_tok) -> None:
    """Llama 2's `<0x6B>` has the same bytes as its `k` but is written only where `k` is no piece: the teacher's `k`
    maps onto the student's `k`, and the other way round."""
    k_teacher, k_llama = teacher_tok.convert_tokens_to_ids("k"), llama_tok.convert_tokens_to_ids("k")
    assert int(vocab_map(teacher_tok, llama_tok)[k_teacher]) == k_llama
    assert int(vocab_map(llama_tok, teacher_tok)[k_llama]) == k_teacher
    mapped = vocab_map(teacher_tok, llama_tok)
    mapped = mapped[mapped >= 0]
    assert len(set(mapped.tolist())) == len(mapped)  # still one-to-one


@pytest.mark.parametrize("side", ["teacher", "llama"])
def test_an_empty_text_has_no_spans(teacher_tok, llama_tok, side) -> None:
    tok = {"teacher": teacher_tok, "llama": llama_tok}[side]
    assert token_spans(tok, "", []) == []
    with pytest.raises(ValueError, match="do not spell the given text"):
        token_spans(tok, "a", [])
