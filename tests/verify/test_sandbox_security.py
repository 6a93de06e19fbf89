"""Hostile programs through the `code` verifier: each must fail, in time, leaving the machine untouched.

Real subprocesses, no mocks. Every program here is written so that it would *pass* its test if the
attack worked (it prints what the test expects only when it escaped), so a broken sandbox shows
up as a passing verdict, not just as an unchanged file.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from distill.verify import VERIFIERS, Verdict, sandbox_isolation

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")

SANDBOX_UIDS = range(2_000_000_000, 2_100_000_000)


def run(program: str, expected_stdout: str = "escaped", time_limit_s: float = 1.0) -> tuple[Verdict, float]:
    completion = f"<think>\nI will try something.\n</think>\n\n```python\n{program}\n```\n"
    reference = {"io": [{"stdin": "", "stdout": expected_stdout}], "time_limit_s": time_limit_s}
    start = time.monotonic()
    verdict = VERIFIERS["code"](completion, reference)
    return verdict, time.monotonic() - start


def sandbox_processes() -> list[int]:
    """Processes still running as a sandbox uid (there must be none once a run is over; zombies are dead)."""
    found = []
    for entry in os.scandir("/proc"):
        try:
            if entry.name.isdigit() and entry.stat().st_uid in SANDBOX_UIDS:
                if Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry.name))
        except OSError:
            pass
    return found


def test_isolation_report_matches_what_a_program_sees() -> None:
    iso = sandbox_isolation()
    if os.geteuid() == 0:
        assert iso["unprivileged_uid"] is not None, "as root the sandbox must switch to an unprivileged uid"
        assert iso["process_limit_enforced"] and iso["files_outside_workdir_protected"]
    probe = "import os, socket\nprint(os.getuid() != 0, sorted(os.environ) == ['HOME', 'LANG', 'PATH', 'TMPDIR'])"
    verdict, _ = run(probe, expected_stdout="True True")
    assert verdict.passed, verdict
    if iso["read_only_file_system"]:
        ro = "import os\nprint(*(bool(os.statvfs(p).f_flag & os.ST_RDONLY) for p in ('/', '.')))"
        verdict, _ = run(ro, expected_stdout="True False")  # all read-only but its own directory
        assert verdict.passed, verdict
    if iso["network_namespace"]:
        verdict, _ = run("import socket\nprint([name for _, name in socket.if_nameindex()])", expected_stdout="['lo']")
        assert verdict.passed, verdict


def test_fork_bomb_is_contained_and_cleaned_up() -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    verdict, elapsed = run(bomb)
    assert not verdict.passed and "time limit exceeded" in verdict.reason
    assert elapsed < 5.0
    assert sandbox_processes() == []


def test_process_count_is_capped() -> None:
    counter = (
        "import os, time\nn = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n    except OSError:\n"
        "        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    n += 1\nprint(n)"
    )
    verdict, elapsed = run(counter, expected_stdout="200")
    assert not verdict.passed and "wrong output" in verdict.reason
    forked = int(verdict.reason.split("got '")[1].split("'")[0])
    assert forked < 16  # RLIMIT_NPROC holds even though distill runs as root
    assert elapsed < 4.0
    assert sandbox_processes() == []  # the sleeping children died with the run


def test_memory_bomb_fails_fast() -> None:
    verdict, elapsed = run("x = bytearray(8 << 30)\nprint('escaped')")
    assert not verdict.passed and "MemoryError" in verdict.reason
    assert elapsed < 3.0
    # Growing slowly: the address-space limit stops it, or the CPU limit if page faults eat the CPU time first
    # (a 3 s limit, so that on loaded cores the wall clock does not run out before either)
    verdict, elapsed = run("x = []\nwhile True:\n    x.append(bytearray(10**7))", time_limit_s=3.0)
    assert not verdict.passed and ("MemoryError" in verdict.reason or "SIGXCPU" in verdict.reason)
    assert elapsed < 10.0


def test_infinite_loop_is_killed_on_cpu_time() -> None:
    verdict, elapsed = run("while True:\n    pass")
    assert not verdict.passed and ("SIGXCPU" in verdict.reason or "time limit exceeded" in verdict.reason)
    assert elapsed < 4.0


def test_sleeping_past_the_limit_is_killed_on_wall_time() -> None:
    verdict, elapsed = run("import time\ntime.sleep(60)\nprint('escaped')")
    assert not verdict.passed and "time limit exceeded (1s)" in verdict.reason
    assert elapsed < 4.0


def test_cannot_write_outside_its_directory(tmp_path: Path) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("original")
    marker = Path("/tmp") / f"distill-escape-{secrets.token_hex(4)}"
    program = f"""
