"""Teachers at --teacher-url without vLLM: faults, settings and the cache-key rule (the real servers: test_serve.py).

- a server that refuses connections is retried after 1, 2, ... s, then dropped, and the run stops with a sentence
  naming it; a plain HTTP server that is not vLLM is a sentence too (exit 1, nothing written);
- bad --teacher-url settings are one sentence before anything runs;
- where the teacher runs is not in the cache key: a served run and an in-process vLLM run are one cache, and an
  on-policy run's scores cache is keyed as with the in-process vLLM teacher;
- `distill serve` gives vLLM the settings the clients need, from the preset.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill.configs import GenerateConfig, OnPolicyConfig, ServeConfig
from distill.engines.servers import ServerPool
from distill.errors import DistillError
from distill.generate import plan
from distill.presets import resolve_preset
from distill.serve import server_command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distill(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISTILL_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True, text=True, env=env)


def test_a_refused_server_is_retried_with_backoff_then_dropped_with_a_sentence() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    logged: list[str] = []
    pool = ServerPool([url], retries=2, log=logged.append)
    start = time.monotonic()
    with pytest.raises(DistillError, match=rf"No teacher server remains: {url} \(cannot connect"):
        list(pool.stream("/v1/completions", [(("p", 0), {"prompt": [1, 2]})]))
    assert 3.0 <= time.monotonic() - start < 10  # backed off 1 s, then 2 s
    assert [line.split(";")[-1].strip() for line in logged[:2]] == ["retry 1 of 2 in 1 s", "retry 2 of 2 in 2 s"]
    assert f"teacher server {url} dropped after 3 faults in a row" in logged[2]
    assert pool.resent == 2  # after the first and the second fault


def test_requests_that_fail_together_count_as_one_fault() -> None:
    """Four requests in flight to a dead server fail at once: one fault (then a backoff), not four."""
    url = f"http://127.0.0.1:{free_port()}"
    logged: list[str] = []
    pool = ServerPool([url], max_inflight=4, retries=1, log=logged.append)
    jobs = [((str(i), 0), {"prompt": [1]}) for i in range(4)]
    start = time.monotonic()
    with pytest.raises(DistillError, match="No teacher server remains"):
        list(pool.stream("/v1/completions", jobs))
    assert time.monotonic() - start >= 1.0  # it waited out one backoff before the second fault dropped it
    assert sum("retry 1 of 1 in 1 s" in line for line in logged) == 1 and "dropped after 2 faults" in logged[-1]
    assert pool.resent == 4  # sent again after the first fault; not after the second (the run stops there)


def test_generate_against_no_server_or_a_server_that_is_not_vllm_exits_1_with_a_sentence(tmp_path: Path) -> None:
    """A closed port, and a plain HTTP file server that lists the teacher at /v1/models but answers no POST."""
    port = free_port()
    site = tmp_path / "site"
    (site / "v1").mkdir(parents=True)
    teacher = resolve_preset("arith-teacher", "teacher").hub_id
    (site / "v1" / "models").write_text(json.dumps({"data": [{"id": teacher, "root": teacher, "max_model_len": 512}]}))
    files = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):  # until it listens
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        closed = f"http://127.0.0.1:{free_port()}"
        out = tmp_path / "cache"
        common = ["generate", "--teacher", "arith-teacher", "--prompts", "arith:test", "--limit", "2"]
        proc = distill(*common, "--teacher-url", closed, "--teacher-retries", "0", "--out", str(out), home=tmp_path)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert f"error: No teacher server remains: {closed} (cannot connect" in proc.stderr
        plain = f"http://127.0.0.1:{port}"
        proc = distill(*common, "--teacher-url", plain, "--teacher-retries", "0", "--out", str(out), home=tmp_path)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert f"error: No teacher server remains: {plain} (HTTP 501" in proc.stderr  # it serves no POST
        assert not out.exists()
    finally:
        files.terminate()
        files.wait()


@pytest.mark.parametrize(
    ("options", "sentence"),
    [
        ({"teacher_url": ["127.0.0.1:8000"]}, "--teacher-url must be an http:// or https:// URL"),
        ({"teacher_url": ["http://a:1", "http://a:1"]}, "names the same server twice"),
        ({"teacher_url": ["http://a:1"], "backend": "hf"}, "leave --backend at vllm, not hf"),
        ({"teacher_inflight": 0}, "--teacher-inflight must be ≥ 1"),
        ({"teacher_timeout_s": 0.0}, "--teacher-timeout-s must be > 0"),
    ],
)
def test_bad_server_settings_are_one_sentence(options: dict, sentence: str) -> None:
    with pytest.raises(DistillError, match=sentence):
        GenerateConfig(teacher="arith-teacher", prompts="arith:test", **options)


@pytest.mark.parametrize(
    ("options", "sentence"),
    [
        ({"loss": "full"}, "--loss full needs --teacher-backend hf \\(and no --teacher-url\\)"),
        ({"temperature": 0.6}, "--temperature other than 1 needs --teacher-backend hf \\(and no --teacher-url\\)"),
    ],
)
def test_onpolicy_refuses_what_a_served_teacher_cannot_give(options: dict, sentence: str) -> None:
    with pytest.raises(DistillError, match=sentence):
        OnPolicyConfig(
            student="arith-student",
            teacher="arith-teacher",
            prompts="arith:train",
            teacher_url=["http://a:1"],
            **options,
        )


def test_where_the_teacher_runs_is_not_in_the_cache_key() -> None:
    """The key's `backend` says which engine computes the numbers (vllm or hf), not where it runs."""
    args = dict(teacher="arith-teacher", prompts="arith:test", limit=4)
    in_process = plan(GenerateConfig(**args)).key
    served = GenerateConfig(**args, teacher_url=["http://a:1", "http://b:2"], teacher_inflight=3, teacher_retries=0)
    assert plan(served).key == in_process
    assert plan(GenerateConfig(**args, backend="hf")).key != in_process

    def settings(**options) -> dict:
        return OnPolicyConfig(
            student="arith-student", teacher="arith-teacher", prompts="arith:train", **options
        ).key_settings()

    assert settings(teacher_url=["http://a:1"], teacher_timeout_s=5.0) == settings(teacher_backend="vllm")
    assert settings(teacher_url=["http://a:1"]) != settings()  # hf, the default: other numerics


