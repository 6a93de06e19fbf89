"""The trainer's loss, α·CE + (1 − α)·τ²·KD, computed over the output layer in chunks of positions.

Memory: the (N, V) logits are never materialised. Per chunk of `chunk_size` positions the logits
h·Wᵀ are computed, reduced to per-position CE and KD terms, summed and dropped; backward recomputes
them (non-reentrant activation checkpointing per chunk, which returns gradients for hidden, weight
and bias). Peak loss memory then scales with chunk_size × V, not N × V. `naive_distill_loss` is the
same loss with the full (N, V) logits kept for backward: the reference for tests and benchmarks.

Precision: the matmul runs in the inputs' dtype (promoted to the wider one if hidden and weight
differ) or in the autocast dtype when the caller has autocast on, as the rest of the model does;
its logits are upcast to fp32 (fp64 stays fp64) before any softmax, logsumexp or KD term. Upcasting
the (V, H) weight for every chunk instead would cost more memory traffic than the matmul itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from distill.losses.kd import KD_KINDS, TAILS, divergence, sampled_kl, student_partition, teacher_partition

IGNORE_INDEX = -100  # targets at masked positions (prompt, padding, record boundaries), as in torch's CE
CHUNK_ELEMENTS = 2**24  # logits per chunk for the automatic chunk size: 64 MiB in fp32


@dataclass
class LossOutput:
    """The loss to backpropagate and its parts, means over the `num_tokens` unmasked positions."""

    loss: torch.Tensor  # () differentiable: α·ce + (1 − α)·τ²·kd
    ce: torch.Tensor  # () detached cross-entropy to the trace token, at τ = 1
    kd: torch.Tensor  # () detached KD term, before the τ² factor (0 when α = 1)
    num_tokens: int  # unmasked positions


def auto_chunk_size(vocab_size: int) -> int:
    """Positions per chunk so that one chunk's logits hold at most CHUNK_ELEMENTS values (16 ≤ size ≤ 4096).

    A power of two: 512 at V = 32,768, 64 at V = 151,936.
    """
    return int(min(max(2 ** math.floor(math.log2(max(CHUNK_ELEMENTS // vocab_size, 1))), 16), 4096))


def distill_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    topk_ids: torch.Tensor | None = None,
    topk_logprobs: torch.Tensor | None = None,
    tail_logprobs: torch.Tensor | None = None,
    extra_ids: torch.Tensor | None = None,
    extra_logprobs: torch.Tensor | None = None,
    *,
    alpha: float = 0.5,
    kd: str = "forward",
    tail: str = "bucket",
    temperature: float = 1.0,
    beta: float = 0.5,
    chunk_size: int | None = None,
    bias: torch.Tensor | None = None,
) -> LossOutput:
    """α·CE + (1 − α)·τ²·KD averaged over unmasked positions, chunked with recomputation in backward.

    hidden: (N, H) final hidden states at positions that predict the next token, any float dtype.
    weight: (V, H) output layer (lm_head or tied embedding); bias: (V,) or None.
    targets: (N,) integer next-token ids, IGNORE_INDEX where masked.
    topk_ids, topk_logprobs: (N, k) teacher top-k ids and raw logprobs; not needed when alpha == 1
        or kd == "sampled".
    tail_logprobs: (N,) log of the teacher's mass outside its top-k (a format-2 cache stores it), or None
        to derive it from the top-k (tail="bucket" only).
    extra_ids, extra_logprobs: (N, M) tokens drawn from the teacher at temperature τ and their teacher
        logprobs log p_τ, for kd == "sampled".
    kd: one of KD_KINDS; tail: one of TAILS (ignored by "sampled"); beta: the JSD weight, 0 < β < 1.
        tail="bucket" needs temperature 1 (the tempered tail is unknown); "renorm" and "sampled" take any τ.
    chunk_size: positions per chunk; None picks `auto_chunk_size(V)`.

    Returns a LossOutput; with no unmasked position the loss is 0 with a zero gradient.
    Raises ValueError, naming every problem at once, for invalid arguments or shapes.
    """
    settings = (alpha, kd, tail, temperature, beta)
    teacher = (topk_ids, topk_logprobs, tail_logprobs, extra_ids, extra_logprobs)
    _raise_problems(hidden, weight, targets, *teacher, *settings, chunk_size)
    chunk_size = chunk_size or auto_chunk_size(weight.shape[0])
    args = _prepared(targets, *teacher, alpha, kd, tail)
    # without autograd there is nothing to recompute, so checkpointing would only add overhead
    recompute = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    ce_sum = kd_sum = _zero_connected(hidden, weight, bias)
    for start in range(0, hidden.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        chunk = (hidden[rows], weight, bias, *(None if t is None else t[rows] for t in args))
        if recompute:
            ce, kd_part = checkpoint(_chunk_sums, *chunk, *settings, use_reentrant=False)
        else:
            ce, kd_part = _chunk_sums(*chunk, *settings)
        ce_sum, kd_sum = ce_sum + ce, kd_sum + kd_part
    return _combine(ce_sum, kd_sum, targets, alpha, temperature)


def naive_distill_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    topk_ids: torch.Tensor | None = None,
    topk_logprobs: torch.Tensor | None = None,
    tail_logprobs: torch.Tensor | None = None,
    extra_ids: torch.Tensor | None = None,
    extra_logprobs: torch.Tensor | None = None,
    *,
    alpha: float = 0.5,
    kd: str = "forward",
    tail: str = "bucket",
    temperature: float = 1.0,
    beta: float = 0.5,
    chunk_size: int | None = None,
    bias: torch.Tensor | None = None,
) -> LossOutput:
    """The reference for `distill_loss` (same arguments and result) with the full (N, V) logits kept for backward.

    `chunk_size` is accepted for a drop-in signature and ignored. Tests and benchmarks only: its
    memory grows with N × V.
    """
    settings = (alpha, kd, tail, temperature, beta)
    teacher = (topk_ids, topk_logprobs, tail_logprobs, extra_ids, extra_logprobs)
    _raise_problems(hidden, weight, targets, *teacher, *settings, chunk_size)
    args = _prepared(targets, *teacher, alpha, kd, tail)
    ce, kd_sum = _chunk_sums(hidden, weight, bias, *args, *settings)  # (N, V) logits kept for backward
    zero = _zero_connected(hidden, weight, bias)
    return _combine(zero + ce, zero + kd_sum, targets, alpha, temperature)


# ---------------------------------------------------------------------------------------------
# one chunk: logits → per-position terms → sums


def _chunk_sums(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    topk_ids: torch.Tensor | None,
    topk_logprobs: torch.Tensor | None,
    tail_logprobs: torch.Tensor | None,
    extra_ids: torch.Tensor | None,
    extra_logprobs: torch.Tensor | None,
    alpha: float,
    kd: str,
    tail: str,
    temperature: float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ CE, Σ KD) over the unmasked positions of one chunk, two () tensors.

    hidden (n, H), weight (V, H), bias (V,) or None, targets (n,) long, topk_ids / topk_logprobs (n, k),
    tail_logprobs (n,), extra_ids / extra_logprobs (n, M); teacher tensors are None where unused.
    """
    logits = _logits(hidden, weight, bias)  # (n, V) fp32: the memory hot spot, freed when the chunk ends
    mask = targets != IGNORE_INDEX  # (n,)
    lse = torch.logsumexp(logits, dim=-1)  # (n,)
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (n,); masked rows read id 0
    ce = torch.where(mask, lse - picked, 0.0).sum()
    if alpha >= 1.0:
        return ce, torch.zeros_like(ce)
    # logits / τ is a second (n, V) buffer, kept by logsumexp for backward; τ = 1 shares the CE one
    lse_t = lse if temperature == 1.0 else torch.logsumexp(logits / temperature, dim=-1)  # (n,)
    if kd == "sampled":
        per_position = sampled_kl(logits, lse_t, extra_ids, extra_logprobs, temperature)
    else:
        log_p = teacher_partition(topk_logprobs, tail, temperature, tail_logprobs)  # (n, k+1) or (n, k)
        log_q = student_partition(logits, lse_t, topk_ids, tail, temperature)
        per_position = divergence(log_p, log_q, kd, beta)  # (n,)
    return ce, torch.where(mask, per_position, 0.0).sum()


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """h·Wᵀ (+ b): (n, H), (V, H), (V,) → (n, V) in fp32, or fp64 when the inputs are fp64."""
    if not torch.is_autocast_enabled(hidden.device.type):
        common = torch.promote_types(hidden.dtype, weight.dtype)  # only the narrower side is cast
        hidden, weight = hidden.to(common), weight.to(common)
        bias = None if bias is None else bias.to(common)
    logits = F.linear(hidden, weight, bias)  # (n, V)
    return logits if logits.dtype == torch.float64 else logits.float()


