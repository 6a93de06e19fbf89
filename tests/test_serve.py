"""Teachers behind real vLLM servers: `distill serve` on the bundled teacher, two of them on free loopback ports.

- a cache generated through a server is the in-process cache: the same key (a cache hit for each other), the same
  ids at temperature 0 and top-k logprobs within 1e-4; scoring through a server reproduces them too;
- a server of another model, a smaller logprob limit or another context is refused before anything is written,
  with one sentence naming the URL; so is a server whose tokenizer differs from the local one;
- a server killed in the middle of a `generate` stops the run with a sentence, everything answered so far kept;
  after a restart the same command resumes, and the cache equals an uninterrupted run's, without duplicates;
- two servers share one run's work (both answer, no duplicates, records of one run); a server that hangs is
  dropped after its timeouts while the other finishes, and the summary counts it;
- a short `onpolicy` whose teacher is a server: its scores equal the in-process vLLM teacher's.

Slow (each server takes 20-60 s to start on 2 cores): `make test` runs these, `make test-fast` skips them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from distill.cache import open_cache
from distill.cache.format import INDEX_NAME, read_index
from distill.errors import DistillError

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SMALL = ["--teacher", "arith-teacher", "--prompts", "arith:test", "--limit", "12", "--max-new-tokens", "48"]
SMALL += ["--top-k", "20", "--precision", "fp32", "--temperature", "0"]
# long enough to stop a server in the middle: 48 samples at the preset's temperature (one seed per sample)
SAMPLES = 48
LONG = ["--teacher", "arith-teacher", "--prompts", "arith:test", "--limit", "24", "--samples-per-prompt", "2"]
LONG += ["--max-new-tokens", "64", "--top-k", "20", "--precision", "fp32", "--flush-every-s", "0.1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """One `distill serve --teacher arith-teacher` on a free loopback port, in a process group of its own."""

    def __init__(self, log: Path) -> None:
        self.port, self.log, self.proc = free_port(), log, None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Served:
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "distill", "serve", "--teacher", "arith-teacher", "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"distill serve exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        pytest.fail(f"distill serve not ready after {timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def send(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)  # the server and its engine process

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.send(signal.SIGCONT)
            self.send(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.send(signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):
    """Two servers of the bundled teacher, started together (one is killed and restarted by a test)."""
    logs = tmp_path_factory.mktemp("servers")
    both = [Served(logs / "a.log").start(), Served(logs / "b.log").start()]
    try:
        for s in both:
            s.wait_ready()
        yield both
    finally:
        for s in both:
            s.stop()


def distill(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def records(path: Path) -> dict:
    cache = open_cache(str(path), allow_incomplete=True)
    out = {r.key: r for r in cache.records(list(range(len(cache))))}
    assert len(out) == len(cache), f"{path} holds duplicate records"
    return out


def assert_same_records(a: Path, b: Path, tol: float = 1e-4) -> None:
    """The same samples, token for token, and the same top-k (ids, and logprobs within `tol`)."""
    ra, rb = records(a), records(b)
    assert ra.keys() == rb.keys()
    for key, x in ra.items():
        y = rb[key]
        assert np.array_equal(x.prompt_ids, y.prompt_ids) and np.array_equal(x.completion_ids, y.completion_ids), key
        assert np.array_equal(x.topk_ids, y.topk_ids), key
        assert np.abs(x.topk_logprobs - y.topk_logprobs).max() <= tol, key
        assert np.abs(x.sampled_logprobs - y.sampled_logprobs).max() <= tol, key


def written(path: Path) -> int:
    """Records in finished shards of a cache being written (0 before its first shard)."""
    try:
        return sum(s.records for s in read_index(path).shards) if (path / INDEX_NAME).is_file() else 0
    except (OSError, ValueError, DistillError):  # replaced while read
        return 0


def wait_for_records(path: Path, proc: subprocess.Popen, timeout_s: float = 180) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if n := written(path):
            return n
        time.sleep(0.05)
    pytest.fail(f"no records in {path} (exit {proc.poll()}): {proc.stderr.read() if proc.poll() is not None else ''}")


@pytest.fixture(scope="module")
def uninterrupted(servers, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The LONG run, uninterrupted, through one server (test 1 shows a server's cache is the in-process one)."""
    out = tmp_path_factory.mktemp("uninterrupted") / "cache"
    distill("generate", *LONG, "--teacher-url", servers[0].url, "--out", str(out))
    return out


# ---------------------------------------------------------------------------------------------
# the same cache, wherever the teacher runs


def test_a_cache_made_through_a_server_is_the_in_process_cache(servers, tmp_path: Path) -> None:
    in_process = Path(distill("generate", *SMALL).stdout.splitlines()[-1])
    hit = distill("generate", *SMALL, "--teacher-url", servers[0].url).stdout
    assert "cache hit" in hit and hit.splitlines()[-1] == str(in_process)  # same key: where it runs is no part of it

    served = tmp_path / "served"
    out = distill("generate", *SMALL, "--teacher-url", servers[0].url, "--out", str(served)).stdout
    assert f"teacher servers: {servers[0].url} answered 24; 0 dropped, 0 requests sent again" in out
    assert read_index(served).key == read_index(in_process).key
    assert read_index(served).provenance["engine"] == "vllm-server"
    assert_same_records(in_process, served)

    # teacher-forced through the server (prompt logprobs of the exact ids): the generation's own logprobs again
    scored = tmp_path / "scored"
    distill("score", "--teacher", "arith-teacher", "--traces", str(in_process), "--top-k", "20", "--precision",
            "fp32", "--teacher-url", servers[0].url, "--out", str(scored))  # fmt: skip
    assert_same_records(in_process, scored)