def test_a_padded_vocabulary_is_read_from_the_models_config(tmp_path: Path) -> None:
    """The client folds padding rows as the in-process engine does: it needs the model's rows, from its config."""
    from distill.engines.server_engine import model_rows

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": 151936}))
    assert model_rows(str(tmp_path)) == 151936  # Qwen2.5: 151,665 tokens
    assert model_rows("nobody/no-such-model") is None  # offline, no config: no padding assumed


def test_serve_gives_vllm_the_settings_the_clients_need() -> None:
    arith = resolve_preset("arith-teacher", "teacher")
    argv = server_command(ServeConfig(teacher="arith-teacher", port=8123, vllm_args="--max-num-seqs 64"), arith, True)
    line = " ".join(argv)
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    for flag in (
        f"--model {arith.hub_id} --served-model-name {arith.hub_id}",  # a directory: by its absolute path
        "--host 127.0.0.1 --port 8123",
        "--dtype float32",
        "--max-logprobs 40",  # top-k 20 + the largest padding margin the client may add
        "--logprobs-mode raw_logprobs",
        "--max-model-len 512",
        "--enforce-eager --no-enable-chunked-prefill",  # the CPU build: whole prefills keep seeds working
        "--max-num-seqs 64",
    ):
        assert flag in line
    qwq = resolve_preset("qwq-32b", "teacher")
    line = " ".join(server_command(ServeConfig(teacher="qwq-32b", data_parallel_size=4, top_k=64), qwq, False))
    assert "--served-model-name Qwen/QwQ-32B qwq-32b" in line
    assert "--tensor-parallel-size 2 --data-parallel-size 4" in line and "--max-logprobs 128" in line
    assert "--gpu-memory-utilization 0.9" in line and "--enforce-eager" not in line
