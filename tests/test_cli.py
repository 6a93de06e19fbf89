"""The command line: help lists every command without importing torch or vllm; cache commands work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distill.cache import CacheSpec, CacheWriter
from tests.cache.helpers import make_record

COMMANDS = [
    "generate",
    "score",
    "serve",
    "filter",
    "train",
    "grpo",
    "onpolicy",
    "eval",
    "runs",
    "compare",
    "cache",
    "demo",
]
CACHE_COMMANDS = ["ls", "info", "verify", "gc", "merge"]


def distill(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True, text=True, env=env)


def test_help_lists_every_command_with_one_line() -> None:
    out = distill("--help")
    assert out.returncode == 0
    listed = [line.split()[0] for line in out.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert sorted(listed) == sorted(COMMANDS)
    assert "..." not in out.stdout.split("Commands:")[1]  # one line each, not cut off


def test_cache_help_lists_its_commands_with_one_line_each() -> None:
    out = distill("cache", "--help").stdout.split("Commands:")[1]
    assert sorted(line.split()[0] for line in out.splitlines() if line.strip()) == sorted(CACHE_COMMANDS)
    assert "..." not in out


def test_help_imports_neither_torch_nor_vllm() -> None:
    code = (
        "import sys\n"
        "sys.argv = ['distill', '--help']\n"
        "try:\n    import distill.cli; distill.cli.main()\nexcept SystemExit: pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'vllm', 'transformers', 'numpy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_cache_commands_end_to_end(tmp_path: Path, distill_home: Path) -> None:
    path = distill_home / "caches" / "abcdef0123"
    rng = np.random.default_rng(0)
    with CacheWriter(path, CacheSpec(top_k=4, vocab_size=1000), key="abcdef0123", provenance={"teacher": "tiny"}) as w:
        for i in range(4):
            w.append(make_record(rng, i, k=4))
        w.finish()
    env = {**os.environ, "DISTILL_HOME": str(distill_home)}
    ls = distill("cache", "ls", env=env)
    assert ls.returncode == 0 and "abcdef0123" in ls.stdout and "complete" in ls.stdout
    info = json.loads(distill("cache", "info", "abcdef", "--json", env=env).stdout)  # key prefix works
    required = {
        "format_version",
        "records",
        "tokens",
        "top_k",
        "vocab_size",
        "bytes_on_disk",
        "bytes_per_token",
        "teacher",
        "tokenizer_fingerprint",
        "views",
    }
    assert required <= set(info) and info["records"] == 4
    assert distill("cache", "verify", str(path), env=env).stdout.startswith("OK")
    gc = distill("cache", "gc", "--dry-run", env=env)
    assert gc.returncode == 0


def test_bad_cache_path_is_one_sentence_and_exit_1(tmp_path: Path) -> None:
    out = distill("cache", "info", str(tmp_path / "nope"))
    assert out.returncode == 1
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr and "not a teacher cache" in out.stderr


RANK_SCRIPT = """
import sys
import torch
import torch.distributed as dist
from distill.cli import app, main

held = []


@app.command("gather")
def gather() -> None:
    dist.init_process_group("gloo")
    held.append(dist.group.WORLD)  # as DTensor's caches hold FSDP2's mesh: the group outlives destroy
    for _ in range(20):
        out = [torch.empty(100_000) for _ in range(2)]
        dist.all_gather(out, torch.ones(100_000))
        del out  # the gloo worker thread frees these buffers whenever it gets round to it
    dist.destroy_process_group()
    print("gathered")


sys.argv = ["distill", *sys.argv[1:]]
main()
"""


@pytest.mark.torchrun
def test_a_torchrun_rank_leaves_without_tearing_down_live_gloo_workers(tmp_path: Path) -> None:
    """Without `main` skipping interpreter teardown on ranks, most of these runs died with SIGABRT."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)

    def torchrun(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run([*cmd, str(script), *args], capture_output=True, text=True, env=env)

    for _ in range(6):  # each run alone died about half the time
        out = torchrun("gather")
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.count("gathered") == 2  # each rank's output is flushed before it leaves
    bad = torchrun("cache", "info", str(tmp_path / "missing"))
    assert bad.returncode == 1 and "terminate called" not in bad.stderr
    # the first rank out keeps its exit code and its sentence; torchrun may stop the other one first
    assert "failed (exitcode: 1)" in bad.stderr and "exitcode: -6" not in bad.stderr
    assert "error: " in bad.stderr and "not a teacher cache" in bad.stderr
