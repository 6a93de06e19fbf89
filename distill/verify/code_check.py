"""The `code` verifier: the last fenced code block after the think block, run against tests in the sandbox.

Reference: `{"io": [{"stdin": str, "stdout": str}, ...], "asserts": str, "time_limit_s": float}`
(either `io` or `asserts` may be absent). Each io case runs the program with that stdin and
compares stdout after stripping trailing whitespace on every line and at the end; `asserts` is
Python test code appended after the program's definitions. The program never runs in-process.
"""

from __future__ import annotations

import re
from typing import Any

from distill.verify.answers import answer_section
from distill.verify.sandbox import Limits, RunResult, run_python
from distill.verify.verdict import Verdict

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)


def extract_program(completion: str) -> str | None:
    """The last fenced code block of the answer section (any language tag, or none)."""
    blocks = _FENCE.findall(answer_section(completion))
    return blocks[-1][1] if blocks else None


def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def _failure(result: RunResult, what: str) -> Verdict | None:
    if result.timed_out:
        return Verdict(False, f"{what}: time limit exceeded")
    if result.output_exceeded:
        return Verdict(False, f"{what}: output limit exceeded")
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["killed"])[-1][:120]
        return Verdict(False, f"{what}: exited with {result.returncode} ({last})")
    return None


def check_code(completion: str, reference: Any) -> Verdict:
    if not isinstance(reference, dict) or not (reference.get("io") or reference.get("asserts")):
        return Verdict(False, "no tests to run (reference needs 'io' or 'asserts')")
    program = extract_program(completion)
    if program is None:
        return Verdict(False, "no fenced code block after the reasoning")
    limit = float(reference.get("time_limit_s", 5.0))
    limits = Limits(wall_s=limit, cpu_s=max(1, int(limit + 0.999)))
    for i, case in enumerate(reference.get("io") or []):
        result = run_python(program, stdin=str(case.get("stdin", "")), limits=limits)
        failed = _failure(result, f"test {i + 1}")
        if failed:
            return failed
        if _normalise(result.stdout) != _normalise(str(case.get("stdout", ""))):
            return Verdict(False, f"test {i + 1}: wrong output {result.stdout.strip()[:40]!r}")
    if reference.get("asserts"):
        # the tests run after the program's definitions, with the program imported (not as __main__)
        harness = (
            "import runpy\n"
            "ns = runpy.run_path('solution.py', run_name='solution')\n"
            f"exec(compile({reference['asserts']!r}, 'asserts', 'exec'), ns)\n"
        )
        result = run_python(harness, limits=limits, files={"solution.py": program})
        failed = _failure(result, "asserts")
        if failed:
            return failed
    return Verdict(True, "all tests passed")
