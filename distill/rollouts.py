"""Rollouts shared by the stages that learn from the policy's own samples (`distill grpo`, `distill onpolicy`).

Kept out of the stages because stages never import each other. What is here:
- `resolve_policy`, `load_policy`, `policy_optimizer`: the model to sample from (refused when it has no weights),
  loaded, and its optimiser;
- `open_policy_engine`, `fit_prompts`, `completion_limit`: the colocated engine, the prompts that fit it;
- `render_prompts` / `step_rollout` / `sample_rollout`: prompts rendered exactly as `distill eval` renders them,
  G seeded samples per prompt (the seed derives from run seed, step and slot, so a resumed run draws the same);
- `compute_rewards`: the verifiers' weighted verdicts, NaN where a verdict is unknown;
- `micro_batches` / `completion_logprobs`: left-padded prompts + right-padded completions, and the
  completion tokens' logprobs from one forward pass (only the T + 1 last positions reach the output layer);
- `logprob_mismatch`: the engine's logprobs of its own samples against the trainer's.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.engines import Completion, Request, SamplingSpec, open_engine, request_seed
from distill.errors import DistillError
from distill.models.tokenizer import decode_completion
from distill.presets import resolve_preset
from distill.prompts import render_prompt
from distill.verify import UNKNOWN, Verdict, reference_for, verify_batch


@dataclass
class Rollout:
    """One step's completions, in group order (G consecutive rows per prompt)."""

    completions: list[Completion]
    texts: list[str]
    prompts: list[dict[str, Any]]
    """The prompt of each row."""


def resolve_policy(spec: str, flag: str = "--policy") -> Any:
    """The preset of the model that samples and learns (resolved as eval resolves its model), refused when it has
    no weights; `flag` is the option that named it."""
    preset = resolve_preset(spec, "teacher")
    path = Path(preset.hub_id)
    if path.is_dir() and not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise DistillError(
            f"Model {spec!r} has no weights in {path} (a random-init preset); learning from its own samples needs a "
            f"trained model: pass a `distill train` output directory (OUT/model) as {flag}."
        )
    return preset


