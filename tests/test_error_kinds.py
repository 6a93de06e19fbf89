"""scripts/error_kinds.py: wrong answers sorted into arithmetic slips and wrong numbers, from the reasoning lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "error_kinds.py"


def _sample(text: str, passed: bool) -> dict:
    return {"text": text, "passed": passed}


def test_error_kinds_sorts_wrong_answers(tmp_path: Path) -> None:
    # (12 + 7) * (3 - 5) = -38
    right = "<think>\n3 - 5 = -2\nthen 7 + 12 = 19\nso 19 × -2 is -38.\ncheck: -38 / -2 = 19\n</think>\n\\boxed{-38}"
    slip = "<think>\n3 - 5 = -2\nthen 7 + 12 = 18\nso 18 × -2 is -36.\n</think>\n\\boxed{-36}"
    numbers = "<think>\n3 - 5 = -2\nthen 7 + 3 = 10\nso 10 × -2 is -20.\n</think>\n\\boxed{-20}"
    bad_check = "<think>\n3 - 5 = -2\nthen 7 + 12 = 19\nso 19 × -2 = -38\nverify: -38 / -2 = 20\n</think>\n\\boxed{-37}"
    nothing = "I do not know."
    samples = [_sample(right, True), _sample(slip, False), _sample(numbers, False), _sample(bad_check, False)]
    problems = [{"id": "p0", "samples": samples}, {"id": "p1", "samples": [_sample(nothing, False)] * 4}]
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"summary": {}, "problems": problems}))
    out = subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True, text=True, check=True)
    row = out.stdout.strip().splitlines()[-1].split()
    # of 8 samples: 1 right, 1 slip, 2 wrong numbers (a false check line does not count), 4 with nothing to check
    assert [float(v) for v in row[1:]] == [12.5, 12.5, 25.0, 50.0]


def test_error_kinds_refuses_a_file_that_is_not_an_eval(tmp_path: Path) -> None:
    path = tmp_path / "eval.run.json"
    path.write_text(json.dumps({"summary": {}}))
    out = subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True, text=True)
    assert out.returncode != 0 and "is not the output of `distill eval`" in out.stderr
    assert "Traceback" not in out.stderr
