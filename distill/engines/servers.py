"""A pool of teacher servers (vLLM's OpenAI-compatible API): requests spread over every URL, faults retried.

The HTTP side of a served teacher, and nothing of the teacher: `ServerPool.stream` takes (key, JSON body) jobs
and yields (key, JSON answer, URL) as answers come; `ServerEngine` (server_engine.py) makes the bodies and reads
the answers. Choices:

- one request per job, each with its own seed, as the in-process engine adds one request per sample: the server
  batches them itself, and every answer is handed on (written to the cache) as soon as it comes;
- a bounded number of requests in flight per server (`max_inflight`); a job goes to the server with the most
  free room, so a faster server (more GPUs, a shorter queue) takes more of the work;
- asyncio + httpx inside a generator: the event loop runs only while the caller waits for the next answer, so
  there is no thread, and the caller's work between answers (writing records) never runs concurrently with it;
- a fault is a connection that fails or an answer that does not come within `timeout_s`, or HTTP 5xx / 429: the
  job goes back to the queue and the server gets no work for 1, 2, 4, ... s (at most `MAX_BACKOFF_S`); after
  `retries` faults in a row it is dropped (logged, counted in `dropped`); when none remains the run stops with a
  sentence naming every URL and its last fault. Requests that were in flight together when a server failed
  count as one fault (a dead server fails them all at once);
- any other 4xx is the server refusing this request (a prompt longer than its context, more logprobs than it
  allows): a sentence with the server's message, never retried.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from distill.errors import DistillError

BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
CONNECT_TIMEOUT_S = 10.0


def stderr(message: str) -> None:
    """Log to stderr (stdout carries a stage's results: the cache path is its last line), above a progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


class ServerFault(Exception):
    """A server did not answer (connection failed or lost, timeout, 5xx): the job is retried."""


class ServerRefusal(Exception):
    """A server answered that it will not do this request (4xx, or an answer that is not JSON)."""


@dataclass
class Server:
    """One URL and its state in the pool."""

    url: str
    model: str | None = None
    """The name it serves the teacher under (set by the identity check), sent with every request."""
    inflight: int = 0
    answered: int = 0
    faults: int = 0
    """Faults in a row (a good answer resets it)."""
    epoch: int = 0
    """Bumped at every counted fault: a request sent before it fails without counting again."""
    ready_at: float = 0.0
    """No new work before this time (monotonic seconds): backing off."""
    last_fault: str = ""
    dropped: bool = False


def refusal_message(status: int, text: str) -> str:
    """The message of a vLLM error answer ({"error": {"message": ...}}), else the start of its body."""
    import json

    try:
        body = json.loads(text)
        err = body.get("error", body) if isinstance(body, dict) else body
        message = err.get("message", text) if isinstance(err, dict) else str(err)
    except ValueError:
        message = text
    return f"HTTP {status}: {' '.join(str(message).split())[:300]}"


def _describe(e: Exception, timeout_s: float) -> str:
    import httpx

    if isinstance(e, httpx.TimeoutException):
        return f"no answer within {timeout_s:g} s"
    if isinstance(e, httpx.ConnectError):
        return f"cannot connect ({e})" if str(e) else "cannot connect"
    return f"connection lost ({type(e).__name__}{': ' + str(e) if str(e) else ''})"


class ServerPool:
    """Teacher servers at `urls`; see the module docstring."""

    def __init__(
        self,
        urls: list[str],
        max_inflight: int = 256,
        timeout_s: float = 3600.0,
        retries: int = 5,
        log: Callable[[str], None] = stderr,
    ) -> None:
        self.servers = [Server(u.rstrip("/")) for u in urls]
        self.max_inflight, self.timeout_s, self.retries, self.log = max_inflight, timeout_s, retries, log
        self.resent = 0
        """Jobs sent again after a fault."""

    @property
    def live(self) -> list[Server]:
        return [s for s in self.servers if not s.dropped]

    @property
    def dropped(self) -> list[Server]:
        return [s for s in self.servers if s.dropped]

    def _timeout(self) -> Any:
        import httpx

        return httpx.Timeout(self.timeout_s, connect=min(CONNECT_TIMEOUT_S, self.timeout_s), pool=None)

    # -----------------------------------------------------------------------------------------
    # one request to one server (identity checks), retried like any other

    def call(self, server: Server, path: str, body: dict[str, Any] | None = None) -> Any:
        """GET (body None) or POST `path` on one server, with the pool's retries; raises ServerFault once the
        server is dropped, ServerRefusal when it refuses."""
        import httpx

        if body is not None and server.model:
            body = {"model": server.model, **body}
        with httpx.Client(timeout=self._timeout()) as client:
            while True:
                epoch = server.epoch
                try:
                    r = client.get(server.url + path) if body is None else client.post(server.url + path, json=body)
                    return _answer(r)
                except httpx.TransportError as e:
                    why = _describe(e, self.timeout_s)
                except ServerFault as e:
                    why = str(e)
                self._fault(server, epoch, why)
                if server.dropped:
                    raise ServerFault(why)
                time.sleep(max(0.0, server.ready_at - time.monotonic()))

    # -----------------------------------------------------------------------------------------
    # many jobs over every server

    def stream(self, path: str, jobs: Iterable[tuple[Any, dict[str, Any]]]) -> Iterator[tuple[Any, Any, str]]:
        """POST every job's body to `path` on some server; yield (key, answer, URL) in the order answers come.
        Raises DistillError when a server refuses a job or when no server remains."""
        import httpx

        loop = asyncio.new_event_loop()
        # every request in flight holds a connection (HTTP/1.1), kept open for the next one
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        client = httpx.AsyncClient(timeout=self._timeout(), limits=limits)
        todo, again = iter(jobs), deque()
        running: dict[asyncio.Task, tuple[Server, tuple[Any, dict[str, Any]], int]] = {}
        exhausted = False
        try:
            while True:
                while (server := self._free()) is not None:
                    self.resent += bool(again)
                    job = again.popleft() if again else next(todo, None)
                    if job is None:
                        exhausted = True
                        break
                    body = {"model": server.model, **job[1]} if server.model else job[1]
                    task = loop.create_task(self._post(client, server.url + path, body))
                    running[task] = (server, job, server.epoch)
                    server.inflight += 1
                if not running and exhausted and not again:
                    return
                wait = self._until_ready()
                if not running:  # every live server is backing off (or none is left)
                    if wait is None:
                        raise DistillError(self.none_left())
                    loop.run_until_complete(asyncio.sleep(wait))
                    continue
                done, _ = loop.run_until_complete(
                    asyncio.wait(running, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                )
                for task in done:
                    server, job, epoch = running.pop(task)
                    server.inflight -= 1
                    try:
                        answer = task.result()
                    except ServerFault as e:
                        again.append(job)
                        self._fault(server, epoch, str(e))
                        continue
                    except ServerRefusal as e:
                        raise DistillError(
                            f"Teacher server {server.url} refused a request ({e}); nothing is retried: fix the "
                            "request's cause (the server's message says what) and rerun, which resumes."
                        ) from None
                    server.faults = 0
                    server.answered += 1
                    yield job[0], answer, server.url
                if not self.live:  # after the answers that came with the last fault: they are written first
                    raise DistillError(self.none_left())
        finally:
            for task in running:
                task.cancel()
            if running:
                loop.run_until_complete(asyncio.gather(*running, return_exceptions=True))
            loop.run_until_complete(client.aclose())
            loop.close()

    async def _post(self, client: Any, url: str, body: dict[str, Any]) -> Any:
        import httpx

        try:
            return _answer(await client.post(url, json=body))
        except httpx.TransportError as e:
            raise ServerFault(_describe(e, self.timeout_s)) from None

    def _free(self) -> Server | None:
        """The live, ready server with the most free room, or None."""
        now = time.monotonic()
        ready = [s for s in self.live if s.ready_at <= now and s.inflight < self.max_inflight]
        return max(ready, key=lambda s: self.max_inflight - s.inflight, default=None)

    def _until_ready(self) -> float | None:
        """Seconds until the next backing-off server may get work again (None: none is backing off)."""
        now = time.monotonic()
        waits = [s.ready_at - now for s in self.live if s.ready_at > now]
        return max(0.0, min(waits)) if waits else None

    def _fault(self, server: Server, epoch: int, why: str) -> None:
        """Count a fault of `server` (once for the requests in flight when it happened): back off, or drop it."""
        if server.dropped or epoch != server.epoch:
            return
        server.faults += 1
        server.epoch += 1
        server.last_fault = why
        if server.faults > self.retries:
            server.dropped = True
            self.log(
                f"teacher server {server.url} dropped after {server.faults} fault{'s' * (server.faults > 1)} in a row "
                f"(last: {why}); "
                f"{len(self.live)} remain"
            )
            return
        delay = min(BACKOFF_S * 2 ** (server.faults - 1), MAX_BACKOFF_S)
        server.ready_at = time.monotonic() + delay
        self.log(f"teacher server {server.url}: {why}; retry {server.faults} of {self.retries} in {delay:g} s")

    def none_left(self) -> str:
        """The sentence for a run that has no server left."""
        lost = "; ".join(f"{s.url} ({s.last_fault})" for s in self.servers)
        return (
            f"No teacher server remains: {lost}. Every record answered so far is in the cache; start the server(s) "
            "again and rerun the same command, which resumes."
        )


def _answer(r: Any) -> Any:
    """An HTTP response's JSON, or the fault / refusal it is."""
    if r.status_code >= 500 or r.status_code == 429:
        raise ServerFault(refusal_message(r.status_code, r.text))
    if r.status_code >= 400:
        raise ServerRefusal(refusal_message(r.status_code, r.text))
    try:
        return r.json()
    except ValueError:
        raise ServerRefusal(f"an answer that is not JSON: {r.text[:200]!r}") from None