def _prepared(
    targets: torch.Tensor,
    topk_ids: torch.Tensor | None,
    topk_logprobs: torch.Tensor | None,
    tail_logprobs: torch.Tensor | None,
    extra_ids: torch.Tensor | None,
    extra_logprobs: torch.Tensor | None,
    alpha: float,
    kd: str,
    tail: str,
) -> tuple[torch.Tensor | None, ...]:
    """The per-position tensors the chunks read: ids as long (gather needs it), unused teacher tensors as None."""
    needs_topk, needs_extra = alpha < 1.0 and kd != "sampled", alpha < 1.0 and kd == "sampled"
    return (
        targets.long(),
        topk_ids.long() if needs_topk else None,
        topk_logprobs if needs_topk else None,
        tail_logprobs if needs_topk and tail == "bucket" else None,
        extra_ids.long() if needs_extra else None,
        extra_logprobs if needs_extra else None,
    )


def _zero_connected(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A () zero in the loss dtype that depends on every input, so each one gets a (zero) gradient.

    Only an empty batch needs the (V, H) reduction: otherwise every chunk already reaches weight and bias.
    """
    dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    zero = hidden.sum().to(dtype) * 0.0
    if hidden.shape[0] == 0:
        zero = zero + weight.sum().to(dtype) * 0.0 + (0.0 if bias is None else bias.sum().to(dtype) * 0.0)
    return zero


def _combine(
    ce_sum: torch.Tensor, kd_sum: torch.Tensor, targets: torch.Tensor, alpha: float, temperature: float
) -> LossOutput:
    """Means over unmasked positions from () sums; the denominator is at least 1 so an empty batch gives 0."""
    num_tokens = int((targets != IGNORE_INDEX).sum())
    denom = max(num_tokens, 1)
    loss = (alpha * ce_sum + (1.0 - alpha) * temperature**2 * kd_sum) / denom
    return LossOutput(loss, (ce_sum / denom).detach(), (kd_sum / denom).detach(), num_tokens)


# ---------------------------------------------------------------------------------------------
# argument checks: every problem, as sentences, in one ValueError


def _raise_problems(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    topk_ids: torch.Tensor | None,
    topk_logprobs: torch.Tensor | None,
    tail_logprobs: torch.Tensor | None,
    extra_ids: torch.Tensor | None,
    extra_logprobs: torch.Tensor | None,
    alpha: float,
    kd: str,
    tail: str,
    temperature: float,
    beta: float,
    chunk_size: int | None,
) -> None:
    """Raise one ValueError listing every invalid setting, shape or id (ids need one host sync)."""
    problems = setting_problems(alpha, kd, tail, temperature, beta, chunk_size)
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[-1] != weight.shape[-1]:
        problems.append(
            f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} must be (N, H) and (V, H) with the same H"
        )
    n, vocab = (hidden.shape[0] if hidden.dim() else 0), (weight.shape[0] if weight.dim() else 0)
    if targets.shape != (n,) or targets.is_floating_point():
        problems.append(f"targets must be integer ids of shape (N={n},), got {targets.dtype} {tuple(targets.shape)}")
    id_tensors = {"targets": targets}
    if alpha < 1.0 and kd == "sampled":
        if extra_ids is None or extra_logprobs is None:
            problems.append(
                "kd='sampled' with alpha < 1 needs extra_ids and extra_logprobs of shape (N, M): tokens drawn from "
                "the teacher and their teacher logprobs"
            )
        elif extra_ids.dim() != 2 or extra_ids.shape[0] != n or extra_ids.shape[1] == 0:
            problems.append(f"extra_ids must be (N={n}, M ≥ 1), got {tuple(extra_ids.shape)}")
        elif extra_logprobs.shape != extra_ids.shape or not extra_logprobs.is_floating_point():
            problems.append(
                f"extra_logprobs ({extra_logprobs.dtype} {tuple(extra_logprobs.shape)}) must be floating-point "
                f"logprobs of the shape of extra_ids {tuple(extra_ids.shape)}"
            )
        else:
            id_tensors["extra_ids"] = extra_ids
    if alpha < 1.0 and kd in KD_KINDS and kd != "sampled":
        if topk_ids is None or topk_logprobs is None:
            problems.append(f"alpha={alpha} < 1 with kd={kd!r} needs the teacher's topk_ids and topk_logprobs")
        elif topk_ids.dim() != 2 or topk_ids.shape != topk_logprobs.shape or topk_ids.shape[0] != n:
            problems.append(
                f"topk_ids {tuple(topk_ids.shape)} and topk_logprobs {tuple(topk_logprobs.shape)} "
                f"must both be (N={n}, k)"
            )
        elif topk_ids.shape[1] == 0:
            problems.append("topk_ids and topk_logprobs have k = 0 columns: the cache holds no teacher logprobs")
        elif not topk_logprobs.is_floating_point():
            problems.append(f"topk_logprobs must be floating-point logprobs, got {topk_logprobs.dtype}")
        elif tail_logprobs is not None and (tail_logprobs.shape != (n,) or not tail_logprobs.is_floating_point()):
            problems.append(
                f"tail_logprobs must be (N={n},) log masses, got {tail_logprobs.dtype} {tuple(tail_logprobs.shape)}"
            )
        else:
            id_tensors["topk_ids"] = topk_ids
    for name, ids in id_tensors.items():
        if ids.is_floating_point():
            if name != "targets":
                problems.append(f"{name} must be integer token ids, got {ids.dtype}")
            continue
        valid = ids[ids != IGNORE_INDEX] if name == "targets" else ids
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= vocab):
            problems.append(
                f"{name} hold ids in [{int(valid.min())}, {int(valid.max())}] but the output layer has V={vocab} rows: "
                "was the teacher cache made with another tokenizer?"
            )
    if problems:
        raise ValueError("; ".join(problems))


def setting_problems(
    alpha: float, kd: str, tail: str, temperature: float, beta: float, chunk_size: int | None
) -> list[str]:
    """A sentence for each invalid loss setting (none: all valid); `cross_tokenizer_kd` checks its own with it."""
    problems = []
    if chunk_size is not None and chunk_size < 1:
        problems.append(f"chunk_size must be a positive number of positions (or None for automatic), got {chunk_size}")
    if not 0.0 <= alpha <= 1.0:
        problems.append(f"alpha must be in [0, 1], got {alpha}")
    if not temperature > 0:
        problems.append(f"temperature must be > 0, got {temperature}")
    if kd not in KD_KINDS:
        problems.append(f"kd must be one of {', '.join(KD_KINDS)}, got {kd!r}")
    if tail not in TAILS:
        problems.append(f"tail must be one of {', '.join(TAILS)}, got {tail!r}")
    if alpha < 1.0 and kd != "sampled" and tail == "bucket" and temperature != 1.0:
        problems.append(
            f"tail='bucket' at temperature {temperature} would need the teacher's tempered tail mass, which the top-k "
            "cannot give; use tail='renorm' (exact at any temperature), kd='sampled', or temperature 1"
        )
    if kd == "jsd" and not 0.0 < beta < 1.0:
        problems.append(f"kd='jsd' needs 0 < beta < 1 (at 0 or 1 it is identically zero), got {beta}")
    return problems
