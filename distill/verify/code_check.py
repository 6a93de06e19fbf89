"""The `code` verifier: the completion's last fenced code block, run against tests in the sandbox.

The reference is a dict (every key optional, but at least one of `io` and `asserts`):

    {"io": [{"stdin": "1 2\\n", "stdout": "3\\n"}, ...],   # run the program once per case
     "asserts": "assert add(1, 2) == 3",                    # Python run after the program's definitions
     "time_limit_s": 2.0,                                    # per run (default 5)
     "memory_mb": 1024}                                      # address space per run (default 1024)

Choices:
- io cases run in order and stop at the first failure, so a wrong program costs one run, not n;
- stdout is compared after stripping trailing whitespace on every line and at the end (judges
  differ on trailing newlines and spaces; nothing else is forgiven);
- `asserts` are appended to the program and run once, with empty stdin: the program's
  definitions are in scope, as in HumanEval/MBPP-style tests;
- the wall-clock limit is the time limit plus one second of interpreter start-up, the CPU limit
  the time limit rounded up: a busy loop dies on CPU time, a sleeping one on wall time;
- a verdict is "unknown" when nothing was learnt about the program: the reference has no tests,
  or the sandbox could not be built for a run (`RunResult.setup_error`). Everything the program
  does — a wrong output, a crash, a time, memory or output limit — is "failed". A machine where
  the sandbox cannot start at all raises instead (`run_python`): every verdict would be unknown.
"""

from __future__ import annotations

import math
import signal
from typing import Any

from distill.verify.answers import FAILED, PASSED, UNKNOWN, Verdict, extract_program
from distill.verify.sandbox import Limits, RunResult, run_python

DEFAULT_TIME_LIMIT_S = 5.0
DEFAULT_MEMORY_MB = 1024
STARTUP_S = 1.0  # wall-clock allowance for interpreter start-up on a loaded machine
_SHOWN = 60


def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def _shown(text: str) -> str:
    text = text.strip()
    return repr(text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…")


def _limits(reference: dict[str, Any]) -> Limits:
    try:
        time_limit = float(reference.get("time_limit_s", DEFAULT_TIME_LIMIT_S))
        memory_mb = int(reference.get("memory_mb", DEFAULT_MEMORY_MB))
    except (TypeError, ValueError) as e:
        raise ValueError(f"The code reference has a bad time_limit_s or memory_mb ({e}); give numbers.") from e
    if time_limit <= 0 or memory_mb <= 0:
        raise ValueError(f"The code reference needs a positive time_limit_s and memory_mb, got {reference}.")
    return Limits(wall_s=time_limit + STARTUP_S, cpu_s=math.ceil(time_limit), memory_bytes=memory_mb << 20)


def _failure(result: RunResult, what: str, limits: Limits) -> Verdict | None:
    """Why a run failed — unknown when the sandbox, not the program, failed — or None for a clean exit."""
    if result.setup_error:
        return Verdict(UNKNOWN, f"{what}: the sandbox failed, not the program ({result.setup_error})")
    if result.timed_out:
        return Verdict(FAILED, f"{what}: time limit exceeded ({limits.wall_s - STARTUP_S:g}s)")
    if result.output_exceeded:
        return Verdict(FAILED, f"{what}: output limit exceeded ({limits.output_bytes >> 10} KiB)")
    if result.returncode == 0:
        return None
    if result.returncode is not None and result.returncode < 0:
        name = signal.Signals(-result.returncode).name
        why = " (CPU time limit)" if name == "SIGXCPU" else ""
        return Verdict(FAILED, f"{what}: killed by {name}{why}")
    last = (result.stderr.strip().splitlines() or ["no error message"])[-1]
    return Verdict(FAILED, f"{what}: exited with code {result.returncode}: {last[:120]}")


def verify_code(completion: str, reference: Any) -> Verdict:
    """Run the completion's program against the reference's io cases and asserts.

    Passed when every test passes; failed at the first that does not; unknown when the reference
    has no tests or the sandbox fails.
    """
    if not isinstance(reference, dict) or not (reference.get("io") or reference.get("asserts")):
        return Verdict(UNKNOWN, "no tests to run: the reference needs 'io' cases or 'asserts'")
    program = extract_program(completion)
    if program is None or not program.strip():
        return Verdict(FAILED, "no fenced code block after the reasoning")
    limits = _limits(reference)
    cases = reference.get("io") or []
    for i, case in enumerate(cases, start=1):
        what = f"test {i} of {len(cases)}"
        result = run_python(program, stdin=str(case.get("stdin", "")), limits=limits)
        stopped = _failure(result, what, limits)
        if stopped:
            return stopped
        expected = str(case.get("stdout", ""))
        if _normalise(result.stdout) != _normalise(expected):
            return Verdict(FAILED, f"{what}: wrong output: got {_shown(result.stdout)}, expected {_shown(expected)}")
    if reference.get("asserts"):
        result = run_python(f"{program}\n\n{reference['asserts']}\n", limits=limits)
        stopped = _failure(result, "asserts", limits)
        if stopped:
            return stopped
    n = len(cases) + (1 if reference.get("asserts") else 0)
    return Verdict(PASSED, f"all {n} tests passed" if n > 1 else "the test passed")
