"""`distill serve`: vLLM's OpenAI-compatible server for a teacher, set up the way `--teacher-url` needs it.

    distill serve --teacher arith-teacher --port 8000          # then, elsewhere:
    distill generate --teacher arith-teacher --teacher-url http://127.0.0.1:8000 --prompts arith:test

No server of distill's own: this resolves the teacher (preset, directory or hub id), prints the URL (stdout's
first line) and becomes `python -m vllm.entrypoints.openai.api_server` (the module `vllm serve` runs; the CPU
build's `vllm serve` entry point fails on its own package name) with:

- raw logprobs (`--logprobs-mode raw_logprobs`: before temperature and top-p, what the cache records) and a
  logprob limit of the preset's top-k (or --top-k) plus the padding margin the client may ask for;
- the preset's dtype, context length, tensor and data parallelism (each overridable), the model's files at the
  preset's revision, and the teacher served under the name clients check (`served_names`);
- `--generation-config vllm`: no sampling defaults from the model's generation_config (the client sends every
  sampling parameter anyway, so a plain vLLM server started with the flags docs/pipeline.md lists works alike);
- on a machine without a GPU: eager mode and whole prefills (the CPU build cannot resume a seeded request's
  generator across a split prefill), with a 1 GiB KV cache unless VLLM_CPU_KVCACHE_SPACE says otherwise.

The server is ready when `URL/health` answers; it stops on SIGTERM or Ctrl-C like any vLLM server.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shlex
import socket
import sys

import typer

from distill.configs import ServeConfig
from distill.engines.server_engine import served_names
from distill.engines.vllm_engine import CPU_ENV, padding_margin
from distill.errors import DistillError
from distill.presets import TeacherPreset, resolve_preset


def server_command(cfg: ServeConfig, preset: TeacherPreset, cpu: bool) -> list[str]:
    """The vLLM server's command line for `preset` under `cfg`."""
    engine = preset.engine
    top_k = cfg.top_k or preset.top_k
    names = served_names(preset)
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(preset.hub_id)]
    argv += ["--served-model-name", *names, "--host", cfg.host, "--port", str(cfg.port)]
    argv += ["--dtype", cfg.dtype or engine.dtype, "--seed", str(cfg.seed), "--generation-config", "vllm"]
    # room for the padding margin the client adds on a padded vocabulary (the limit only validates requests)
    argv += ["--max-logprobs", str(top_k + padding_margin(top_k, math.inf)), "--logprobs-mode", "raw_logprobs"]
    if preset.revision:
        argv += ["--revision", preset.revision]
    if max_model_len := cfg.max_model_len or engine.max_model_len:
        argv += ["--max-model-len", str(max_model_len)]
    if (tp := cfg.tensor_parallel_size or engine.tensor_parallel_size) > 1:
        argv += ["--tensor-parallel-size", str(tp)]
    if (dp := cfg.data_parallel_size or engine.data_parallel_size) > 1:
        argv += ["--data-parallel-size", str(dp)]
    if cpu:
        argv += ["--enforce-eager", "--no-enable-chunked-prefill"]
    else:
        argv += ["--gpu-memory-utilization", str(cfg.gpu_memory_utilization or engine.gpu_memory_utilization)]
    return argv + shlex.split(cfg.vllm_args)


def run_serve(cfg: ServeConfig) -> None:
    """Print the URL, then become vLLM's server for the teacher (never returns)."""
    preset = resolve_preset(cfg.teacher, "teacher")
    if importlib.util.find_spec("vllm") is None:
        raise DistillError(
            "vLLM is not installed: `pip install 'distill[vllm]'` on a GPU machine or `pip install 'distill[cpu]'` "
            "on a CPU one."
        )
    import torch

    cpu = not torch.cuda.is_available()
    env = dict(os.environ)
    if cpu:  # as in-process; VLLM_ENABLE_V1_MULTIPROCESSING=0 spares the server a worker process (faster start)
        for k, v in CPU_ENV.items():
            env.setdefault(k, v)
    argv = server_command(cfg, preset, cpu)
    host = socket.gethostname() if cfg.host in ("0.0.0.0", "::") else cfg.host
    url = f"http://{host}:{cfg.port}"
    typer.echo(f"serving {preset.name} as {names_line(preset)} at {url}, ready when {url}/health answers", err=True)
    typer.echo(" ".join(shlex.quote(a) for a in argv), err=True)
    typer.echo(url)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)


def names_line(preset: TeacherPreset) -> str:
    return " / ".join(served_names(preset))
