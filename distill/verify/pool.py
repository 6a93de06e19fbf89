"""A persistent pool of worker processes with a hard per-item deadline.

Why: sympy (under math-verify) can hang or eat memory for minutes on hostile input such as a
power tower, and math-verify's own timeouts use SIGALRM, which only works in a main thread — not
in the threads eval and GRPO call verifiers from. So each item runs in a worker process's main
thread, and the parent enforces the deadline by killing the worker and starting a fresh one.

Choices:
- workers are plain subprocesses speaking JSON lines over stdin/stdout, not multiprocessing:
  multiprocessing's spawn/forkserver re-import the caller's `__main__` (a user script without an
  `if __name__ == "__main__"` guard would run again in every worker), and fork copies whatever
  threads and CUDA state the caller has;
- workers are started once and reused across calls (`shared_pool`), so thousands of items cost
  thousands of pipe messages, not thousands of interpreter start-ups (~0.6 s each with sympy);
- a caller checks workers out for the length of one `map` and hands them back; concurrent callers
  (threads) never share a worker, so no locking around the pipes is needed;
- a worker's deadline starts when it reports ready, so its start-up time is never billed to an item;
- a worker exits when its stdin closes or its parent disappears (a watchdog thread: sympy keeps
  the main thread busy), and caps its own address space so a runaway computation fails with
  MemoryError instead of taking the machine down.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

STARTUP_S = 60.0  # a fresh worker must import its module within this (generous on a loaded machine)
WORKER_MEMORY_BYTES = 2 << 30

# Run in the worker: make distill importable whatever the caller's sys.path, then serve.
_BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from distill.verify.pool import serve; serve(sys.argv[2])"
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


def serve(target: str) -> None:
    """Worker main loop: apply `module:function` to each JSON line on stdin, answer on stdout."""
    import importlib
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or hard > WORKER_MEMORY_BYTES:
        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, hard))
    out = os.fdopen(os.dup(1), "w")
    sys.stdout = sys.stderr  # a stray print in a library must not corrupt the protocol
    parent = os.getppid()

    def watchdog() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    module, name = target.split(":")
    try:
        fn = getattr(importlib.import_module(module), name)
        if module.startswith("distill.verify.math"):
            importlib.import_module("math_verify")  # fail here, with a sentence, rather than on every item
    except ImportError as e:
        why = f"The verifier worker cannot import {e.name or module} ({e}); install it"
        out.write(json.dumps(["fatal", why + " (math needs: pip install 'math-verify[antlr4_13_2]')."]) + "\n")
        out.flush()
        return
    out.write('["ready"]\n')
    out.flush()
    for line in sys.stdin:
        try:
            reply = ["ok", fn(json.loads(line))]
        except Exception as e:  # the item's fault, not the worker's: report it and serve the next one
            reply = ["error", f"{type(e).__name__}: {e}"[:300]]
        out.write(json.dumps(reply) + "\n")
        out.flush()


class _Worker:
    """One worker subprocess and the parent's view of it."""

    def __init__(self, target: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, _PACKAGE_PARENT, target],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C goes to the caller, which then closes our stdin
        )
        self.ready = False
        self.buffer = b""
        self.index: int | None = None  # the item it is working on
        self.deadline = 0.0

    def send(self, index: int, item: Any, timeout: float) -> None:
        self.index = index
        self.deadline = time.monotonic() + timeout + (0.0 if self.ready else STARTUP_S)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(item).encode() + b"\n")
        self.proc.stdin.flush()

    def read_lines(self) -> list[Any] | None:
        """Messages that have arrived (call when readable); None when the worker has died."""
        assert self.proc.stdout is not None
        chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
        if not chunk:
            return None
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in lines]

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream:
                stream.close()

    def alive(self) -> bool:
        return self.proc.poll() is None


