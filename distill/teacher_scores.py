"""The teacher grading a student's samples: what on-policy distillation needs besides rollouts.

- `tokenizer_problems` / `template_problems`: whether the teacher can score the student's token ids
  verbatim after its own rendering of the prompt (same regular vocabulary, same completion opening, a
  stop token the teacher also ends on), as sentences;
- `teacher_view`: one teacher-forced forward over prompt + completion micro-batches, op for op the
  trainer's `completion_logprobs` (identical weights give bit-identical logprobs), giving the sampled
  tokens' logprobs, the top-k and the exact tail mass (raw, for the cache) and the sampled tokens'
  logprobs at the run's temperature (for the advantage);
- `TeacherScores` / `stack_scores`: one step's scores as right-padded (N, T) tensors.

Kept out of the stage so the stage reads as its recipe; nothing here imports a stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from distill.engines import Completion
from distill.fingerprint import vocabulary_fingerprint
from distill.rollouts import MicroBatch, completion_logits

# ---------------------------------------------------------------------------------------------
# guards


def tokenizer_problems(student_tok: Any, teacher_tok: Any, student: str, teacher: str) -> list[str]:
    """Why the teacher cannot score the student's token ids verbatim, as sentences (empty: it can)."""
    if vocabulary_fingerprint(student_tok) == vocabulary_fingerprint(teacher_tok):
        return []
    return [
        f"the student ({student}, {len(student_tok)} tokens) and the teacher ({teacher}, {len(teacher_tok)} tokens) "
        "have different vocabularies, so the teacher would score other tokens than the student wrote; on-policy "
        "distillation needs a student of the teacher's tokenizer family, or --cross-tokenizer (the teacher then scores "
        "the student's text re-tokenised)"
    ]


def template_problems(student: Any, teacher: Any, student_stops: list[int], teacher_stops: list[int]) -> list[str]:
    """Why the student's completions would read differently after the teacher's template, as sentences."""
    out = []
    if student.prompt.think_prefix != teacher.prompt.think_prefix:
        out.append(
            f"the student's template opens its completion with {student.prompt.think_prefix!r} and the teacher's "
            f"with {teacher.prompt.think_prefix!r}, so the teacher would score the student's text after another "
            "opening; give both presets the same think_prefix"
        )
    if not set(student_stops) <= set(teacher_stops):
        out.append(
            f"the student ends its completions with token(s) {sorted(set(student_stops) - set(teacher_stops))} that "
            f"do not end the teacher's turn (its stop tokens: {teacher_stops}); the teacher would score the end of "
            "every completion as a mistake. Use a student with the teacher's chat template"
        )
    return out


# ---------------------------------------------------------------------------------------------
# teacher scoring


@dataclass
class TeacherScores:
    """The teacher's view of one step's completions, as (batch, time) tensors in row order (right-padded)."""

    logprobs: torch.Tensor
    """(N, T) float32 log π_T of each sampled token, at the run's temperature (raw at 1); across tokenizers the
    student token's share of the teacher's log-probability of its span (`span_logprobs`)"""
    topk_ids: torch.Tensor
    """(N, T', k) int64, at the teacher's positions (T' = T unless across tokenizers)"""
    topk_logprobs: torch.Tensor
    """(N, T, k) float32"""
    tail_logprobs: torch.Tensor | None
    """(N, T) float32 log mass outside the top-k, or None (derive it from the top-k)"""
    rows: list[Completion]
    """One Completion per row, arrays unpadded, raw logprobs: what the scores cache records."""


def stack_scores(rows: list[Completion], tempered: list[np.ndarray] | None = None) -> TeacherScores:
    """Per-row teacher completions as right-padded tensors (padding: logprob 0, id 0, tail −inf); `tempered`:
    each row's sampled-token logprobs at the run's temperature (None: the raw ones, temperature 1), which may be
    carried onto another tokenizer's positions (`distill onpolicy --cross-tokenizer`) and so be of other lengths."""
    k = rows[0].topk_ids.shape[1]

    def pad(arrays: list[np.ndarray], value: float, dtype: torch.dtype) -> torch.Tensor:
        shape = (len(arrays), max(len(a) for a in arrays), *arrays[0].shape[1:])
        out = torch.full(shape, value, dtype=dtype)
        for i, a in enumerate(arrays):
            out[i, : len(a)] = torch.as_tensor(np.asarray(a)).to(dtype)
        return out

    tails = [c.tail_logprobs for c in rows]
    return TeacherScores(
        logprobs=pad(tempered or [c.sampled_logprobs for c in rows], 0.0, torch.float32),
        topk_ids=pad([c.topk_ids.reshape(-1, k) for c in rows], 0, torch.long),
        topk_logprobs=pad([c.topk_logprobs.reshape(-1, k) for c in rows], 0.0, torch.float32),
        tail_logprobs=None if any(x is None for x in tails) else pad(tails, -math.inf, torch.float32),
        rows=rows,
    )


def teacher_view(
    model: torch.nn.Module, mb: MicroBatch, top_k: int, temperature: float, device: Any, tokens: int | None = None
) -> tuple[list[dict[str, np.ndarray]], torch.Tensor]:
    """Per row of `mb`: the teacher's raw logprob of each completion token, its top-k and the exact tail (what
    the scores cache records); and (b, T) the sampled tokens' logprobs at `temperature` (what the advantage uses).
    `tokens`: the tokenizer's size; the top-k is the best k of the rows below it, so a padded vocabulary's padding
    rows (Qwen2.5) are never in it and their mass is in the tail (None: every row is a token).

    The forward is `completion_logprobs`'s (`completion_logits`), so identical weights give bit-identical logprobs.
    """
    logits = completion_logits(model, mb, device)  # (b, T, V)
    target = mb.completion_ids.to(device)[..., None]
    at_t = torch.log_softmax(logits / temperature, -1)  # (b, T, V) as completion_logprobs takes it
    tempered = at_t.gather(-1, target)[..., 0]  # (b, T)
    logp = at_t if temperature == 1.0 else torch.log_softmax(logits, -1)  # (b, T, V) raw
    sampled = logp.gather(-1, target)[..., 0]  # (b, T)
    top_lp, top_ids = logp[..., :tokens].topk(top_k, -1)  # (b, T, k) real tokens only
    tail = logp.scatter(-1, top_ids, -math.inf).logsumexp(-1)  # (b, T) exact: the full distribution is here
    out = []
    for j in range(len(mb.rows)):
        n = int(mb.mask[j].sum())
        out.append(
            {
                "sampled_logprobs": sampled[j, :n].cpu().numpy(),
                "topk_ids": top_ids[j, :n].int().cpu().numpy(),
                "topk_logprobs": top_lp[j, :n].cpu().numpy(),
                "tail_logprobs": tail[j, :n].cpu().numpy(),
            }
        )
    return out, tempered.cpu()
