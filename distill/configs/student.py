"""Configs of the commands that train a student: `distill train` and `distill grpo` (rollout options: configs.rollouts).

None means "the student preset's default" (train) or "the model's preset default" (grpo).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from distill.configs.base import VIEW_NAME, Config, ModelRuntime, PromptSource, at_least, view_problems
from distill.configs.rollouts import RolloutOptions

KdKind = Literal["forward", "reverse", "jsd", "sampled"]
Tail = Literal["bucket", "renorm"]
GrpoLoss = Literal["grpo", "dapo", "dr_grpo"]
ScaleRewards = Literal["group", "none"]


@dataclass(kw_only=True)
class RunOptions:
    """What every training run takes: its seed, whether it resumes, its gradient clip, where its metrics go."""

    seed: int = 0
    """Seed for initialisation, data order and sampling."""
    resume: bool = False
    """Continue the run in --out from its last checkpoint, with its own settings: an option left out comes back from
    its run.json, one given with another value is refused (except the run's length, --save-every, --report-to and
    --teacher-url options, which may change and are recorded)."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    report_to: str = "tensorboard"
    """Comma-separated experiment trackers for the metrics: tensorboard (OUT/tensorboard), wandb (offline unless
    WANDB_API_KEY or WANDB_MODE says otherwise), mlflow (MLFLOW_TRACKING_URI, else OUT/mlruns), or none."""

    def run_problems(self, save_every: int) -> list[str]:
        from distill.tracking import tracker_problems

        out = at_least(save_every, 1, "--save-every") + tracker_problems(self.report_to)
        if not self.grad_clip > 0:
            out.append(f"--grad-clip must be > 0, got {self.grad_clip}")
        return out


