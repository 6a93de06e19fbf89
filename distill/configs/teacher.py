"""Configs of the teacher-side commands: `distill generate`, `distill score` and `distill serve`.

generate and score write a teacher cache, so they share the cache options and the extra-sample options
(tokens drawn from the teacher's full distribution for `train --kd sampled`), and either runs the teacher in
this process or calls it at --teacher-url, where `distill serve` runs it. None means "the teacher preset's
default".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from distill.configs.base import (
    Config,
    DomainField,
    Dtype,
    PromptSource,
    TeacherRuntime,
    TeacherServers,
    at_least,
    view_problems,
)
from distill.outputs import Output


@dataclass(kw_only=True)
class CacheOutput:
    """Where and how a teacher cache is written."""

    out: Path | None = None
    """Cache directory [$DISTILL_HOME/caches/KEY]."""
    top_k: int | None = None
    """Teacher logprobs kept per position; 0 = none (generate only) [preset]."""
    precision: Literal["compact", "fp32"] = "compact"
    """Logprob storage: compact (quantised, ~2 bytes per logit) or fp32 (exact)."""
    extra_samples: int = 0
    """Tokens drawn per position from the teacher's full distribution, with their logprobs, for `train --kd
    sampled` (--backend hf: vLLM returns the top-k alone)."""
    extra_temperature: float = 1.0
    """Temperature the extra tokens are drawn at (= the training --temperature)."""
    shard_size_mb: float = 64.0
    """Cache shard size in MiB."""
    flush_every_s: float = 300.0
    """Also flush a shard this often, in seconds (bounds what a kill loses)."""

    def cache_outputs(self) -> list[Output]:
        """The cache directory: --out, or the cache root under $DISTILL_HOME that holds it by key."""
        from distill.paths import cache_root

        if self.out is not None:
            return [Output(self.out)]
        return [Output(cache_root(), "the cache root", fix="set DISTILL_HOME to another directory or give --out")]

    def cache_problems(self, backend: str) -> list[str]:
        out = at_least(self.top_k, 0, "--top-k") + at_least(self.extra_samples, 0, "--extra-samples")
        if not self.extra_temperature > 0:
            out.append(f"--extra-temperature must be > 0, got {self.extra_temperature}")
        if self.extra_samples > 0 and backend != "hf":
            out.append(
                "--extra-samples draws from the teacher's full distribution, which vLLM does not expose (it returns "
                "the top-k only); use --backend hf"
            )
        if not self.shard_size_mb > 0 or not self.flush_every_s > 0:
            out.append("--shard-size-mb and --flush-every-s must be > 0")
        return out


@dataclass(kw_only=True)
class GenerateConfig(Config, PromptSource, DomainField, TeacherRuntime, TeacherServers, CacheOutput):
    """Teacher traces + top-k logprobs into a cache (vLLM)."""

    COMMAND = "generate"

    teacher: str
    """Teacher preset name, preset YAML, model directory, run directory or hub id."""
    samples_per_prompt: int | None = None
    """Completions per prompt [preset]."""
    max_new_tokens: int | None = None
    """Completion length limit [preset]."""
    temperature: float | None = None
    """Sampling temperature [preset]."""
    top_p: float | None = None
    """Nucleus sampling threshold [preset]."""
    seed: int = 0
    """Base seed; every (prompt, sample) derives its own from it."""
    shard_index: int = 0
    """This worker's slice of the prompts (0-based)."""
    num_shards: int = 1
    """Number of workers slicing the prompts (then `distill cache merge`)."""
    long_prompts: Literal["skip", "fail"] = "skip"
    """Prompts longer than the context: skip them (counted) or fail."""

    def problems(self) -> list[str]:
        out = self.prompt_problems() + self.runtime_problems() + self.cache_problems(self.backend)
        out += self.server_problems(self.backend)
        out += at_least(self.samples_per_prompt, 1, "--samples-per-prompt")
        out += at_least(self.max_new_tokens, 1, "--max-new-tokens") + at_least(self.temperature, 0, "--temperature")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            out.append(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            out.append(
                f"--shard-index must be in [0, --num-shards) and --num-shards ≥ 1, got {self.shard_index} of "
                f"{self.num_shards}"
            )
        return out

    def outputs(self) -> list[Output]:
        return self.cache_outputs()


@dataclass(kw_only=True)
class ScoreConfig(Config, DomainField, TeacherRuntime, TeacherServers, CacheOutput):
    """Teacher-forced logprobs over existing traces."""

    COMMAND = "score"

    teacher: str
    """Teacher preset name, preset YAML, model directory, run directory or hub id."""
    traces: str
    """A cache (path or key), or a file: prompt + completion columns, or chat rows."""
    view: str | None = None
    """Score only the records of this view of the cache."""
    prompt_field: str | None = None
    """Trace file: column holding the problem [auto]."""
    completion_field: str | None = None
    """Trace file: column holding the completion [auto]."""
    limit: int | None = None
    """Score only the first N traces."""

    def problems(self) -> list[str]:
        out = self.runtime_problems() + self.cache_problems(self.backend) + at_least(self.limit, 1, "--limit")
        out += view_problems(self.view)
        out += self.server_problems(self.backend)
        return out + at_least(self.top_k, 1, "--top-k")

    def outputs(self) -> list[Output]:
        return self.cache_outputs()


@dataclass(kw_only=True)
class ServeConfig(Config):
    """A teacher behind vLLM's OpenAI server, for --teacher-url."""

    COMMAND = "serve"

    teacher: str
    """Teacher preset name, preset YAML, model directory, run directory or hub id."""
    port: int = 8000
    """Port to listen on."""
    host: str = "127.0.0.1"
    """Address to listen on: 127.0.0.1 (this machine only) or 0.0.0.0 (other machines too; the server has no
    authentication of its own, so only on a trusted network)."""
    top_k: int | None = None
    """Largest --top-k clients will ask for: the server allows that many logprobs per position, plus a margin
    for padding rows [preset]."""
    dtype: Dtype | None = None
    """Model dtype: auto, bfloat16, float16 or float32 (the clients' cache key takes the preset's or their --dtype:
    keep them one) [preset]."""
    max_model_len: int | None = None
    """Context length (prompt + completion) [preset, else the model's own]."""
    tensor_parallel_size: int | None = None
    """GPUs one engine replica spans (vLLM tensor parallelism) [preset]."""
    data_parallel_size: int | None = None
    """Engine replicas behind this one URL (vLLM data parallelism; GPUs used: this × --tensor-parallel-size)
    [preset]."""
    gpu_memory_utilization: float | None = None
    """Share of each GPU vLLM takes [preset]."""
    seed: int = 0
    """The server's seed (every request carries its own, so results do not depend on it)."""
    vllm_args: str = ""
    """More arguments for vLLM's server, as one string (e.g. "--max-num-seqs 512")."""

    def problems(self) -> list[str]:
        out = at_least(self.top_k, 1, "--top-k") + at_least(self.max_model_len, 1, "--max-model-len")
        out += at_least(self.tensor_parallel_size, 1, "--tensor-parallel-size")
        out += at_least(self.data_parallel_size, 1, "--data-parallel-size")
        if not 0 < self.port < 65536:
            out.append(f"--port must be in 1..65535, got {self.port}")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            out.append(f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        return out
