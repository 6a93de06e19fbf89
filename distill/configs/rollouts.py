"""Options of the stages that learn from the policy's own samples: `distill grpo` and `distill onpolicy`.

Both sample a batch of completions per step with a colocated engine, micro-batch it, and take μ clipped
optimiser steps on it; these options mean the same in both, so they are declared once, here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from distill.configs.base import at_least

LrSchedule = Literal["constant", "cosine"]


@dataclass(kw_only=True)
class RolloutOptions:
    """How a step's completions are sampled, micro-batched and optimised, and how long the run is."""

    micro_batch: int = 16
    """Completions per forward/backward pass (the rest of the batch accumulates)."""
    epsilon: float = 0.2
    """Clip range below 1 of the ratio π_θ/π_θold (and above, unless --epsilon-high)."""
    epsilon_high: float | None = None
    """Clip range above 1 (DAPO's clip-higher, e.g. 0.28) [--epsilon]."""
    iterations: int = 1
    """μ: optimiser steps per batch of rollouts (1: the ratio is 1 and the clip never binds)."""
    max_new_tokens: int | None = None
    """Completion length limit [preset]; longer completions end with finish reason 'length'."""
    steps: int = 100
    """Rollout steps; each samples one batch and makes μ optimiser steps."""
    lr_schedule: LrSchedule = "constant"
    """The learning rate after any warm-up: constant, or cosine (down to 0 over --decay-steps)."""
    decay_steps: int | None = None
    """--lr-schedule cosine: steps over which the learning rate falls to 0, warm-up included [--steps]; give the
    final length when a run is extended with --resume, so that its schedule does not change midway."""
    save_every: int = 10
    """Checkpoint every N steps (and at the end)."""
    gpu_memory_utilization: float = 0.3
    """Share of the GPU the colocated vLLM engine takes; the trainer needs the rest."""

    def rollout_problems(self, batch_size: int | None, group_size: int) -> list[str]:
        """Every invalid rollout setting, as sentences; `batch_size` (None: not known yet) must be whole groups."""
        out = []
        if batch_size is not None and group_size >= 1 and (batch_size < group_size or batch_size % group_size):
            lo = max(group_size, batch_size // group_size * group_size)
            out.append(
                f"--batch-size {batch_size} is not a multiple of --group-size {group_size}: a batch is whole groups "
                f"(prompts per step × G); use e.g. {lo} or {lo + group_size}"
            )
        out += at_least(self.micro_batch, 1, "--micro-batch")
        if not 0 < self.epsilon < 1 or (self.epsilon_high is not None and self.epsilon_high <= 0):
            out.append("--epsilon must be in (0, 1) and --epsilon-high > 0")
        out += at_least(self.iterations, 1, "--iterations") + at_least(self.steps, 1, "--steps")
        out += at_least(self.decay_steps, 1, "--decay-steps")
        if self.decay_steps is not None and self.lr_schedule != "cosine":
            out.append("--decay-steps applies to --lr-schedule cosine")
        out += at_least(self.max_new_tokens, 1, "--max-new-tokens") + at_least(
            getattr(self, "max_model_len", None), 1, "--max-model-len"
        )
        if not 0 < self.gpu_memory_utilization < 1:
            out.append(f"--gpu-memory-utilization must be in (0, 1), got {self.gpu_memory_utilization}")
        return out