@dataclass(kw_only=True)
class TrainConfig(Config, RunOptions):
    """Train a student: CE + KL to the cached teacher.

    Loss: alpha·CE + (1 − alpha)·τ²·KD, per completion token. What is exact at which temperature:

    \b
    --kd forward|reverse|jsd --tail bucket   τ = 1 only (the tempered tail mass is unknown)
    --kd forward|reverse|jsd --tail renorm   any τ (the top-k tempers exactly)
    --kd sampled                             τ = the cache's --extra-temperature (unbiased KL)
    --alpha 1                                SFT: any cache, or --traces without one
    """

    COMMAND = "train"

    student: str
    """Student preset name (qwen-1.5b, ...), preset YAML, model directory, run directory or hub id."""
    cache: list[str] = field(default_factory=list)
    """Teacher cache (path or key) to distil from; repeat it to train on several caches at once (one teacher
    each), CACHE:VIEW reading that cache through its own view."""
    view: str | None = None
    """Train only on the records of this view (from distill filter); with several caches, of every cache that
    names no view of its own."""
    cache_weights: str | None = None
    """With several caches: comma-separated mixing weight per --cache, in order: each cache's share of every
    epoch's records [each cache's kept record count]."""
    traces: str | None = None
    """Plain trace file (prompt + completion, or chat rows) for SFT without a cache."""
    alpha: float = 0.5
    """Weight of cross-entropy; 1 − alpha weighs the KD term (1 = SFT)."""
    kd: KdKind = "forward"
    """KD divergence over the teacher's top-k: forward, reverse or jsd; or sampled (unbiased KL from tokens drawn
    from the teacher: a cache made by `distill score --extra-samples M`)."""
    tail: Tail = "bucket"
    """Teacher mass outside the top-k: bucket (one extra class, exact; τ = 1 only) or renorm (both sides
    renormalised over the top-k; exact at any τ)."""
    temperature: float = 1.0
    """Distillation temperature τ (both sides softened, KD weighted by τ²). τ ≠ 1 needs --tail renorm, or --kd
    sampled from samples drawn at τ."""
    beta: float = 0.5
    """Mixing weight of the generalised JSD."""
    lora: bool = False
    """Train LoRA adapters (merged on export) instead of all weights."""
    epochs: int | None = None
    """Passes over the records [preset]."""
    max_steps: int | None = None
    """Optimizer steps (instead of --epochs)."""
    lr: float | None = None
    """Peak learning rate [preset]."""
    warmup_ratio: float | None = None
    """Fraction of steps warming up [preset]."""
    weight_decay: float | None = None
    """AdamW weight decay [preset]."""
    max_length: int | None = None
    """Tokens per packed row [preset]."""
    batch_rows: int = 8
    """Packed rows per optimizer step, over all processes (a multiple of the torchrun world size)."""
    micro_rows: int = 1
    """Rows per forward pass per process (the rest accumulates)."""
    chunk_size: int | None = None
    """Tokens per chunk of the output-layer loss [auto: 64 MiB]."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward."""
    sharding: Literal["fsdp2", "ddp"] = "fsdp2"
    """Under torchrun: fsdp2 shards parameters, gradients and optimiser state over the processes; ddp replicates
    the model on each."""
    out: Path = Path("runs/student")
    """Run directory (checkpoints, metrics, model/)."""
    save_every: int = 50
    """Checkpoint every N steps."""
    init: Literal["pretrained", "random"] | None = None
    """pretrained weights, or random (the model's config only) [preset]."""
    cross_tokenizer: bool = False
    """Train a student whose tokenizer differs from the cache's teacher: each trace's text is re-tokenised by the
    student and aligned to the teacher's tokens by bytes; KD on the teacher's top-k mapped onto student ids where a
    token has a one-to-one counterpart, --xt-merged on spans merged across tokens; --kd forward|reverse|jsd."""
    xt_merged: Literal["span", "uld"] = "span"
    """With --cross-tokenizer, what teaches a merged span: span (the --kd divergence on {the span's text, the rest},
    from both sides' probabilities of that text) or uld (sorted-probability L1, as TRL's GOLD; blind to which
    token is right)."""
    xt_weight: float = 1.0
    """With --cross-tokenizer: weight of the merged-span term beside the KD term."""

    def __post_init__(self) -> None:
        if isinstance(self.cache, str | Path):  # the Python API's one cache
            self.cache = [str(self.cache)]
        super().__post_init__()

    def cache_views(self) -> list[tuple[str, str | None]]:
        """(cache, view) of every --cache: CACHE:VIEW, else --view. A whole argument that is a directory is a cache,
        whatever colons its path holds."""
        out = []
        for spec in self.cache:
            path, colon, view = spec.rpartition(":")
            if colon and path and VIEW_NAME.match(view) and not Path(spec).is_dir():
                out.append((path, view))
            else:
                out.append((spec, self.view))
        return out

    def mixing_weights(self) -> list[float] | None:
        """--cache-weights as numbers (None: by record count); `problems` has checked them."""
        return [float(w) for w in self.cache_weights.split(",")] if self.cache_weights else None

    def _weight_problems(self) -> list[str]:
        if self.cache_weights is None:
            return []
        if len(self.cache) < 2:
            return ["--cache-weights mixes several --cache options; with one cache or none there is nothing to weigh"]
        try:
            weights = self.mixing_weights() or []
        except ValueError:
            return [f"--cache-weights must be comma-separated numbers, got {self.cache_weights!r}"]
        if len(weights) != len(self.cache):
            return [
                f"--cache-weights gives {len(weights)} weight(s) for {len(self.cache)} --cache(s); give one per "
                "cache, in the order of the --cache options"
            ]
        if not all(math.isfinite(w) and w > 0 for w in weights):
            return [f"every --cache-weights weight must be a number > 0, got {self.cache_weights!r}"]
        return []

    @property
    def uses_teacher(self) -> bool:
        """Whether the loss reads the teacher's logprobs (α < 1); SFT (α = 1) learns from the trace tokens alone."""
        return self.alpha < 1

    def problems(self) -> list[str]:
        out = self.run_problems(self.save_every) + self._weight_problems()
        if self.cross_tokenizer and not self.cache:
            out.append("--cross-tokenizer re-tokenises the traces of a --cache; give one (plain --traces need no flag)")
        if self.cross_tokenizer and self.kd == "sampled" and self.uses_teacher:
            out.append(
                "--kd sampled draws teacher ids that need not exist in the student's vocabulary, so it is not unbiased "
                "across tokenizers; use --kd forward, reverse or jsd with --cross-tokenizer"
            )
        if not self.xt_weight >= 0:
            out.append(f"--xt-weight must be ≥ 0, got {self.xt_weight}")
        if not 0.0 <= self.alpha <= 1.0:
            out.append(f"--alpha must be in [0, 1], got {self.alpha}")
        if not self.temperature > 0:
            out.append(f"--temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.beta < 1.0 and self.kd == "jsd":
            out.append(f"--beta must be in (0, 1), got {self.beta}")
        if self.uses_teacher and self.kd != "sampled" and self.tail == "bucket" and self.temperature != 1:
            out.append(
                f"--tail bucket is exact only at --temperature 1 (the teacher's tempered tail mass is unknown), got "
                f"{self.temperature}; use --tail renorm, which tempers the top-k exactly, or --kd sampled"
            )
        if bool(self.cache) == (self.traces is not None):
            out.append("give exactly one of --cache (teacher cache) or --traces (plain trace file)")
        if self.traces is not None and self.uses_teacher:
            out.append("plain --traces carry no teacher logprobs: use --alpha 1 (SFT) or a --cache")
        if self.view is not None and not self.cache:
            out.append("--view selects records of a --cache; give the cache too")
        out += view_problems(self.view)
        if self.epochs is not None and self.max_steps is not None:
            out.append("give --epochs or --max-steps, not both")
        out += at_least(self.epochs, 1, "--epochs") + at_least(self.max_steps, 1, "--max-steps")
        out += at_least(self.max_length, 2, "--max-length") + at_least(self.chunk_size, 1, "--chunk-size")
        out += at_least(self.lr, 0, "--lr") + at_least(self.weight_decay, 0, "--weight-decay")
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            out.append(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.batch_rows < 1 or self.micro_rows < 1:
            out.append("--batch-rows and --micro-rows must be ≥ 1")
        elif self.batch_rows % world:
            lo = max(world, self.batch_rows // world * world)
            out.append(
                f"--batch-rows {self.batch_rows} is not a multiple of the {world} torchrun processes: every process "
                f"takes the same share of a step; use e.g. {lo} or {lo + world}"
            )
        return out


@dataclass(kw_only=True)
class VerifierRewards:
    """Which verifiers' verdicts make a completion's reward, and their weights (grpo, onpolicy)."""

    rewards: str = "math,format"
    """Comma-separated verifiers whose verdicts make the reward: math, code, format, lang, repetition."""
    reward_weights: str | None = None
    """Comma-separated weight per reward, e.g. 1,0.2 [all 1]."""
    weights: list[float] = field(default_factory=list, init=False)
    names: list[str] = field(default_factory=list, init=False)

    def reward_problems(self) -> list[str]:
        """Every invalid reward setting, as sentences; parses --rewards / --reward-weights into names, weights."""
        from distill.verify import VERIFIERS

        out = []
        self.names = [r.strip() for r in self.rewards.split(",") if r.strip()]
        unknown = [r for r in self.names if r not in VERIFIERS]
        if unknown or not self.names:
            out.append(
                f"unknown reward(s) {', '.join(unknown) or '(none given)'} in --rewards; known: {', '.join(VERIFIERS)}"
            )
        try:
            ws = [float(w) for w in self.reward_weights.split(",")] if self.reward_weights else [1.0] * len(self.names)
        except ValueError:
            ws = []
            out.append(f"--reward-weights must be comma-separated numbers, got {self.reward_weights!r}")
        if ws and len(ws) != len(self.names):
            out.append(f"--reward-weights gives {len(ws)} weights for {len(self.names)} rewards; give one per reward")
        self.weights = ws
        return out


@dataclass(kw_only=True)
class GRPOConfig(Config, PromptSource, ModelRuntime, RunOptions, RolloutOptions, VerifierRewards):
    """Polish a policy with GRPO on verifier rewards."""

    COMMAND = "grpo"

    policy: str
    """Model to polish: a `distill train` OUT/model or run directory, a preset name, preset YAML or hub id."""
    group_size: int = 8
    """G: completions per prompt; advantages compare the completions of one prompt (≥ 2)."""
    batch_size: int = 64
    """Completions per step; a multiple of G (prompts per step = batch size / G)."""
    beta: float = 0.04
    """Weight of the k3 KL to the frozen initial policy (0: no reference model is loaded)."""
    loss: GrpoLoss = "grpo"
    """Token aggregation: grpo (mean per sequence, then over sequences), dapo (mean over all tokens), dr_grpo
    (sum / (batch size × max new tokens))."""
    scale_rewards: ScaleRewards | None = None
    """group: divide advantages by the group's reward std; none: mean-only [group; none for dr_grpo]."""
    temperature: float = 1.0
    """Rollout sampling temperature (top-p is 1); the policy's logprobs are taken at it too."""
    lr: float = 1e-6
    """AdamW learning rate (constant)."""
    out: Path = Path("runs/grpo")
    """Run directory (checkpoints, metrics.jsonl, model/)."""

    def problems(self) -> list[str]:
        """Every invalid setting, as sentences; also parses --rewards / --reward-weights."""
        out = self.prompt_problems() + self.run_problems(self.save_every)
        if self.group_size < 2:
            out.append(
                f"--group-size must be at least 2, got {self.group_size}: GRPO scores each completion against "
                "the other completions of the same prompt"
            )
        out += self.rollout_problems(self.batch_size if self.group_size >= 2 else None, self.group_size)
        out += at_least(self.beta, 0, "--beta")
        if self.temperature <= 0:
            out.append(
                f"--temperature must be > 0 (GRPO needs different completions per prompt), got {self.temperature}"
            )
        out += self.reward_problems()
        return out

    @property
    def scale(self) -> str:
        return self.scale_rewards or ("none" if self.loss == "dr_grpo" else "group")
