"""The `code` verifier on honest programs: io tests, asserts, wrong programs, where the program is taken from."""

from __future__ import annotations

import dataclasses
import time

import pytest

from distill.verify import FAILED, PASSED, UNKNOWN, VERIFIERS, code_check, extract_program, verify_batch
from distill.verify.sandbox import Limits, run_python

ADD = "a, b = map(int, input().split())\nprint(a + b)"
IO = {"io": [{"stdin": "1 2\n", "stdout": "3\n"}, {"stdin": "10 -4\n", "stdout": "6"}], "time_limit_s": 2}


def fenced(program: str, reasoning: str = "Read two ints and add them.", tag: str = "python") -> str:
    return f"<think>\n{reasoning}\n</think>\n\nHere is my solution:\n\n```{tag}\n{program}\n```\n"


def test_correct_program_passes_io_tests() -> None:
    verdict = VERIFIERS["code"](fenced(ADD), IO)
    assert verdict.status == PASSED and verdict.reason == "all 2 tests passed"


def test_trailing_whitespace_is_forgiven_but_nothing_else() -> None:
    ref = {"io": [{"stdin": "", "stdout": "1 2\n3"}]}
    assert VERIFIERS["code"](fenced("print('1 2   ')\nprint(3)\nprint()\nprint()"), ref).passed
    assert not VERIFIERS["code"](fenced("print(' 1 2')\nprint(3)"), ref).passed  # leading space counts
    assert not VERIFIERS["code"](fenced("print('1 2')\nprint()\nprint(3)"), ref).passed  # inner blank line counts


def test_wrong_program_fails_with_the_outputs_in_the_reason() -> None:
    verdict = VERIFIERS["code"](fenced("a, b = map(int, input().split())\nprint(a - b)"), IO)
    assert verdict.status == FAILED
    assert verdict.reason == "test 1 of 2: wrong output: got '-1', expected '3'"


def test_crashing_program_fails_with_its_error() -> None:
    verdict = VERIFIERS["code"](fenced("raise ValueError('bad input')"), IO)
    assert verdict.status == FAILED and verdict.reason == "test 1 of 2: exited with code 1: ValueError: bad input"


def test_asserts_run_after_the_definitions() -> None:
    program = "def add(a, b):\n    return a + b"
    ref = {"asserts": "assert add(1, 2) == 3\nassert add(-1, 1) == 0", "time_limit_s": 2}
    assert VERIFIERS["code"](fenced(program), ref).passed
    wrong = VERIFIERS["code"](fenced("def add(a, b):\n    return a * b"), ref)
    assert (
        not wrong.passed and wrong.reason.startswith("asserts: exited with code 1") and "AssertionError" in wrong.reason
    )


def test_io_and_asserts_together() -> None:
    program = "def double(x):\n    return 2 * x\n\nif __name__ == '__main__':\n    print(double(int(input())))"
    ref = {"io": [{"stdin": "4", "stdout": "8"}], "asserts": "assert double(5) == 10"}
    # The asserts run with empty stdin, so a program that reads input at import time fails them: guard with __main__.
    assert not VERIFIERS["code"](fenced(program), ref).passed
    guarded = "import sys\ndef double(x):\n    return 2 * x\n\nfor line in sys.stdin:\n    print(double(int(line)))"
    verdict = VERIFIERS["code"](fenced(guarded), ref)
    assert verdict.passed and verdict.reason == "all 2 tests passed"


def test_the_program_is_the_last_block_after_the_reasoning() -> None:
    draft_in_reasoning = fenced("print(3)", reasoning="A draft:\n```python\nprint('draft')\n```")
    assert extract_program(draft_in_reasoning) == "print(3)\n"
    two_blocks = fenced("print(3)").replace("Here is my solution:", "First try:\n```python\nprint(2)\n```\nBetter:")
    assert extract_program(two_blocks) == "print(3)\n"
    assert extract_program(fenced("print(3)", tag="")) == "print(3)\n"
    assert extract_program("<think>```python\nprint(1)\n```</think> no code") is None


@pytest.mark.parametrize(
    ("completion", "reference", "status", "reason"),
    [
        ("<think>hmm</think> I cannot solve it.", IO, FAILED, "no fenced code block after the reasoning"),
        (fenced(ADD), {"time_limit_s": 1}, UNKNOWN, "no tests to run"),  # the reference's fault, not the program's
        (fenced(ADD), None, UNKNOWN, "no tests to run"),
    ],
)
def test_nothing_to_run_gives_a_reason(completion: str, reference: object, status: str, reason: str) -> None:
    verdict = VERIFIERS["code"](completion, reference)
    assert verdict.status == status and reason in verdict.reason


def impossible_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every sandbox set-up fail for real: no process may raise its open-files limit past fs.nr_open
    (root included), so the launcher's setrlimit fails before the program runs."""
    limits = code_check._limits
    monkeypatch.setattr(code_check, "_limits", lambda ref: dataclasses.replace(limits(ref), open_files=1 << 40))


def test_a_sandbox_that_fails_to_build_gives_unknown_not_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    impossible_limits(monkeypatch)
    for program in (ADD, "print(0)"):  # right or wrong, the program never ran: nothing is known about it
        verdict = VERIFIERS["code"](fenced(program), IO)
        assert verdict.status == UNKNOWN, verdict
        assert verdict.reason.startswith("test 1 of 2: the sandbox failed, not the program (sandbox setup failed")
    asserts = VERIFIERS["code"](fenced("def f():\n    return 1"), {"asserts": "assert f() == 1"})
    assert asserts.status == UNKNOWN and asserts.reason.startswith("asserts: the sandbox failed")


def test_a_program_over_its_time_limit_fails_rather_than_being_unknown() -> None:
    verdict = VERIFIERS["code"](fenced("while True:\n    pass"), {"io": [{"stdout": "1"}], "time_limit_s": 1})
    assert verdict.status == FAILED and "time limit" in verdict.reason, (
        verdict
    )  # CPU or wall clock: the program's fault


def test_bad_time_limit_is_a_sentence() -> None:
    with pytest.raises(ValueError, match="time_limit_s"):
        VERIFIERS["code"](fenced(ADD), {"io": IO["io"], "time_limit_s": "fast"})


def test_batch_runs_in_parallel_and_keeps_order() -> None:
    completions = [fenced(ADD), fenced("import time\ntime.sleep(1)\nprint(3)"), fenced("print(4)")] * 2
    ref = {"io": [{"stdin": "1 2", "stdout": "3"}], "time_limit_s": 3}
    start = time.monotonic()
    verdicts = verify_batch("code", completions, [ref] * len(completions), workers=4)
    assert [v.passed for v in verdicts] == [True, True, False] * 2
    assert time.monotonic() - start < 2 * 1.0 + 1.5  # two sleeping programs overlapped, not six runs in a row


def test_run_python_reports_what_happened() -> None:
    result = run_python("import sys\nprint(sys.stdin.read().upper())\nprint('warn', file=sys.stderr)", stdin="abc")
    assert result.returncode == 0 and result.stdout == "ABC\n" and result.stderr == "warn\n"
    assert not result.timed_out and not result.output_exceeded and result.setup_error is None
    capped = run_python("print('x' * 5000)", limits=Limits(output_bytes=1000))
    assert capped.output_exceeded and len(capped.stdout) == 1000