class TimeoutPool:
    """Reusable workers running `target` ("module:function"); `map` gives one outcome per item, in order.

    An outcome is ("ok", value), ("error", message) or ("timeout", None).
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._keep = 1  # idle workers kept: the most ever checked out at once
        self._out = 0

    def _checkout(self, n: int) -> list[_Worker]:
        with self._lock:
            self._out += n
            self._keep = max(self._keep, self._out)
            mine, self._idle = self._idle[:n], self._idle[n:]
        return [w if w.alive() else _Worker(self.target) for w in mine] + [
            _Worker(self.target) for _ in range(n - len(mine))
        ]

    def _checkin(self, workers: list[_Worker]) -> None:
        with self._lock:
            self._out -= len(workers)
            self._idle += [w for w in workers if w.alive()]
            extra, self._idle = self._idle[self._keep :], self._idle[: self._keep]
        for w in extra:
            w.kill()

    def map(
        self,
        items: Sequence[Any],
        timeout: float,
        workers: int,
        progress: Callable[[int], None] | None = None,
    ) -> list[tuple[str, Any]]:
        """Run every item, at most `workers` at a time, each under `timeout` seconds."""
        results: list[tuple[str, Any] | None] = [None] * len(items)
        if not items:
            return []
        todo = list(range(len(items) - 1, -1, -1))  # popped from the end: item 0 first
        pool = self._checkout(max(1, min(workers, len(items))))

        def finish(w: _Worker, outcome: tuple[str, Any]) -> None:
            assert w.index is not None
            results[w.index] = outcome
            w.index = None
            if progress:
                progress(1)

        try:
            while todo or any(w.index is not None for w in pool):
                for w in pool:
                    if w.index is None and todo:
                        i = todo.pop()
                        try:
                            w.send(i, items[i], timeout)
                        except (BrokenPipeError, OSError):  # died while idle: a fresh one takes the item
                            w = pool[pool.index(w)] = self._replace(w)
                            w.send(i, items[i], timeout)
                busy = [w for w in pool if w.index is not None]
                wait_s = max(0.0, min(w.deadline for w in busy) - time.monotonic())
                readable = wait([w.proc.stdout for w in busy], timeout=wait_s)  # type: ignore[misc]
                for w in busy:
                    if w.proc.stdout in readable:
                        messages = w.read_lines()
                        if messages is None:  # died (killed by the OS, crashed): the item fails, the worker is replaced
                            finish(w, ("error", "the verifier worker process died"))
                            pool[pool.index(w)] = self._replace(w)
                            continue
                        for msg in messages:
                            if msg == ["ready"]:
                                w.ready = True
                                w.deadline = time.monotonic() + timeout
                            elif msg[0] == "fatal":  # every item would fail the same way: stop now
                                raise RuntimeError(msg[1])
                            else:
                                finish(w, (msg[0], msg[1]))
                    if w.index is not None and time.monotonic() >= w.deadline:
                        finish(w, ("timeout", None))
                        pool[pool.index(w)] = self._replace(w)
        finally:
            # Interrupted mid-item (KeyboardInterrupt): workers still computing are killed, idle ones kept.
            for w in pool:
                if w.index is not None:
                    w.kill()
            self._checkin(pool)
        return [r if r is not None else ("error", "not run") for r in results]

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        return _Worker(self.target)

    def close(self) -> None:
        """Stop every idle worker (checked-out ones stop when their `map` ends)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for w in idle:
            w.kill()


# Keyed by pid too: a forked child (a data-loader worker) must not talk to its parent's workers' pipes.
_POOLS: dict[tuple[int, str], TimeoutPool] = {}
_POOLS_LOCK = threading.Lock()


def shared_pool(target: str) -> TimeoutPool:
    """The process-wide pool for `target`, created on first use and closed at exit."""
    key = (os.getpid(), target)
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = TimeoutPool(target)
        return _POOLS[key]


@atexit.register
def _close_pools() -> None:
    for (pid, _), pool in list(_POOLS.items()):
        if pid == os.getpid():
            pool.close()
