"""Distillation losses for the student trainer: α·CE + (1 − α)·τ²·KD at every completion position.

The teacher is known only through its cached top-k raw logprobs ℓ_i over a set S (p_i = exp ℓ_i,
tail mass r = 1 − Σ_S p_i); the student through logits z over the full vocabulary V, with
log q = log_softmax(z / τ). Per position t:

- CE: −log q(y_t) on the trace token, always at τ = 1.
- KD, on the partition "S plus one tail bucket" (tail="bucket", the default; the tail r comes from
  the cache, exact in format 2) or on S with both sides renormalised (tail="renorm"):
  forward  KL(p‖q) = Σ_S p (log p − log q) + r (log r − log(1 − Σ_S q))   (the default)
  reverse  KL(q‖p)                                                      (mode seeking)
  jsd      β·KL(p‖m) + (1−β)·KL(q‖m), m = βp + (1−β)q
  sampled  (1/M) Σ_j (log p_τ(x_j) − log q_τ(x_j)), x_j drawn from the tempered teacher p_τ: an
           unbiased estimate of the full-vocabulary KL(p_τ‖q_τ) (Anshumann et al., 2025)
- τ ≠ 1 softens both sides, exactly or not at all: renorm tempers the teacher's top-k exactly,
  sampled needs tokens drawn at τ, and bucket is refused (the tempered tail mass is unknown).
- total = α·CE + (1 − α)·τ²·KD, each averaged over the unmasked positions.

Modules: `kd` (per-position partitions and divergences), `chunked` (the loss over the output layer
in chunks of positions, never materialising (N, V) logits, and its naive reference), `memory`
(peak-memory measurement used by the tests and scripts/bench_train.py), `grpo` (the GRPO stage's
clipped objective, k3 KL and group advantages), `onpolicy` (on-policy distillation's per-token reverse-KL
advantages over grpo's clipped objective, and its statistics), `cross_tokenizer` (a student of another tokenizer:
the KD over the teacher's top-k mapped onto its ids and the merged-span terms, on the tensors of an
`AlignedTeacher` that distill.alignment and distill.retokenize make).

    out = distill_loss(hidden, lm_head.weight, targets, topk_ids, topk_logprobs, alpha=0.5)
    out.loss.backward()
"""

from distill.losses.chunked import (
    CHUNK_ELEMENTS,
    IGNORE_INDEX,
    LossOutput,
    auto_chunk_size,
    distill_loss,
    naive_distill_loss,
)
from distill.losses.grpo import LOSS_TYPES, SCALE_REWARDS, group_advantages, grpo_objective, k3_kl, zero_spread_groups
from distill.losses.kd import KD_KINDS, TAILS, divergence, sampled_kl, student_partition, teacher_partition
from distill.losses.memory import measure_peak_memory
from distill.losses.onpolicy import (
    AGGREGATIONS,
    onpolicy_reverse_objective,
    reverse_kl_advantages,
    reverse_kl_by_position,
)

__all__ = [
    "AGGREGATIONS",
    "CHUNK_ELEMENTS",
    "IGNORE_INDEX",
    "KD_KINDS",
    "LOSS_TYPES",
    "SCALE_REWARDS",
    "TAILS",
    "LossOutput",
    "auto_chunk_size",
    "distill_loss",
    "divergence",
    "group_advantages",
    "grpo_objective",
    "k3_kl",
    "measure_peak_memory",
    "naive_distill_loss",
    "onpolicy_reverse_objective",
    "reverse_kl_advantages",
    "reverse_kl_by_position",
    "sampled_kl",
    "student_partition",
    "teacher_partition",
    "zero_spread_groups",
]
