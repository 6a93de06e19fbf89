"""Config of `distill onpolicy`: the student samples, the teacher grades every token it wrote."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from distill.configs.base import Backend, Config, ModelRuntime, PromptSource, TeacherServers, at_least
from distill.configs.rollouts import LrSchedule, RolloutOptions
from distill.configs.student import RunOptions, VerifierRewards
from distill.presets import OnPolicyDefaults

OnPolicyLoss = Literal["reverse", "topk", "full"]
OnPolicyKd = Literal["forward", "reverse", "jsd"]
Aggregation = Literal["token", "sequence"]


@dataclass(kw_only=True)
class OnPolicyConfig(Config, PromptSource, ModelRuntime, TeacherServers, RunOptions, RolloutOptions, VerifierRewards):
    """Distil on the student's own samples, graded per token."""

    COMMAND = "onpolicy"

    student: str
    """Model that samples and learns: a `distill train`/`grpo` OUT/model or run directory, a preset name, preset
    YAML or hub id (it must have weights)."""
    teacher: str
    """Teacher that scores the student's tokens: a preset name, preset YAML, model directory or hub id; its
    tokenizer must be the student's, unless --cross-tokenizer."""
    loss: OnPolicyLoss | None = None
    """topk: the `distill train` KD loss (--kd) over the teacher's top-k at every sampled position (GKD, λ = 1);
    reverse: per-token reverse KL log π_teacher − log π_student of each sampled token as a dense advantage under
    the clipped ratio (Qwen3 / Tinker); full: the --kd divergence over the whole vocabulary at every sampled
    position (exact GKD, λ = 1; needs --teacher-backend hf) [auto: topk, which beat reverse and full on the
    embedded default (docs/results/onpolicy-vs-grpo.md); reverse with --cross-tokenizer, --kl-discount or a
    --temperature other than 1, which only it takes]."""
    kd: OnPolicyKd = "reverse"
    """--loss topk / full: the divergence (forward, reverse, jsd); topk's is over the teacher's top-k plus its tail
    bucket, full's over the whole vocabulary."""
    beta: float = 0.5
    """--kd jsd: the mixture weight β (0 < β < 1)."""
    kl_discount: float = 0.0
    """--loss reverse: γ of the advantage Σ_{s≥t} γ^{s−t} (log π_teacher − log π_student)(x_s); 0 credits each token
    with its own log-ratio, 1 with the rest of its completion's (the gradient of the sequence-level reverse KL)."""
    top_k: int | None = None
    """Teacher logprobs kept per position, for --loss topk and the scores cache OUT/cache [teacher preset]."""
    cross_tokenizer: bool = False
    """A student whose tokenizer differs from the teacher's (--loss reverse): the teacher scores the student's
    text re-tokenised into its own vocabulary; a span of student tokens that covers several teacher tokens (or
    the reverse, by byte offsets) shares the teacher's log-probability of the span's text."""
    teacher_backend: Backend = "hf"
    """Teacher scoring: hf (a transformers forward in the trainer's numerics: exact, the default) or vllm (prompt
    logprobs from a second vLLM engine in this process); with --teacher-url, the vLLM server(s) there."""
    teacher_gpu_memory_utilization: float = 0.3
    """--teacher-backend vllm: share of the GPU the teacher's engine takes."""
    group_size: int = 4
    """Completions sampled per prompt (≥ 2 when --reward-weight > 0: rewards are normalised within a prompt)."""
    batch_size: int | None = None
    """Completions per step; a multiple of --group-size [student preset]."""
    reward_weight: float = 0.0
    """w: each completion's group-normalised verifier reward (--rewards) times w is added to every token's
    advantage (0: pure distillation; > 0 mixes in GRPO)."""
    aggregation: Aggregation = "token"
    """--loss reverse: token (every token weighs the same) or sequence (every completion weighs the same)."""
    drop_truncated: bool = False
    """Leave completions that hit --max-new-tokens out of the update (by default their tokens are trained on:
    each token's teacher verdict is valid whether or not the completion finished)."""
    temperature: float = 1.0
    """τ: rollout sampling temperature; the student's and the teacher's logprobs are both taken at τ, so --loss
    reverse matches the tempered distributions, KL(π_student^τ ‖ π_teacher^τ)."""
    self_check: int = 4
    """Before step 1: greedy completions the teacher writes and then scores, so a broken scoring path shows at
    once (0: skip)."""
    lr: float | None = None
    """AdamW learning rate; 0 measures the reverse KL without changing the student [student preset]."""
    warmup_steps: int | None = None
    """Steps over which the learning rate rises linearly to --lr (then follows --lr-schedule) [student preset]."""
    out: Path = Path("runs/onpolicy")
    """Run directory (checkpoints, metrics.jsonl, cache/ of the teacher's scores, model/)."""
    # two shared rollout options with on-policy defaults of their own (what won on the embedded default)
    iterations: int | None = None
    """μ: optimiser steps per batch of rollouts, under the clip (1: the ratio is 1 and the clip never binds)
    [student preset]."""
    lr_schedule: LrSchedule = "cosine"
    """The learning rate after any warm-up: cosine (down to 0 over --decay-steps: on-policy distillation's gains
    on the embedded default came with the decay; at a constant rate the student's KL stopped falling), or
    constant."""

    def __post_init__(self) -> None:
        if self.loss is None:  # auto: topk, unless a setting is given that only reverse takes
            need_reverse = self.cross_tokenizer or self.kl_discount or self.temperature != 1
            self.loss = "reverse" if need_reverse else "topk"
        super().__post_init__()

    def with_defaults(self, defaults: OnPolicyDefaults) -> OnPolicyConfig:
        """This config with the options left unset taken from the student preset's `onpolicy` defaults (validated
        again, so a preset's batch size that is no multiple of --group-size is a sentence too)."""
        unset = {name: getattr(defaults, name) for name in ("lr", "batch_size", "warmup_steps", "iterations")}
        return replace(self, **{name: value for name, value in unset.items() if getattr(self, name) is None})

    def key_settings(self) -> dict[str, Any]:
        """The settings the teacher's scores of the rollouts (OUT/cache) are keyed on: not the run's length, output
        or trackers, nor where the teacher runs (served at --teacher-url it is the vLLM teacher it is in-process)."""
        served = {f.name for f in fields(TeacherServers)}
        out = {k: v for k, v in asdict(self).items() if k not in ("resume", "out", "report_to", "steps", "save_every")}
        out = {k: v for k, v in out.items() if k not in served}
        return out | ({"teacher_backend": "vllm"} if self.teacher_url else {})

    def problems(self) -> list[str]:
        """Every invalid setting, as sentences; also parses --rewards / --reward-weights."""
        out = self.prompt_problems() + self.run_problems(self.save_every)
        bad_group = self.group_size < 1 or (self.reward_weight and self.group_size < 2)
        if bad_group:
            out.append(
                f"--group-size must be ≥ 1 (≥ 2 with --reward-weight: rewards are compared within a prompt), "
                f"got {self.group_size}"
            )
        out += self.rollout_problems(None if bad_group else self.batch_size, self.group_size)
        out += at_least(self.reward_weight, 0, "--reward-weight")
        if not 0 < self.beta < 1:
            out.append(f"--beta must be in (0, 1), got {self.beta}")
        if self.cross_tokenizer and self.loss != "reverse":
            out.append(
                f"--cross-tokenizer takes --loss reverse, not {self.loss}: the teacher's distribution is over its own "
                "vocabulary, at its own positions; the reverse KL needs only its log-probability of the student's text"
            )
        if self.loss == "full" and (self.teacher_backend != "hf" or self.teacher_url):
            out.append(
                "--loss full needs --teacher-backend hf (and no --teacher-url): the whole vocabulary comes from the "
                "teacher's forward in this process"
            )
        if not 0 <= self.kl_discount <= 1:
            out.append(f"--kl-discount must be in [0, 1], got {self.kl_discount}")
        elif self.kl_discount and self.loss != "reverse":
            out.append(f"--kl-discount applies to --loss reverse (its advantages), not --loss {self.loss}")
        if self.temperature <= 0:
            out.append(f"--temperature must be > 0, got {self.temperature}")
        elif self.temperature != 1 and self.loss == "topk":
            out.append("--loss topk takes --temperature 1 only (the tempered tail of the teacher's top-k is unknown)")
        elif self.temperature != 1 and (self.teacher_backend == "vllm" or self.teacher_url):
            out.append(
                "--temperature other than 1 needs --teacher-backend hf (and no --teacher-url): vLLM's prompt "
                "logprobs are of the untempered distribution"
            )
        out += at_least(self.top_k, 1, "--top-k") + at_least(self.self_check, 0, "--self-check")
        out += at_least(self.lr, 0, "--lr") + at_least(self.warmup_steps, 0, "--warmup-steps")
        if not 0 < self.teacher_gpu_memory_utilization < 1:
            out.append(f"--teacher-gpu-memory-utilization must be in (0, 1), got {self.teacher_gpu_memory_utilization}")
        return out + self.server_problems() + self.reward_problems()