def test_a_server_that_is_not_this_teacher_is_refused_before_anything_is_written(
    servers, tiny_model: Path, tmp_path: Path
) -> None:
    """Another model (the command line: exit 1, one sentence), a smaller logprob limit, another context."""
    from distill.generate import GenerateConfig, run_generate
    from distill.presets import resolve_preset

    out, url = tmp_path / "cache", servers[0].url
    proc = distill("generate", "--teacher", str(tiny_model), "--prompts", "arith:test", "--limit", "2",
                   "--teacher-url", url, "--out", str(out), check=False)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    teacher = resolve_preset("arith-teacher", "teacher").hub_id
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: Teacher server {url} serves {teacher} ({teacher}), not the teacher {tiny_model.name} "
        f"({tiny_model.resolve()}); point --teacher-url at a server of it (`distill serve --teacher "
        f"{tiny_model.name}` serves it as {tiny_model.resolve()})."
    )
    for options, sentence in [
        ({"top_k": 50}, f"Teacher server {url} refuses 50 logprobs per position (--top-k 50): HTTP 400"),
        ({"max_model_len": 256}, f"Teacher server {url} serves a context of 512 tokens, this run expects 256"),
    ]:
        cfg = GenerateConfig(teacher="arith-teacher", prompts="arith:test", limit=2, teacher_url=[url], out=out)
        with pytest.raises(DistillError, match=re.escape(sentence)):
            run_generate(dataclasses.replace(cfg, **options))
    assert not out.exists()


def test_a_server_whose_tokenizer_differs_is_refused(servers, tiny_model: Path) -> None:
    from distill.engines.server_engine import ServerEngine
    from distill.models.tokenizer import load_tokenizer
    from distill.presets import resolve_preset

    with pytest.raises(DistillError, match=f"Teacher server {servers[0].url} tokenizes a probe text differently"):
        ServerEngine([servers[0].url], resolve_preset("arith-teacher", "teacher"), load_tokenizer(str(tiny_model)),
                     top_k=20)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# faults


def test_a_server_killed_mid_generate_then_restarted_resumes_to_the_uninterrupted_cache(
    servers, uninterrupted: Path, tmp_path: Path
) -> None:
    server, out = servers[1], tmp_path / "cache"
    command = [sys.executable, "-m", "distill", "generate", *LONG, "--teacher-url", server.url, "--out", str(out),
               "--teacher-inflight", "2", "--teacher-retries", "1"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_records(out, proc)
    server.stop(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in stderr
    assert f"error: No teacher server remains: {server.url} (" in stderr
    kept = len(records(out))
    assert 0 < kept < SAMPLES  # what was answered is kept

    server.start().wait_ready()
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming: {kept} samples already cached, {SAMPLES - kept} to go" in rerun.stderr
    assert read_index(out).complete
    assert_same_records(uninterrupted, out)  # nothing lost, nothing twice


def test_two_servers_share_the_work_without_duplicates(servers, uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    urls = [a for s in servers for a in ("--teacher-url", s.url)]
    summary = distill("generate", *LONG, *urls, "--teacher-inflight", "4", "--out", str(out)).stdout
    line = next(x for x in summary.splitlines() if x.startswith("teacher servers:"))
    answers = [int(re.search(rf"{s.url} answered (\d+)", line).group(1)) for s in servers]
    assert all(a > 0 for a in answers) and sum(answers) == SAMPLES, line
    assert_same_records(uninterrupted, out)


def test_a_hung_server_is_dropped_while_the_other_finishes(servers, uninterrupted: Path, tmp_path: Path) -> None:
    hung, out = servers[1], tmp_path / "cache"
    command = [sys.executable, "-m", "distill", "generate", *LONG, "--out", str(out), "--teacher-inflight", "1",
               "--teacher-timeout-s", "15", "--teacher-retries", "0"]  # fmt: skip
    # 15 s, not less: on 2 loaded cores a healthy server's first answers can take seconds, and dropping it too
    # would test nothing
    command += [a for s in servers for a in ("--teacher-url", s.url)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_records(out, proc)
        hung.send(signal.SIGSTOP)  # it accepts connections and never answers
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        hung.send(signal.SIGCONT)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"teacher server {hung.url} dropped after 1 fault in a row (last: no answer within 15 s); 1 remain" in stderr
    assert "(dropped: no answer within 15 s); 1 dropped" in stdout
    assert_same_records(uninterrupted, out)


# ---------------------------------------------------------------------------------------------
# on-policy


def test_onpolicy_with_a_served_teacher_scores_as_the_in_process_vllm_teacher(servers, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = distill("onpolicy", "--student", "arith-student", "--teacher", "arith-teacher", "--prompts", "arith:train",
                   "--group-size", "2", "--batch-size", "8", "--micro-batch", "4", "--max-new-tokens", "48", "--lr",
                   "0", "--steps", "2", "--seed", "3", "--backend", "hf", "--self-check", "2", "--teacher-url",
                   servers[0].url, "--out", str(out))  # fmt: skip
    assert "engines hf (student) / vllm server (teacher)" in proc.stderr
    # the self-check ran through the server: its greedy text scored as it was generated
    assert json.loads((out / "run.json").read_text())["summary"]["teacher_self_check"]["max_gap"] < 1e-4
    # the same ids scored by the in-process vLLM engine (`distill score`'s prompt-logprobs path)
    scored = tmp_path / "scored"
    distill("score", "--teacher", "arith-teacher", "--traces", str(out / "cache"), "--top-k", "20", "--precision",
            "fp32", "--out", str(scored))  # fmt: skip
    assert len(records(out / "cache")) == 16
    assert_same_records(out / "cache", scored)