def load_policy(preset: Any, device: Any, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The weights `preset` names as a transformers model on `device` (a policy, its frozen reference, a teacher)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(preset.hub_id, revision=preset.revision, dtype=dtype)
    return model.to(device)


def policy_optimizer(policy: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW over the policy's trainable weights as the rollout stages take it: β₂ 0.99, no weight decay."""
    trainable = [p for p in policy.parameters() if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)


def open_policy_engine(cfg: Any, preset: Any, tokenizer: Any, policy: torch.nn.Module, resumed: bool) -> Any:
    """The engine that samples the policy's rollouts, in this process (weights pass without serialisation; see
    `distill grpo`); a resumed run's engine starts from the checkpoint's weights, now in `policy`, not the preset's.
    cfg: the stage's config (backend, dtype, seed, gpu_memory_utilization)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    engine = open_engine(
        cfg.backend,
        preset.hub_id,
        dtype=cfg.dtype or preset.engine.dtype,
        max_model_len=cfg.max_model_len or preset.engine.max_model_len,
        max_logprobs=1,
        seed=cfg.seed,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        tokens=len(tokenizer),  # a padded vocabulary's extra rows are never sampled
    )
    if resumed:
        engine.load_weights(policy.state_dict())
    return engine


def fit_prompts(
    prompts: list[dict[str, Any]], max_model_len: int, max_new_tokens: int, where: str, log: Any
) -> list[dict[str, Any]]:
    """The prompts that leave room for a completion in the context; the others are skipped with a note, and a note
    says how many leave less than `max_new_tokens` (their completions stop earlier). DistillError when none fit."""
    room = [max_model_len - len(q["ids"]) for q in prompts]
    kept = [q for q, r in zip(prompts, room, strict=True) if r >= 1]
    if not kept:
        raise DistillError(f"Every prompt of {where} fills the model's context ({max_model_len}).")
    if len(kept) < len(prompts):
        log(f"note: {len(prompts) - len(kept)} prompts fill the model's context and are skipped")
    short = sum(1 <= r < max_new_tokens for r in room)
    if short:
        log(
            f"note: the model's context ({max_model_len} tokens) leaves {short} prompts less than --max-new-tokens "
            f"{max_new_tokens}; their completions stop earlier (--max-model-len raises the context)"
        )
    return kept


def completion_limit(given: int | None, preset: Any) -> int:
    """--max-new-tokens, else the preset's sampling limit (1,024 for a preset without one)."""
    sampling = getattr(preset, "sampling", None)
    return given or (sampling.max_new_tokens if sampling else 1024)


def rollout_lr(peak: float, step: int, warmup: int, schedule: str, horizon: int) -> float:
    """The learning rate of optimiser step `step` (0-based): linear warm-up over `warmup` steps to `peak`, then
    constant or a cosine down to 0 at `horizon` — a function of the step alone, so a resumed run agrees."""
    lr = peak * min(1.0, (step + 1) / (warmup + 1))
    if schedule == "cosine" and step >= warmup:
        progress = min(1.0, (step - warmup) / max(horizon - warmup, 1))
        lr = peak * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr


def step_rollout(
    engine: Any,
    spec: SamplingSpec,
    tokenizer: Any,
    prompts: list[dict[str, Any]],
    group_size: int,
    batch_size: int,
    step: int,
    seed: int,
) -> Rollout:
    """Step `step`'s rollout: `batch_size / group_size` prompts in `prompt_order`, G seeded completions each."""
    chosen = [prompts[i] for i in prompt_order(len(prompts), batch_size // group_size, step, seed)]
    return sample_rollout(engine, spec, tokenizer, chosen, group_size, step, seed)


def prompt_order(num_prompts: int, per_step: int, step: int, seed: int) -> list[int]:
    """Prompt indices of `step`: consecutive slices of a fresh seeded permutation per epoch."""
    out, perms = [], {}
    for k in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(k, num_prompts)
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([seed, epoch]).permutation(num_prompts)
        out.append(int(perms[epoch][pos]))
    return out


def render_prompts(prompts: list[dict[str, Any]], tokenizer: Any, style: Any) -> None:
    """Give every prompt its token ids `q["ids"]`, rendered exactly as `distill eval` renders them."""
    for q in prompts:
        text = render_prompt(tokenizer, q["prompt"], style.instruction, style.system_prompt, style.think_prefix)
        q["ids"] = tokenizer(text, add_special_tokens=False)["input_ids"]


def sample_rollout(
    engine: Any,
    spec: SamplingSpec,
    tokenizer: Any,
    prompts: list[dict[str, Any]],
    group_size: int,
    step: int,
    seed: int,
) -> Rollout:
    """G completions of each of `prompts` (rendered, with "ids"), each with a seed of its own."""
    requests = [
        Request(
            (str(slot), i),
            q["ids"],
            request_seed(seed, f"{step}:{slot}:{q['id']}", i),
            max_new_tokens=min(spec.max_new_tokens, engine.max_model_len - len(q["ids"])),
        )
        for slot, q in enumerate(prompts)
        for i in range(group_size)
    ]
    done = {c.key: c for c in engine.generate(iter(requests), spec)}
    completions = [done[r.key] for r in requests]
    texts = [decode_completion(tokenizer, c.completion_ids, c.prompt_ids) for c in completions]
    return Rollout(completions, texts, [q for q in prompts for _ in range(group_size)])


def reward_references(name: str, prompts: list[dict[str, Any]], completions: list[Completion]) -> list[Any]:
    """What verifier `name` checks each completion against."""
    pairs = zip(prompts, completions, strict=True)
    return [reference_for(name, q.get("answer"), q["prompt"], c.finish_reason) for q, c in pairs]


def compute_rewards(
    names: list[str], weights: list[float], rollout: Rollout
) -> tuple[torch.Tensor, dict[str, list[Verdict]]]:
    """(N,) weighted rewards, NaN where any verdict is unknown (could not be computed), and every verdict.

    An unknown verdict says nothing about the completion, so scoring it 0 would punish a right answer
    whose check timed out; the NaN drops the sample instead (counted as `reward_skipped`).
    """
    verdicts: dict[str, list[Verdict]] = {}
    for name in names:
        refs = reward_references(name, rollout.prompts, rollout.completions)
        try:
            verdicts[name] = verify_batch(name, rollout.texts, refs)
        except Exception:  # one bad item must not sink the batch: check one by one, failures unknown
            verdicts[name] = []
            for text, ref in zip(rollout.texts, refs, strict=True):
                try:
                    verdicts[name] += verify_batch(name, [text], [ref], workers=1)
                except Exception as e:
                    verdicts[name].append(Verdict(UNKNOWN, f"could not check: {type(e).__name__}: {e}"))
    rewards = []
    for i in range(len(rollout.texts)):
        vs = [verdicts[n][i] for n in names]
        if any(v.unknown for v in vs):
            rewards.append(math.nan)
        else:
            rewards.append(sum(w * float(v.passed) for w, v in zip(weights, vs, strict=True)))
    return torch.tensor(rewards, dtype=torch.float32), verdicts


@dataclass
class MicroBatch:
    """Padded rows: prompts left-padded to a common length, completions right-padded after them."""

    input_ids: torch.Tensor
    """(b, P + T) int64"""
    attention_mask: torch.Tensor
    """(b, P + T)"""
    position_ids: torch.Tensor
    """(b, P + T)"""
    completion_ids: torch.Tensor
    """(b, T) int64"""
    mask: torch.Tensor
    """(b, T) float: 1 on completion tokens"""
    rows: list[int]
    """Rows of the step's batch."""


def micro_batches(completions: list[Completion], rows: list[int], size: int, pad: int) -> list[MicroBatch]:
    """`rows` of `completions` in micro-batches of `size`, padded as `MicroBatch` describes."""
    out = []
    for start in range(0, len(rows), size):
        part = rows[start : start + size]
        ps = [list(completions[i].prompt_ids) for i in part]
        cs = [[int(t) for t in completions[i].completion_ids] for i in part]
        p, t = max(map(len, ps)), max(map(len, cs))
        ids = torch.full((len(part), p + t), pad, dtype=torch.long)
        att = torch.zeros((len(part), p + t), dtype=torch.long)
        comp = torch.full((len(part), t), pad, dtype=torch.long)
        mask = torch.zeros((len(part), t))
        for j, (pi, ci) in enumerate(zip(ps, cs, strict=True)):
            ids[j, p - len(pi) : p] = torch.tensor(pi)
            ids[j, p : p + len(ci)] = torch.tensor(ci)
            att[j, p - len(pi) : p + len(ci)] = 1
            comp[j, : len(ci)] = torch.tensor(ci)
            mask[j, : len(ci)] = 1
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        out.append(MicroBatch(ids, att, pos, comp, mask, part))
    return out


def completion_logits(model: torch.nn.Module, mb: MicroBatch, device: Any) -> torch.Tensor:
    """(b, T, V) float32 logits at the positions that predict the completion tokens (bf16 autocast on a GPU).

    The one forward the trainer's logprobs and the on-policy teacher's scores share, so that identical weights
    give bit-identical numbers on both sides.
    """
    t = mb.completion_ids.shape[1]
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(device) != "cpu"):
        # only the T + 1 last positions through the output layer; the last one predicts past the end
        logits = model(
            input_ids=mb.input_ids.to(device),
            attention_mask=mb.attention_mask.to(device),
            position_ids=mb.position_ids.to(device),
            use_cache=False,
            logits_to_keep=t + 1,
        ).logits[:, :-1]  # (b, T, V): memory hot spot
    return logits.float()


def completion_hidden(model: torch.nn.Module, mb: MicroBatch, device: Any) -> torch.Tensor:
    """(b, T, H) the final hidden states at the positions that predict the completion tokens (bf16 autocast on a
    GPU): what a chunked loss over the output layer takes instead of (b, T, V) logits."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(device) != "cpu"):
        hidden = model.model(
            input_ids=mb.input_ids.to(device),
            attention_mask=mb.attention_mask.to(device),
            position_ids=mb.position_ids.to(device),
            use_cache=False,
        ).last_hidden_state
    return hidden[:, -mb.completion_ids.shape[1] - 1 : -1]


def completion_logprobs(model: torch.nn.Module, mb: MicroBatch, temperature: float, device: Any) -> tuple[Any, Any]:
    """(b, T) logprobs of the completion tokens at `temperature` and at 1 (raw, comparable with the engine's)."""
    logits = completion_logits(model, mb, device)
    target = mb.completion_ids.to(device)[..., None]
    logp = torch.log_softmax(logits / temperature, -1).gather(-1, target)[..., 0]
    raw = logp if temperature == 1.0 else torch.log_softmax(logits, -1).gather(-1, target)[..., 0]
    return logp, raw


def logprob_mismatch(
    batches: list[MicroBatch], trainer_logprobs: list[torch.Tensor], engine_logprobs: list[np.ndarray]
) -> tuple[float, float]:
    """Mean and max |engine − trainer| logprob over the completion tokens (both raw, at temperature 1).

    A broken weight sync or a numerics gap between the sampling engine and the trainer shows up here.
    trainer_logprobs: one (b, T) tensor per micro-batch; engine_logprobs: (T_i,) per row of the step's batch.
    """
    diffs = []
    for mb, r in zip(batches, trainer_logprobs, strict=True):
        eng = np.stack(
            [
                np.pad(np.asarray(engine_logprobs[i], np.float32), (0, r.shape[1] - len(engine_logprobs[i])))
                for i in mb.rows
            ]
        )
        diffs.append((r.cpu() - torch.from_numpy(eng)).abs()[mb.mask.bool()])
    d = torch.cat(diffs) if diffs else torch.zeros(1)
    return float(d.mean()), float(d.max())
