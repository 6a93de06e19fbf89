"""Run model-written Python in a sandbox. Generated code is hostile until proven otherwise.

Model-written code never runs in the verifier's process. Every run gets:

- a separate process in its own session and process group, started through `sandbox_launcher.py`
  (see there for the order of the steps); the whole group is SIGKILLed at the wall-clock limit;
- its own PID namespace where the kernel allows one, under a small init process: when the program
  ends or is killed, everything it spawned dies too, and it cannot see or signal outside pids;
- a fresh unprivileged uid when distill runs as root (a random uid above 2e9, used once), because
  root ignores RLIMIT_NPROC and may write anywhere; a fresh uid per run also keeps one run's fork
  bomb from using up another run's process allowance, and lets us kill everything the run left
  behind by uid. The interpreter must then be one that uid may execute: ours if it can, else the
  system's `python3` (programs get the standard library only). Not root: a user namespace instead;
- no network: its own network namespace (no interfaces but a loopback that is down), where allowed;
- a mount namespace where allowed: every mount read-only but the working directory, private tmpfs
  on /tmp, /var/tmp and /dev/shm (writes there vanish with the run), a /proc of its own;
- rlimits on CPU seconds, address space, processes, file size and open files; no core dumps;
- a throwaway working directory, a scrubbed environment (no inherited secrets), `python -I`;
- stdout and stderr read with a cap; passing it kills the run.

Which of these are in force depends on the machine and on being root; `sandbox_isolation()` probes
once (a real run of the launcher) and reports what it measured, and runs use exactly that plan.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

LAUNCHER = str(Path(__file__).with_name("sandbox_launcher.py"))
SETUP_FAILED = 125
_UID_BASE, _UID_SPAN = 2_000_000_000, 100_000_000
_EXIT_GRACE_S = 0.2  # after the program exits, how long its leftovers may hold the pipes open


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run."""

    wall_s: float = 10.0  # wall-clock seconds, interpreter start-up included
    cpu_s: int = 10  # CPU seconds (SIGXCPU, then SIGKILL a second later)
    memory_bytes: int = 1 << 30  # address space
    processes: int = 16  # processes and threads of the sandbox uid
    file_bytes: int = 16 << 20  # largest file the program may write
    open_files: int = 64
    output_bytes: int = 1 << 20  # per stream (stdout, stderr); more kills the run


@dataclass(frozen=True)
class RunResult:
    """What a sandboxed program did."""

    returncode: int | None  # negative: killed by that signal
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    output_exceeded: bool = False
    setup_error: str | None = None  # the sandbox could not be built: not the program's fault


@dataclass(frozen=True)
class _Plan:
    python: str
    uid_switch: bool
    user_namespace: bool
    network_namespace: bool
    pid_namespace: bool
    mount_namespace: bool
    read_only_root: bool


def _config(plan: _Plan, limits: Limits, uid: int | None, workdir: str) -> dict:
    processes = limits.processes
    if uid is None and os.geteuid() != 0:  # RLIMIT_NPROC counts all of our uid's processes, not just the run's
        processes += _processes_of(os.getuid())
    home = "/tmp/work" if plan.mount_namespace else workdir
    return {
        **asdict(plan),
        "uid": uid,
        "program": "program.py",  # relative: the working directory may be hidden under the private /tmp
        "cpu_s": max(1, int(limits.cpu_s)),
        "memory_bytes": int(limits.memory_bytes),
        "processes": processes,
        "file_bytes": int(limits.file_bytes),
        "open_files": int(limits.open_files),
        "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": "/tmp", "LANG": "C.UTF-8"},
    }


