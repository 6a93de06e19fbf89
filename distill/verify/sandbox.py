"""Run model-written Python in a sandbox. Generated code is hostile until proven otherwise.

Each run gets:
- its own process, session and process group (the whole group is killed at the wall-clock limit,
  and once more when the program ends, so stragglers it forked die with it);
- rlimits: CPU seconds, address space, processes, file size, open files;
- an unprivileged user (nobody) when distill runs as root, so the process limit is enforced and
  nothing outside its directory is writable; the interpreter is then one that user may execute;
- no network: a fresh network namespace (no interfaces but a down loopback) where the kernel lets
  us make one; `isolation()` reports what is actually in force on this machine;
- a throwaway working directory, an empty environment (no inherited secrets), `python -I`;
- stdout/stderr read with a cap; passing it kills the run.

The limits are applied by a small launcher (our code, run first in the child) that then execs
the interpreter on the program, so no `preexec_fn` runs in the parent's threads.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

NOBODY = 65534
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000

LAUNCHER = r"""
import ctypes, json, os, resource, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
if cfg["netns"]:
    flags = 0x40000000 if os.geteuid() == 0 else 0x40000000 | 0x10000000
    if libc.unshare(flags) != 0:
        sys.exit(97)  # asked for isolation we cannot get: refuse to run rather than run unisolated
limits = {"RLIMIT_CPU": cfg["cpu_s"], "RLIMIT_AS": cfg["memory_bytes"], "RLIMIT_NPROC": cfg["processes"],
          "RLIMIT_FSIZE": cfg["file_bytes"], "RLIMIT_NOFILE": cfg["open_files"], "RLIMIT_CORE": 0}
for name, value in limits.items():
    resource.setrlimit(getattr(resource, name), (value, value))
if cfg["uid"] is not None:
    os.setgroups([])
    os.setgid(cfg["uid"])
    os.setuid(cfg["uid"])
os.execve(cfg["python"], [cfg["python"], "-I", cfg["program"]], cfg["env"])
"""


@dataclass
class Limits:
    """Resource limits of one sandboxed run."""

    wall_s: float = 10.0
    cpu_s: int = 10
    memory_bytes: int = 1 << 30
    processes: int = 16
    file_bytes: int = 16 << 20
    open_files: int = 64
    output_bytes: int = 1 << 20


@dataclass
class RunResult:
    """What a sandboxed program did."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    output_exceeded: bool = False
    seconds: float = 0.0


def _world_executable(path: str) -> bool:
    """Whether a user with no special rights can execute `path` (every directory on the way searchable)."""
    real = Path(os.path.realpath(path))
    parts = [real, *real.parents]
    return all(p.stat().st_mode & 0o001 for p in parts if p.exists())


@cache
def _python() -> str:
    """An interpreter the sandbox user may run: ours if reachable, else the system's."""
    if os.geteuid() != 0 or _world_executable(sys.executable):
        return sys.executable
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""):
        if candidate and os.path.exists(candidate) and _world_executable(candidate):
            return candidate
    return sys.executable


@cache
def _netns_possible() -> bool:
    probe = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            LAUNCHER,
            json.dumps(_config(Path("/"), Limits(), netns=True, uid=None, program="/dev/null", python=sys.executable)),
        ],
        capture_output=True,
    )
    return probe.returncode == 0


def isolation() -> dict[str, object]:
    """What isolation the sandbox has on this machine."""
    root = os.geteuid() == 0
    return {
        "separate_process_group": True,
        "rlimits": ["cpu", "address_space", "processes", "file_size", "open_files"],
        "unprivileged_user": root,  # as root we switch to nobody; otherwise we already are a plain user
        "network_namespace": _netns_possible(),
        "interpreter": _python(),
        "clean_environment": True,
    }


def _config(workdir: Path, limits: Limits, netns: bool, uid: int | None, program: str, python: str) -> dict:
    return {
        "netns": netns,
        "uid": uid,
        "python": python,
        "program": program,
        "cpu_s": max(1, int(limits.cpu_s)),
        "memory_bytes": limits.memory_bytes,
        "processes": limits.processes,
        "file_bytes": limits.file_bytes,
        "open_files": limits.open_files,
        "env": {
            "PATH": "/usr/bin:/bin",
            "HOME": str(workdir),
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
        },
    }


def _reader(stream, cap: int, sink: list[bytes], over: threading.Event) -> None:
    total = 0
    while chunk := stream.read(65536):
        total += len(chunk)
        if total > cap:
            over.set()
            return
        sink.append(chunk)


def run_python(
    source: str, stdin: str = "", limits: Limits | None = None, files: dict[str, str] | None = None
) -> RunResult:
    """Run `source` as a Python program in the sandbox (with `files` beside it) and return what it did."""
    limits = limits or Limits()
    root = os.geteuid() == 0
    with tempfile.TemporaryDirectory(prefix="distill-sandbox-") as tmp:
        workdir = Path(tmp)
        program = workdir / "program.py"
        program.write_text(source)
        for name, text in (files or {}).items():
            (workdir / name).write_text(text)
        if root:
            for path in [workdir, *workdir.iterdir()]:
                os.chown(path, NOBODY, NOBODY)
        cfg = _config(
            workdir,
            limits,
            netns=_netns_possible(),
            uid=NOBODY if root else None,
            program=str(program),
            python=_python(),
        )
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", LAUNCHER, json.dumps(cfg)],
            cwd=workdir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={},
            start_new_session=True,
        )
        out, err, over = [], [], threading.Event()
        readers = [
            threading.Thread(target=_reader, args=(s, limits.output_bytes, b, over), daemon=True)
            for s, b in ((proc.stdout, out), (proc.stderr, err))
        ]
        for r in readers:
            r.start()
        try:
            proc.stdin.write(stdin.encode())
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # the program did not read its input
        timed_out = False
        while proc.poll() is None:
            if over.is_set():
                break
            if time.monotonic() - start > limits.wall_s:
                timed_out = True
                break
            time.sleep(0.01)
        _kill_group(proc.pid)
        proc.wait()
        for r in readers:
            r.join(timeout=1)
        return RunResult(
            returncode=proc.returncode,
            stdout=b"".join(out).decode(errors="replace"),
            stderr=b"".join(err).decode(errors="replace"),
            timed_out=timed_out,
            output_exceeded=over.is_set(),
            seconds=time.monotonic() - start,
        )


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