import os
escaped = []
for name, attempt in (
    ("write", lambda: open({str(canary)!r}, "w").write("pwned")),
    ("remove", lambda: os.remove({str(canary)!r})),
    ("chmod", lambda: os.chmod({str(canary)!r}, 0o777)),
    ("rename", lambda: os.rename({str(canary)!r}, "stolen.txt")),
):
    try:
        attempt()
        escaped.append(name)
    except OSError:
        pass
try:
    open({str(marker)!r}, "w").write("left behind")  # lands in a private /tmp when there is a mount namespace
except OSError:
    pass
open("inside.txt", "w").write("fine")  # its own directory is writable
print("escaped" if escaped else "contained", *escaped)
"""
    verdict, elapsed = run(program)
    assert not verdict.passed and "got 'contained'" in verdict.reason
    assert canary.read_text() == "original" and oct(canary.stat().st_mode & 0o777) == "0o644"
    if sandbox_isolation()["mount_namespace"]:
        assert not marker.exists()
    marker.unlink(missing_ok=True)
    assert elapsed < 4.0


def test_cannot_read_a_secret_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_hex(16)
    monkeypatch.setenv("DISTILL_TEST_SECRET", token)
    program = """
import os
found = os.environ.get("DISTILL_TEST_SECRET")
for pid in os.listdir("/proc"):
    try:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\\0")
    except OSError:
        continue
    found = found or next((e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"DISTILL_TEST_SECRET=")), None)
print(found)
"""
    verdict, elapsed = run(program, expected_stdout=token)
    assert not verdict.passed and "got 'None'" in verdict.reason  # neither its environment nor /proc had it
    assert elapsed < 4.0


def test_cannot_reach_a_loopback_server() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    connections: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connections.append(server.accept())
            except TimeoutError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    program = (
        f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')\n"
        "    print('escaped')\nexcept OSError as e:\n    print(type(e).__name__)"
    )
    try:
        verdict, elapsed = run(program, time_limit_s=3.0)
    finally:
        stop.set()
        thread.join()
        server.close()
    assert not verdict.passed and "wrong output" in verdict.reason
    assert connections == []
    assert elapsed < 6.0


def test_cannot_kill_its_parent_or_the_test_process() -> None:
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        program = f"""
import os, signal
for attempt in (
    lambda: os.kill(os.getppid(), signal.SIGKILL),
    lambda: os.kill({os.getpid()}, signal.SIGKILL),
    lambda: os.kill({bystander.pid}, signal.SIGKILL),
    lambda: os.killpg({os.getpgid(0)}, signal.SIGKILL),
    lambda: os.kill(-1, signal.SIGKILL),
    lambda: os.killpg(os.getpgid(0), signal.SIGKILL),
):
    try:
        attempt()
    except OSError:
        pass
print("escaped")
"""
        verdict, elapsed = run(program, expected_stdout="nothing")
        assert not verdict.passed
        assert elapsed < 4.0
        assert bystander.poll() is None  # the bystander (and this test process) are still alive
        os.kill(os.getpid(), 0)
    finally:
        bystander.send_signal(signal.SIGKILL)
        bystander.wait()


def test_a_gigabyte_of_stdout_is_cut_off() -> None:
    program = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)"
    verdict, elapsed = run(program)
    assert not verdict.passed and "output limit exceeded" in verdict.reason
    assert elapsed < 4.0
    assert sandbox_processes() == []
