"""The code verifier and its sandbox against hostile programs: each fails with a reason, in time,
and leaves the test process, a canary file and a loopback server untouched."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from distill.verify import VERIFIERS, verify_batch
from distill.verify.sandbox import isolation

ONE_TEST = {"asserts": "assert True", "time_limit_s": 2.0}


def program(code: str) -> str:
    return f"<think>\nI will write it.\n</think>\n```python\n{code}\n```"


def run(code: str, reference: dict = ONE_TEST, bound: float = 15.0):
    start = time.monotonic()
    verdict = VERIFIERS["code"](program(code), reference)
    assert time.monotonic() - start < bound, verdict
    return verdict


def test_isolation_in_force_here() -> None:
    info = isolation()
    assert info["separate_process_group"] and info["clean_environment"]
    if os.geteuid() == 0:  # CI and these machines: the strong setting
        assert info["unprivileged_user"] and info["network_namespace"]


def test_correct_programs_pass_io_and_asserts() -> None:
    ref = {
        "io": [{"stdin": "3\n", "stdout": "6"}, {"stdin": "10\n", "stdout": "20\n\n"}],
        "asserts": "assert double(4) == 8",
        "time_limit_s": 5,
    }
    code = "def double(x):\n    return 2 * x\n\nif __name__ == '__main__':\n    print(double(int(input())))   "
    assert run(code, ref).passed


def test_wrong_program_fails_with_the_test_named() -> None:
    ref = {"io": [{"stdin": "3", "stdout": "6"}, {"stdin": "4", "stdout": "8"}]}
    verdict = run("x = int(input())\nprint(6 if x == 3 else 0)", ref)
    assert not verdict.passed and "test 2" in verdict.reason and "wrong output" in verdict.reason
    verdict = run("def f(x):\n    return x", {"asserts": "assert f(2) == 3"})
    assert not verdict.passed and "AssertionError" in verdict.reason


def test_no_code_block_or_no_tests() -> None:
    assert "no fenced code block" in VERIFIERS["code"]("</think> just words", ONE_TEST).reason
    assert "no tests" in VERIFIERS["code"](program("print(1)"), {}).reason


def test_fork_bomb() -> None:
    verdict = run("import os\nwhile True:\n    os.fork()")
    assert not verdict.passed
    assert os.getpid() and len(os.listdir("/proc")) < 5000  # the machine still has room


def test_memory_bomb() -> None:
    verdict = run("x = bytearray(8 * 1024 ** 3)\nprint(len(x))")
    assert not verdict.passed and "MemoryError" in verdict.reason


def test_infinite_loop() -> None:
    verdict = run("while True:\n    pass", bound=6)
    assert not verdict.passed


def test_sleep_past_the_limit() -> None:
    verdict = run("import time\ntime.sleep(60)", bound=6)
    assert not verdict.passed and "time limit" in verdict.reason


def test_writing_outside_its_directory(tmp_path: Path) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("untouched")
    code = f"open({str(canary)!r}, 'w').write('pwned')\nopen({str(tmp_path / 'new.txt')!r}, 'w').write('x')"
    verdict = run(code)
    assert not verdict.passed and "PermissionError" in verdict.reason
    assert canary.read_text() == "untouched" and not (tmp_path / "new.txt").exists()


def test_reading_a_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILL_TEST_SECRET", "hunter2")
    ref = {"io": [{"stdin": "", "stdout": "hunter2"}]}
    verdict = run("import os\nprint(os.environ.get('DISTILL_TEST_SECRET', 'none'))", ref)
    assert not verdict.passed and "'none'" in verdict.reason


def test_connecting_to_a_loopback_server() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port, seen = server.getsockname()[1], []

    def accept() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                seen.append(server.accept())
            except TimeoutError:
                continue

    t = threading.Thread(target=accept)
    t.start()
    verdict = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')")
    t.join()
    server.close()
    assert not verdict.passed and not seen  # the server never saw a connection


def test_killing_its_parent() -> None:
    code = (
        "import os, signal\n"
        "for target in (os.getppid(), 1):\n"
        "    try:\n        os.kill(target, signal.SIGKILL)\n    except OSError:\n        pass\n"
        "try:\n    os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\nexcept OSError:\n    pass\n"
        "raise SystemExit(3)"
    )
    verdict = run(code)
    assert not verdict.passed
    assert os.getpid() > 0  # still here (a killed test process would not reach this line)


def test_a_gigabyte_of_stdout() -> None:
    ref = {"io": [{"stdin": "", "stdout": "x"}], "time_limit_s": 10}
    start = time.monotonic()
    verdict = run("import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)", ref)
    assert not verdict.passed and "output limit" in verdict.reason and time.monotonic() - start < 10


def test_batch_runs_in_parallel_and_keeps_order() -> None:
    ref = {"io": [{"stdin": "", "stdout": "ok"}]}
    verdicts = verify_batch("code", [program("print('ok')"), program("print('no')")] * 3, [ref] * 6, workers=3)
    assert [v.passed for v in verdicts] == [True, False] * 3
