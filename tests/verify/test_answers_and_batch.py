"""Answer extraction (boxed answers, the think block) and the public batch API."""

from __future__ import annotations

import dataclasses

import pytest

from distill.verify import (
    FAILED,
    PASSED,
    UNKNOWN,
    VERIFIERS,
    Verdict,
    extract_boxed_answer,
    final_answer,
    normalise_answer,
    verify_batch,
)


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("\\boxed{42}", "42"),
        ("So \\boxed{ \\frac{\\sqrt{3}}{2} } it is", "\\frac{\\sqrt{3}}{2}"),  # nested braces, stripped
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
        ("\\boxed{1} then \\boxed{2}", "2"),  # the last box counts
        ("$\\boxed 5$", "5"),
        ("\\boxed 5.", "5"),  # sentence punctuation after a brace-less box is not part of it
        ("\\fbox{7}", "7"),
        ("\\boxed {8}", "8"),
        ("<think>\\boxed{1}</think> the answer is \\boxed{2}", "2"),
        ("<think>\\boxed{1}</think> no box after the reasoning", None),
        ("<think>a</think><think>\\boxed{3}</think> answer", None),  # only after the *last* </think>
        ("\\boxed{open but never closed", None),
        ("\\boxed{} and nothing", None),
        ("\\boxedx{9}", None),  # not a box command
        ("no answer at all", None),
        ("\\boxed{\\text{(C)}} \\boxed{", "\\text{(C)}"),  # a dangling box at the very end is not an answer
    ],
)
def test_extract_boxed_answer(text: str, answer: str | None) -> None:
    assert extract_boxed_answer(text) == answer


def test_normalised_answers_group_for_majority_votes() -> None:
    assert normalise_answer("\\frac{1} {2}") == normalise_answer("\\frac{1}{2}")
    assert normalise_answer(None) is None
    assert final_answer("<think>\\boxed{1}</think> so \\boxed{ \\frac{1} {2} }") == "\\frac{1}{2}"
    assert final_answer("<think>\\boxed{1}</think> no box") is None


def test_verdict_is_frozen_with_an_optional_answer() -> None:
    v = Verdict(PASSED, "correct")
    assert v.answer is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.status = FAILED  # type: ignore[misc]


def test_only_a_passed_verdict_passes_and_only_an_unknown_one_is_unknown() -> None:
    assert [(Verdict(s, "r").passed, Verdict(s, "r").unknown) for s in (PASSED, FAILED, UNKNOWN)] == [
        (True, False),
        (False, False),
        (False, True),
    ]


@pytest.mark.parametrize("status", [True, False, "ok", None])
def test_a_boolean_or_made_up_status_is_refused(status: object) -> None:
    """`Verdict(True, ...)` was the old spelling: it must fail loudly, not mean something else."""
    with pytest.raises(ValueError, match="status must be one of passed, failed, unknown"):
        Verdict(status, "correct")  # type: ignore[arg-type]


def test_registry_has_the_named_verifiers() -> None:
    assert {"math", "code", "format", "lang", "repetition"} <= set(VERIFIERS)
    assert all(callable(f) for f in VERIFIERS.values())


def test_batch_rejects_bad_calls_with_sentences() -> None:
    with pytest.raises(ValueError, match="Unknown verifier 'physics'; choose from math"):
        verify_batch("physics", ["x"], ["y"])
    with pytest.raises(ValueError, match="2 completions but 1 references"):
        verify_batch("math", ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="takes only `timeout`"):
        verify_batch("math", ["\\boxed{1}"], ["1"], threshold=0.5)
    assert verify_batch("math", [], []) == []


def test_batch_matches_single_calls_and_shows_progress(capsys: pytest.CaptureFixture[str]) -> None:
    completions = ["<think>ok</think> \\boxed{2}", "<think>ok</think> \\boxed{3}", "no think, no box"]
    golds = ["2", "2", "2"]
    batch = verify_batch("math", completions, golds, workers=2, progress=True)
    assert batch == [VERIFIERS["math"](c, g) for c, g in zip(completions, golds, strict=True)]
    assert [v.status for v in batch] == [PASSED, FAILED, FAILED]
    assert "verify math" in capsys.readouterr().err
    lang = verify_batch("lang", ["<think>" + "word " * 30 + "</think>"], ["latin"], threshold=0.99)
    assert lang[0].passed