def _processes_of(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == uid
            except OSError:
                pass
    return count


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _sweep(uid: int) -> None:
    """Kill every process of a run's uid and return once none is left.

    Without a PID namespace this is what kills what the program left behind (setsid, double fork);
    with one, the kernel does it, but asynchronously, and a run is over only when its processes are.
    A fork bomb may fork while we look, so look again until a pass finds nothing (RLIMIT_NPROC
    bounds how many there can be).
    """
    for _ in range(200):
        found = False
        for entry in os.scandir("/proc"):
            try:
                if entry.name.isdigit() and entry.stat().st_uid == uid:
                    state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":  # a zombie is already dead; its parent reaps it
                        os.kill(int(entry.name), signal.SIGKILL)
                        found = True
            except OSError:  # gone meanwhile
                pass
        if not found:
            return
        time.sleep(0.005)


def _run(plan: _Plan, source: str, stdin: str, limits: Limits, uid: int | None) -> RunResult:
    workdir = tempfile.mkdtemp(prefix="distill-sandbox-")
    stdin_file = tempfile.TemporaryFile() if stdin else None  # a file, not a pipe: no deadlock, read-only fd
    try:
        Path(workdir, "program.py").write_text(source)
        if uid is not None:
            os.chown(workdir, uid, uid)
            os.chown(Path(workdir, "program.py"), uid, uid)
        if stdin_file is not None:
            stdin_file.write(stdin.encode())
            stdin_file.seek(0)
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", LAUNCHER, json.dumps(_config(plan, limits, uid, workdir))],
            cwd=workdir,
            stdin=stdin_file if stdin_file is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={},
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        timed_out = over = False
        exited_at: float | None = None
        with selectors.DefaultSelector() as sel:
            for stream in (proc.stdout, proc.stderr):
                sel.register(stream, selectors.EVENT_READ)
            while sel.get_map() and not over:
                now = time.monotonic()
                if now - start >= limits.wall_s:
                    timed_out = True
                    break
                if proc.poll() is not None:
                    exited_at = exited_at or now
                    if now - exited_at > _EXIT_GRACE_S:
                        break
                for key, _ in sel.select(timeout=min(0.05, start + limits.wall_s - now)):
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    buffers[key.fd] += chunk
                    over = over or len(buffers[key.fd]) > limits.output_bytes
        _kill_group(proc.pid)  # the launcher leads the group; the program dies with it (parent-death signal)
        proc.wait()
        if uid is not None:
            _sweep(uid)
        out, err = (
            bytes(buffers[s.fileno()][: limits.output_bytes]).decode(errors="replace")
            for s in (proc.stdout, proc.stderr)
        )
        proc.stdout.close()
        proc.stderr.close()
        setup_error = None
        if proc.returncode == SETUP_FAILED and "sandbox setup failed" in err:
            setup_error = err.strip().splitlines()[0]
        killed = timed_out or over
        return RunResult(
            returncode=None if killed else proc.returncode,
            stdout=out,
            stderr=err,
            seconds=time.monotonic() - start,
            timed_out=timed_out,
            output_exceeded=over,
            setup_error=setup_error,
        )
    finally:
        if stdin_file is not None:
            stdin_file.close()
        shutil.rmtree(workdir, ignore_errors=True)


_PROBE = """import json, os, sys
print(json.dumps({"uid": os.getuid(), "pid": os.getpid(), "net": os.readlink("/proc/self/ns/net"),
                  "mnt": os.readlink("/proc/self/ns/mnt"), "python": sys.version.split()[0],
                  "ro": bool(os.statvfs("/").f_flag & os.ST_RDONLY), "cwd_ok": open("x", "w").write("1") == 1}))"""


def _probe(plan: _Plan) -> dict | None:
    """Run the probe program under `plan`; its facts if every asked-for isolation is really in force."""
    uid = _UID_BASE + secrets.randbelow(_UID_SPAN) if plan.uid_switch else None
    result = _run(plan, _PROBE, "", Limits(wall_s=10.0), uid)
    try:
        facts = json.loads(result.stdout)
    except ValueError:
        return None
    ok = (
        result.returncode == 0
        and (uid is None or facts["uid"] == uid)
        and (not plan.network_namespace or facts["net"] != os.readlink("/proc/self/ns/net"))
        and (not plan.mount_namespace or facts["mnt"] != os.readlink("/proc/self/ns/mnt"))
        and (not plan.pid_namespace or facts["pid"] == 2)  # 1 is the launcher's init process
        and (not plan.read_only_root or facts["ro"])
    )
    return facts if ok else None


@cache
def _plan_and_facts() -> tuple[_Plan, dict]:
    """The strongest isolation that works here, tried from strongest to weakest."""
    # (network, pid, mount namespace, read-only file system)
    namespaces = [
        (True, True, True, True),
        (True, True, True, False),
        (True, True, False, False),
        (True, False, False, False),
        (False, False, False, False),
    ]
    if os.geteuid() == 0:
        pythons = dict.fromkeys(p for p in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3") if p)
        attempts = [_Plan(py, True, False, *ns) for py in pythons if os.path.exists(py) for ns in namespaces]
        attempts += [_Plan(sys.executable, False, False, *ns) for ns in namespaces]
    else:
        attempts = [_Plan(sys.executable, False, True, *ns) for ns in namespaces[:-1]]
        attempts.append(_Plan(sys.executable, False, False, *namespaces[-1]))
    for plan in attempts:
        facts = _probe(plan)
        if facts is not None:
            return plan, facts
    raise RuntimeError("The code sandbox cannot start a Python interpreter on this machine; code cannot be verified.")


def sandbox_isolation() -> dict[str, object]:
    """What isolation sandboxed runs get on this machine, as measured by a probe run (cached)."""
    plan, facts = _plan_and_facts()
    root = os.geteuid() == 0
    return {
        "interpreter": plan.python,
        "interpreter_version": facts["python"],
        "unprivileged_uid": facts["uid"] if plan.uid_switch else None,
        "user_namespace": plan.user_namespace,
        "network_namespace": plan.network_namespace,
        "pid_namespace": plan.pid_namespace,
        "mount_namespace": plan.mount_namespace,
        "read_only_file_system": plan.read_only_root,
        "process_limit_enforced": plan.uid_switch or not root,
        # As the caller's own uid, without a read-only file system, the caller's files are writable.
        "files_outside_workdir_protected": plan.uid_switch or plan.read_only_root,
        "rlimits": ["cpu", "address_space", "processes", "file_size", "open_files", "core"],
        "environment": "scrubbed",
    }


def run_python(source: str, stdin: str = "", limits: Limits | None = None) -> RunResult:
    """Run `source` as a Python program in the sandbox, feeding it `stdin`, and report what it did."""
    plan, _ = _plan_and_facts()
    uid = _UID_BASE + secrets.randbelow(_UID_SPAN) if plan.uid_switch else None
    return _run(plan, source, stdin, limits or Limits(), uid)
