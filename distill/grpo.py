"""`distill grpo`: polish a policy with GRPO on verifier rewards (DeepSeekMath / R1).

    distill grpo --policy runs/student/model --prompts arith:train --group-size 8 --steps 200

One recipe that reads top to bottom: setup → loop (rollout → reward → advantages → μ updates →
log → checkpoint) → save. Each step:

- rollout: `batch_size / G` prompts, G completions each, sampled by the engine (vLLM, or
  transformers with `--backend hf`) from the current policy at `--temperature`, top-p 1 (so the
  sampling distribution is exactly softmax(logits / T), the π the ratio is taken of). Prompts are
  rendered exactly as `distill eval` renders them (the policy preset's R1 prompt style);
- reward: Σ_v w_v · [verifier v passes] with the filter's and eval's verifiers (distill.verify), the
  gold answer as reference (format: the finish reason; lang: the prompt text). A verdict whose status
  is "unknown" (timeout, no gold answer, sandbox failure) drops that sample, counted in metrics;
- advantages: normalised within each group (`--scale-rewards group`) or mean-only (`none`, the
  default of `--loss dr_grpo`); a group with zero reward spread gets exactly 0;
- π_θold: the sampled tokens' logprobs under the trainer's own policy, computed right after the
  rollout and before the first update — exactly π_θold, with the trainer's numerics. The engine's
  own logprobs of the same tokens are only compared with them (`logprob_mismatch`), which is how a
  broken weight sync or an engine/trainer numerics gap shows up;
- μ = `--iterations` optimisation passes over the batch, one AdamW step each, micro-batched with
  gradient accumulation; the loss is distill.losses.grpo_objective (clipped ratio, k3 KL to the
  frozen initial policy weighted by β — β = 0 loads no reference model);
- weight sync: after the updates the policy's weights go into the engine in place
  (`engine.load_weights`), so the next rollout samples from π_θ.

Weight sync in vLLM 0.32 (V1 engine), CPU and GPU alike: the engine runs in this process
(VLLM_ENABLE_V1_MULTIPROCESSING=0, as TRL's "colocate" mode does), and `VLLMEngine.load_weights`
calls the worker's `reload_weights` through `LLM.collective_rpc` with the HF-named tensors, then
resets the prefix cache. `model.load_weights` alone is not enough on CPU: vLLM repacks every linear
weight for oneDNN after loading and drops the original parameter; the reload repeats that step.
On one GPU the trainer and the engine share the device: the engine takes
`--gpu-memory-utilization` of it (default 0.3) for weights and KV cache, the trainer the rest, and
tensors pass in-process, with no serialisation through a server. (Tensor-parallel engines would need
vLLM's external_launcher executor, one engine shard per training rank; not built here.)

Output and resume as `distill train`: checkpoints under OUT/checkpoints written under a temp name
and renamed; `--resume` restores policy, optimiser, RNG and step (prompt order and sampling seeds
derive from seed and step, so a resumed run draws the same prompts); OUT/metrics.jsonl one row per
step (and the `--report-to` trackers); OUT/run.json the run's manifest in the registry (distill.runs); OUT/model a
Hugging Face directory with tokenizer that transformers and vLLM load.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

from distill.checkpoints import RunDirectory
from distill.configs import GRPOConfig
from distill.engines import SamplingSpec
from distill.errors import DistillError
from distill.losses import group_advantages, grpo_objective, zero_spread_groups
from distill.models.tokenizer import load_tokenizer, stop_token_ids
from distill.prompts import load_prompts
from distill.rollouts import (
    MicroBatch,
    Rollout,
    completion_limit,
    completion_logprobs,
    compute_rewards,
    fit_prompts,
    load_policy,
    logprob_mismatch,
    micro_batches,
    open_policy_engine,
    policy_optimizer,
    render_prompts,
    resolve_policy,
    rollout_lr,
    step_rollout,
)
from distill.runs import RunRecord, read_manifest, resume_settings, run_of_model
from distill.stopping import StopRequest
from distill.tracking import StepLog

GRPO_CONFIG = "distill_grpo.json"


# ---------------------------------------------------------------------------------------------
# the recipe


class GRPORecipe:
    """setup → loop (rollout → reward → advantages → μ updates → log → checkpoint) → save."""

    def __init__(self, cfg: GRPOConfig) -> None:
        self.cfg = cfg
        self.run = RunDirectory(Path(cfg.out))
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")

    def log(self, msg: str) -> None:
        typer.echo(msg, err=True)

    # -----------------------------------------------------------------------------------------
    # setup

    def setup(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.preset = resolve_policy(cfg.policy)
        self.tokenizer = load_tokenizer(self.preset.hub_id, self.preset.revision)
        prompts, self.where = load_prompts(cfg.prompts, cfg.prompt_field, cfg.answer_field, cfg.mapping, cfg.limit)
        if "math" in cfg.names and all(q.get("answer") is None for q in prompts):
            raise DistillError(
                f"Prompt source {self.where} has no gold answers; the math reward needs them (an answer column)."
            )
        self.max_new_tokens = completion_limit(cfg.max_new_tokens, self.preset)
        render_prompts(prompts, self.tokenizer, self.preset.prompt)
        self.policy = load_policy(self.preset, self.device).train()
        self.reference = None
        if cfg.beta > 0:  # the frozen initial policy
            self.reference = load_policy(self.preset, self.device).eval().requires_grad_(False)
        self.optimizer = policy_optimizer(self.policy, cfg.lr)
        self.step = 0
        if cfg.resume:  # after every load: the RNG states come back with the checkpoint
            last, self.step = self.run.restore_policy(self.policy, self.optimizer, self.device)
            self.log(f"resumed from {last} (step {self.step})")
        self.engine = open_policy_engine(cfg, self.preset, self.tokenizer, self.policy, resumed=self.step > 0)
        self.prompts = fit_prompts(prompts, self.engine.max_model_len, self.max_new_tokens, self.where, self.log)
        stops = stop_token_ids(self.tokenizer, self.preset.hub_id)
        self.spec = SamplingSpec(cfg.temperature, 1.0, self.max_new_tokens, top_k=0, stop_token_ids=stops)
        self.log(
            f"grpo: {self.preset.name} on {len(self.prompts)} prompts of {self.where}, "
            f"{cfg.batch_size // cfg.group_size} prompts × G={cfg.group_size} per step, {cfg.steps} steps, "
            f"loss {cfg.loss}, scale-rewards {cfg.scale}, β={cfg.beta}, μ={cfg.iterations}, engine {self.engine.name}"
        )

    # -----------------------------------------------------------------------------------------
    # one step

    def update(
        self, batches: list[MicroBatch], advantages: torch.Tensor, engine_logprobs: list[np.ndarray]
    ) -> dict[str, float]:
        """π_θold, π_ref, then μ passes of the clipped objective; the pass statistics, averaged."""
        cfg = self.cfg
        old, ref, raw = [], [], []
        with torch.no_grad():  # before the first update: exactly π_θold
            for mb in batches:
                logp, raw_logp = completion_logprobs(self.policy, mb, cfg.temperature, self.device)
                old.append(logp)
                raw.append(raw_logp)
                if self.reference is not None:
                    ref.append(completion_logprobs(self.reference, mb, cfg.temperature, self.device)[0])
        seqs = sum(len(mb.rows) for mb in batches)
        toks = int(sum(mb.mask.sum() for mb in batches))
        passes = []
        for _ in range(cfg.iterations):
            sums: dict[str, float] = {}
            lo, hi = math.inf, -math.inf
            for k, mb in enumerate(batches):
                logp, _ = completion_logprobs(self.policy, mb, cfg.temperature, self.device)
                loss, stats = grpo_objective(
                    logp,
                    old[k],
                    ref[k] if ref else None,
                    advantages[mb.rows].to(self.device),
                    mb.mask.to(self.device),
                    cfg.epsilon,
                    cfg.epsilon_high if cfg.epsilon_high is not None else cfg.epsilon,
                    cfg.beta,
                    cfg.loss,
                    self.max_new_tokens,
                    batch_sequences=seqs,
                    batch_tokens=toks,
                )
                loss.backward()
                n = float(stats["tokens"])
                for key in ("kl", "clip_low", "clip_high", "ratio_mean"):
                    sums[key] = sums.get(key, 0.0) + float(stats[key]) * n / max(toks, 1)
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
                lo, hi = min(lo, float(stats["ratio_min"])), max(hi, float(stats["ratio_max"]))
            self.run.stop_if_not_finite(sums["loss"], self.step + 1)
            norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
            lr = rollout_lr(cfg.lr, self.step, 0, cfg.lr_schedule, cfg.decay_steps or cfg.steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            passes.append({**sums, "ratio_min": lo, "ratio_max": hi, "grad_norm": float(norm), "lr": lr})
        row = {k: sum(p[k] for p in passes) / len(passes) for k in passes[0]}
        row["ratio_min"] = min(p["ratio_min"] for p in passes)
        row["ratio_max"] = max(p["ratio_max"] for p in passes)
        row["kl"] = row["kl"] if self.reference is not None else 0.0
        # the engine's logprobs of its own samples against the trainer's π_θold (both at temperature 1)
        row["logprob_mismatch_mean"], row["logprob_mismatch_max"] = logprob_mismatch(batches, raw, engine_logprobs)
        return row

    def provenance(self) -> dict[str, Any]:
        """What the run's manifest records once set up: the policy it starts from and the prompts."""
        parent = run_of_model(self.preset.hub_id)
        return {
            "model": self.cfg.policy,
            "parent_run": read_manifest(parent).id if parent else None,
            "summary": {"prompts": self.where, "prompt_count": len(self.prompts)},
        }

    def final_metrics(self) -> dict[str, Any]:
        """The manifest's final metrics: reward, KL and completion length over the last 10 steps, and steps."""
        keys = (
            "reward_mean",
            "kl",
            "completion_len_mean",
            "truncated_frac",
            *(f"reward_{n}_mean" for n in self.cfg.names),
        )
        return self.run.final_metrics(keys, last=10)

    def train(self, record: RunRecord) -> None:
        cfg = self.cfg
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with StepLog(self.run, record, cfg.report_to, cfg.resume, "grpo", cfg.steps, self.step) as steps, \
                StopRequest() as stop:  # fmt: skip
            while self.step < cfg.steps:
                start = time.perf_counter()
                rollout = step_rollout(self.engine, self.spec, self.tokenizer, self.prompts, cfg.group_size,
                                       cfg.batch_size, self.step, cfg.seed)  # fmt: skip
                rollout_s = time.perf_counter() - start
                rewards, verdicts = compute_rewards(cfg.names, cfg.weights, rollout)
                reward_s = time.perf_counter() - start - rollout_s
                advantages = group_advantages(rewards, cfg.group_size, cfg.scale)
                keep = [i for i in range(len(rewards)) if not math.isnan(float(rewards[i]))]
                row: dict[str, Any] = {"step": self.step + 1}
                row.update(self._rollout_metrics(rollout, rewards, verdicts))
                if keep:
                    batches = micro_batches(rollout.completions, keep, cfg.micro_batch, pad)
                    row.update(self.update(batches, advantages, [c.sampled_logprobs for c in rollout.completions]))
                    synced = time.perf_counter()
                    self.engine.load_weights(self.policy.state_dict())
                    row["sync_s"] = time.perf_counter() - synced
                else:
                    self.log(f"warning: step {self.step + 1}: no sample had a computable reward; nothing to learn from")
                self.step += 1
                row["rollout_s"], row["reward_s"], row["seconds"] = rollout_s, reward_s, time.perf_counter() - start
                steps.log(row, f"reward {row['reward_mean']:.3f} zero-spread {row['zero_spread_frac']:.2f} "
                          f"kl {row.get('kl', 0.0):.4f} {row['seconds']:.1f}s")  # fmt: skip
                if row["reward_std"] == 0.0:
                    steps.warn(
                        f"warning: step {row['step']}: every reward is {row['reward_mean']:g}, so every advantage is 0 "
                        "and only the KL term moves the policy (zero_spread_frac in metrics.jsonl tracks this); use "
                        "a larger --group-size, prompts nearer the policy's ability or a higher --temperature."
                    )
                saved = self.step % cfg.save_every == 0 or self.step == cfg.steps
                if saved or stop.signum is not None:  # Ctrl-C or SIGTERM: stop after this step, with its checkpoint
                    self.run.save_policy(self.step, self.policy, self.optimizer)
                if stop.signum is not None and self.step < cfg.steps:
                    raise stop.stop_now(f"after step {self.step} of {cfg.steps}, its checkpoint written")

    def _rollout_metrics(self, rollout: Rollout, rewards: torch.Tensor, verdicts: dict) -> dict[str, Any]:
        ok = ~torch.isnan(rewards)
        r = rewards[ok]
        row = {
            "reward_mean": float(r.mean()) if len(r) else math.nan,
            "reward_std": float(r.std(unbiased=False)) if len(r) else math.nan,
            "reward_skipped": int((~ok).sum()),
            "zero_spread_frac": float(zero_spread_groups(rewards, self.cfg.group_size).float().mean()),
            "truncated_frac": float(np.mean([c.finish_reason == "length" for c in rollout.completions])),
            "completion_len_mean": float(np.mean([len(c.completion_ids) for c in rollout.completions])),
        }
        for name, vs in verdicts.items():
            passed = torch.tensor([float(v.passed) for v in vs])[ok]
            row[f"reward_{name}_mean"] = float(passed.mean()) if len(passed) else math.nan
            row[f"reward_{name}_std"] = float(passed.std(unbiased=False)) if len(passed) else math.nan
            row[f"reward_{name}_unknown"] = sum(v.unknown for v in vs)  # which verifier the skipped samples owe to
        return row

    # -----------------------------------------------------------------------------------------
    # save

    def save(self) -> Path:
        record = {
            "config": asdict(self.cfg),
            "policy": self.preset.hub_id,
            "prompts": self.where,
            "steps": self.step,
        }
        return self.run.export(self.policy, self.tokenizer, GRPO_CONFIG, record, self.preset)


def run_grpo(cfg: GRPOConfig) -> Path:
    """Run GRPO and export; prints the output model directory as the last line of stdout."""
    cfg = resume_settings(cfg)  # --resume: the run's own settings, or a sentence naming each one given otherwise
    recipe = GRPORecipe(cfg)
    recipe.run.check_start(cfg.resume)  # before anything loads: a refused start costs nothing
    recipe.setup()  # bad input stops here, before the run records itself: nothing is left behind
    with recipe.run.record("grpo", cfg) as record:
        record.update(**recipe.provenance())
        recipe.train(record)
        path = recipe.save()
        record.finish(recipe.final_metrics())
    typer.echo(str(path))
    return path
