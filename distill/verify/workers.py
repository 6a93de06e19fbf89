"""A pool of worker processes with a hard per-item timeout.

Some checks (sympy inside math-verify) can hang on hostile input, and math-verify's own timeouts
use signals, which only work in a main thread. So each item runs in a worker process's main
thread; the parent waits with a deadline and, when it passes, kills that worker and starts a fresh
one. Workers are started once and reused (forkserver), so thousands of items cost thousands of
messages, not thousands of process start-ups.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

_CTX = mp.get_context("forkserver")


def _serve(conn: Connection, fn: Callable[[Any], Any]) -> None:
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", fn(item)))
        except Exception as e:  # the item's fault, not the pool's: report and go on
            conn.send(("error", f"{type(e).__name__}: {e}"))


class _Worker:
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.conn, child = _CTX.Pipe()
        self.proc = _CTX.Process(target=_serve, args=(child, fn), daemon=True)
        self.proc.start()
        child.close()
        self.index: int | None = None
        self.deadline = 0.0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.conn.close()


class TimeoutPool:
    """`map(items)` → results in order; an item past `timeout` seconds yields `on_timeout`."""

    def __init__(self, fn: Callable[[Any], Any], workers: int, timeout: float) -> None:
        self.fn, self.timeout = fn, timeout
        self.workers = [_Worker(fn) for _ in range(max(1, workers))]

    def map(
        self,
        items: Sequence[Any],
        on_timeout: Any,
        on_error: Callable[[str], Any],
        progress: Callable[[int], None] | None = None,
    ) -> list[Any]:
        results: list[Any] = [None] * len(items)
        todo = list(range(len(items)))[::-1]
        busy: dict[Connection, _Worker] = {}
        while todo or busy:
            for w in self.workers:
                if w.index is None and todo:
                    w.index = todo.pop()
                    w.deadline = time.monotonic() + self.timeout
                    w.conn.send(items[w.index])
                    busy[w.conn] = w
            now = time.monotonic()
            ready = wait(list(busy), timeout=max(0.0, min(w.deadline for w in busy.values()) - now))
            for conn in ready:
                w = busy.pop(conn)
                try:
                    status, value = conn.recv()
                    results[w.index] = value if status == "ok" else on_error(value)
                except (EOFError, OSError):  # the worker died (e.g. the OS killed it): an error; replace it
                    results[w.index] = on_error("worker process died")
                    self._replace(w)
                w.index = None
                if progress:
                    progress(1)
            for conn, w in list(busy.items()):
                if time.monotonic() >= w.deadline:
                    busy.pop(conn)
                    results[w.index] = on_timeout
                    self._replace(w)
                    if progress:
                        progress(1)
        return results

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self.workers[self.workers.index(w)] = _Worker(self.fn)

    def close(self) -> None:
        for w in self.workers:
            w.kill()

    def __enter__(self) -> TimeoutPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
