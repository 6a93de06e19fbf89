"""`distill onpolicy`: the student samples, the teacher grades every token it wrote (on-policy distillation).

    distill onpolicy --student runs/sft/model --teacher arith-teacher --prompts arith:train --steps 100

One recipe that reads top to bottom: setup (tokenizer and template guards → models → engines → teacher
self-check) → loop (rollout → teacher scoring → [rewards] → μ updates → weight sync → log → checkpoint) → save.
Each step:

- rollout: `batch_size / G` prompts, G completions each, sampled at `--temperature` τ (default 1) by the
  student's engine (vLLM in this process with its weights synced in place after every update, as `distill
  grpo` does; or `--backend hf`). Both sides are scored at τ: log π_θold^τ − log π_T^τ on samples of
  π_θold^τ estimates KL(π_θold^τ‖π_T^τ) — at τ = 1 the plain reverse KL; at τ < 1 the student is matched
  to the teacher at the temperature it will be used at;
- teacher scoring: the prompt rendered with the *teacher's* chat template, followed by the student's
  completion ids verbatim (never re-tokenised), teacher-forced in one pass: the teacher's logprob of every
  sampled token and its top-k with the exact tail mass. `--teacher-backend hf` (default) runs the teacher as a
  transformers forward with the trainer's own numerics — a student identical to the teacher then sees
  advantages of exactly 0; `vllm` uses a second engine's prompt-logprobs path (the top-k tail then derives
  from the top-k). The scores are appended to OUT/cache in the cache format (`distill cache info`, notebooks);
- loss: `reverse` — A_t = log π_T(x_t) − log π_θold(x_t) (+ w · group-normalised reward) per token under
  the clipped ratio (distill.losses.onpolicy), or with --kl-discount γ the discounted sum of the log-ratios
  still to come; `topk` — `distill_loss` with α = 0 over the teacher's top-k at every sampled position (GKD
  with λ = 1); `full` — the --kd divergence over the whole vocabulary there (exact GKD: the teacher's hidden
  states, distill.losses.full_vocab, in chunks); topk and full add w · the reward policy gradient when
  --reward-weight > 0;
- π_θold is the trainer's own forward right after the rollout (as grpo); the engine's logprobs of its own
  samples are only compared with it (`logprob_mismatch`);
- truncated completions (finish reason "length") are trained on by default — every token's teacher
  verdict is valid whether or not the completion ended — and left out with --drop-truncated; either way
  `truncated_frac` is logged.

Guards learned from the anchors: the student's and teacher's regular vocabularies must be one (the ids
are scored verbatim), the templates must open the completion the same way (think prefix) and end it with
a token the teacher also ends on; both are refused with a sentence before any model loads. Before step 1
the teacher writes a few greedy completions and scores them through the same scoring path: its mean
logprob (high: its own argmax choices) and the gap to the logprobs it generated them with (≈ 0 when scoring is
aligned) are logged and kept in run.json, so a shifted or broken scoring path shows before any update.

`--cross-tokenizer` (a student of another tokenizer; --loss reverse): the completion's text (its end token
aside) is re-tokenised by the teacher, which scores its own ids and ends with its own eos where the student
ended; both sides are aligned by byte spans (distill.alignment), and each student token gets its share of
the teacher's log-probability of its span (`span_logprobs`): one-to-one tokens the teacher's own value, a
student token covering several teacher tokens their sum, several covering one an equal share of it. Per
span, and so per completion, Σ A_t is the exact log-ratio log π_T(text) − log π_θold(text). A sample cut inside
a character (or holding a stray byte) is cut back to its last whole character first (`xt_cut` counts them); one
that is only the stop token is scored on it. With identical tokenizers the ids are not re-tokenised and the run is
the one without the flag, bit for bit.

The teacher's side (guards, its rendering of the prompts, scoring, the self-check, its hidden states) is
`distill.teacher_grader.TeacherGrader`; engine set-up, checkpoints and the step log are shared with `distill grpo`
(distill.rollouts, distill.checkpoints, distill.tracking). Output and resume as `distill grpo`: OUT/checkpoints,
OUT/metrics.jsonl (and `--report-to` trackers),
OUT/run.json, OUT/model; `--resume` restores policy, optimiser, RNG and step and redraws the same samples.
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

from distill.cache import CacheSpec, CacheWriter
from distill.cache.key import OnPolicyKey
from distill.checkpoints import RunDirectory
from distill.configs.onpolicy import OnPolicyConfig
from distill.engines import SamplingSpec
from distill.errors import DistillError
from distill.fingerprint import tokenizer_fingerprint, weights_fingerprint
from distill.losses import IGNORE_INDEX, distill_loss, group_advantages
from distill.losses.full_vocab import full_vocab_kd
from distill.losses.onpolicy import onpolicy_reverse_objective, reverse_kl_advantages, reverse_kl_by_position
from distill.models.tokenizer import TOKENIZER_FILES, load_tokenizer, stop_token_ids
from distill.presets import resolve_preset
from distill.prompts import load_prompts, record_meta
from distill.recording import to_record
from distill.rollouts import (
    MicroBatch,
    Rollout,
    completion_hidden,
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
from distill.teacher_grader import TeacherGrader
from distill.teacher_scores import TeacherScores
from distill.tracking import StepLog

ONPOLICY_CONFIG = "distill_onpolicy.json"
SCORES_CACHE = "cache"


# ---------------------------------------------------------------------------------------------
# the recipe


class OnPolicyRecipe:
    """setup → self-check → loop (rollout → score → [rewards] → μ updates → sync → log → checkpoint) → save."""

    def __init__(self, cfg: OnPolicyConfig) -> None:
        # the options that depend on the student's size (lr, batch size, warm-up) default to its preset's; a model
        # directory distill wrote has the preset it was trained from (presets.PRESET_RECORD)
        self.cfg = cfg.with_defaults(resolve_preset(cfg.student, "student").onpolicy)
        self.run = RunDirectory(Path(cfg.out))
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        self.rollout_tokens = 0

    def log(self, msg: str) -> None:
        typer.echo(msg, err=True)

    # -----------------------------------------------------------------------------------------
    # setup

    def setup(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.student = resolve_policy(cfg.student, "--student")
        self.teacher = resolve_preset(cfg.teacher, "teacher")
        self.tokenizer = load_tokenizer(self.student.hub_id, self.student.revision)
        self.stops = stop_token_ids(self.tokenizer, self.student.hub_id)
        self.grader = TeacherGrader(
            self.teacher, self.tokenizer, self.stops, backend=cfg.teacher_backend,
            top_k=cfg.top_k or self.teacher.top_k, temperature=cfg.temperature, micro_batch=cfg.micro_batch,
            cross_tokenizer=cfg.cross_tokenizer, device=self.device, seed=cfg.seed,
            gpu_memory_utilization=cfg.teacher_gpu_memory_utilization, log=self.log,
            servers=cfg if cfg.teacher_url else None,
        )  # fmt: skip
        self.grader.check(self.student)  # before any model loads
        prompts, self.where = load_prompts(cfg.prompts, cfg.prompt_field, cfg.answer_field, cfg.mapping, cfg.limit)
        if cfg.reward_weight and "math" in cfg.names and all(q.get("answer") is None for q in prompts):
            raise DistillError(
                f"Prompt source {self.where} has no gold answers; the math reward needs them (an answer column)."
            )
        self.max_new_tokens = completion_limit(cfg.max_new_tokens, self.student)
        render_prompts(prompts, self.tokenizer, self.student.prompt)
        self.grader.render(prompts)  # the same question in the teacher's template, then the student's ids verbatim
        self.policy = load_policy(self.student, self.device).train()
        self.grader.load()
        self.optimizer = policy_optimizer(self.policy, cfg.lr)
        self.step = 0
        if cfg.resume:  # after every load: the RNG states come back with the checkpoint
            last, self.step = self.run.restore_policy(self.policy, self.optimizer, self.device)
            self.log(f"resumed from {last} (step {self.step})")
        self.engine = open_policy_engine(cfg, self.student, self.tokenizer, self.policy, resumed=self.step > 0)
        self.prompts = fit_prompts(prompts, self.engine.max_model_len, self.max_new_tokens, self.where, self.log)
        self.spec = SamplingSpec(cfg.temperature, 1.0, self.max_new_tokens, top_k=0, stop_token_ids=self.stops)
        self.log(
            f"onpolicy: {self.student.name} ← {self.teacher.name} on {len(self.prompts)} prompts of {self.where}, "
            f"{cfg.batch_size // cfg.group_size} prompts × G={cfg.group_size} per step, {cfg.steps} steps, "
            f"loss {cfg.loss}{'' if cfg.loss == 'reverse' else ' (' + cfg.kd + ')'}, reward {cfg.reward_weight}, "
            f"μ={cfg.iterations}, engines {self.engine.name} (student) / {self.grader.backend} (teacher)"
            + (", the student's text re-tokenised for the teacher (--cross-tokenizer)" if cfg.cross_tokenizer else "")
        )

    def _open_cache(self) -> CacheWriter:
        """OUT/cache: the teacher's scores of every rollout, in the cache format; a resumed run continues it.

        fp32, not the compact codec: a run's rollouts are few next to an offline cache, and a reader checking
        what the student was pulled toward should see exactly the logprobs the loss used.
        """
        settings = self.cfg.key_settings()
        teacher_tok = self.grader.tokenizer
        source = OnPolicyKey(
            teacher=weights_fingerprint(self.teacher.hub_id, self.teacher.revision, extra_names=TOKENIZER_FILES),
            student=weights_fingerprint(self.student.hub_id, self.student.revision, extra_names=TOKENIZER_FILES),
            settings=settings,
        )
        provenance = {
            "teacher": self.teacher.name,
            "teacher_model": self.teacher.hub_id,
            "tokenizer_fingerprint": tokenizer_fingerprint(teacher_tok),
            "prompt_source": self.where,
            "key_parts": source.parts(),
            "stage": "onpolicy",
            "student": self.student.name,
        }
        key = source.key()
        # padded vocabularies: the engines and teacher_view fold padding rows into the tail, so ids are tokens
        spec = CacheSpec(top_k=self.grader.top_k, vocab_size=len(teacher_tok), precision="fp32")
        return CacheWriter(self.run.path / SCORES_CACHE, spec, key, provenance, extend=self.cfg.resume)

    # -----------------------------------------------------------------------------------------
    # one step

    def rollout(self) -> Rollout:
        """This step's completions: `batch_size / G` prompts, G seeded samples each, from the current policy."""
        cfg = self.cfg
        return step_rollout(self.engine, self.spec, self.tokenizer, self.prompts, cfg.group_size, cfg.batch_size,
                            self.step, cfg.seed)  # fmt: skip

    def reward_advantages(self, rollout: Rollout) -> tuple[torch.Tensor | None, dict[str, Any]]:
        """(N,) group-normalised rewards (0 where a verdict is unknown) and their metrics; None when off."""
        if not self.cfg.reward_weight:
            return None, {}
        rewards, verdicts = compute_rewards(self.cfg.names, self.cfg.weights, rollout)
        ok = ~torch.isnan(rewards)
        row: dict[str, Any] = {"reward_mean": float(rewards[ok].mean()) if ok.any() else math.nan}
        for name, vs in verdicts.items():
            passed = torch.tensor([float(v.passed) for v in vs])[ok]
            row[f"reward_{name}_mean"] = float(passed.mean()) if len(passed) else math.nan
        row["reward_skipped"] = int((~ok).sum())
        return group_advantages(rewards, self.cfg.group_size), row

    def _padded(self, x: torch.Tensor, mb: MicroBatch) -> torch.Tensor:
        """Rows `mb.rows` of a step tensor (N, T_step, ...), cut to the micro-batch's T."""
        return x[mb.rows, : mb.completion_ids.shape[1]].to(self.device)

    def _topk_loss(self, mb: MicroBatch, scores: TeacherScores, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """KD over the teacher's top-k at every sampled position (α = 0), this micro-batch's share of the batch mean."""
        lm = self.policy
        hidden = completion_hidden(lm, mb, self.device)  # (b, T, H): the positions predicting the sampled tokens
        keep = mb.mask.bool().to(self.device)
        targets = torch.where(keep, mb.completion_ids.to(self.device), IGNORE_INDEX)
        tail = scores.tail_logprobs
        out = distill_loss(
            hidden[keep],
            lm.get_output_embeddings().weight,
            targets[keep],
            self._padded(scores.topk_ids, mb)[keep],
            self._padded(scores.topk_logprobs, mb)[keep],
            None if tail is None else self._padded(tail, mb)[keep],
            alpha=0.0,
            kd=self.cfg.kd,
            beta=self.cfg.beta,
        )
        share = out.num_tokens / max(tokens, 1)
        return out.loss * share, out.kd * share

    def _full_loss(self, mb: MicroBatch, teacher_hidden: torch.Tensor, tokens: int) -> tuple[torch.Tensor, float]:
        """The --kd divergence over the whole vocabulary at every sampled position (exact GKD, λ = 1), this
        micro-batch's share of the batch mean; teacher_hidden (b, T, H_t) at the same positions."""
        keep = mb.mask.bool().to(self.device)
        per_position = full_vocab_kd(
            completion_hidden(self.policy, mb, self.device)[keep],
            self.policy.get_output_embeddings().weight,
            teacher_hidden[keep],
            self.grader.output_weight,
            kd=self.cfg.kd,
            beta=self.cfg.beta,
            temperature=self.cfg.temperature,
            vocab=len(self.tokenizer),
        )  # (n,)
        loss = per_position.sum() / max(tokens, 1)
        return loss, float(loss.detach())

    def update(
        self, batches: list[MicroBatch], scores: TeacherScores, rewards: torch.Tensor | None
    ) -> tuple[dict[str, float], list[torch.Tensor], list[torch.Tensor]]:
        """π_θold, then μ passes of the loss; the pass statistics averaged, and π_θold's logprobs at the run's
        temperature and raw (one (b, T) tensor per micro-batch each)."""
        cfg = self.cfg
        t = cfg.temperature
        with torch.no_grad():  # before the first update: exactly π_θold, at the temperature it sampled at
            first = [completion_logprobs(self.policy, mb, t, self.device) for mb in batches]
        old, raw = [f[0] for f in first], [f[1] for f in first]
        seqs = sum(len(mb.rows) for mb in batches)
        toks = int(sum(mb.mask.sum() for mb in batches))
        teacher_hidden = self.grader.hidden(batches, scores) if cfg.loss == "full" else None
        passes = []
        for _ in range(cfg.iterations):
            sums: dict[str, float] = {}
            for k, mb in enumerate(batches):
                mask = mb.mask.to(self.device)
                reward = None if rewards is None else rewards[mb.rows].to(self.device)
                teacher = self._padded(scores.logprobs, mb)
                loss = torch.zeros((), device=self.device)
                stats: dict[str, Any] = {}
                if cfg.loss == "reverse" or reward is not None:
                    logp, _ = completion_logprobs(self.policy, mb, t, self.device)
                    if cfg.loss == "reverse":
                        adv = reverse_kl_advantages(old[k], teacher, mask, reward, cfg.reward_weight, cfg.kl_discount)
                    else:  # topk, full: the reward's policy gradient beside the KD term
                        adv = torch.where(mask.bool(), cfg.reward_weight * reward[:, None], 0.0)
                    pg, stats = onpolicy_reverse_objective(
                        logp,
                        old[k],
                        adv,
                        mask,
                        cfg.epsilon,
                        cfg.epsilon_high,
                        cfg.aggregation,
                        batch_sequences=seqs,
                        batch_tokens=toks,
                    )
                    loss = loss + pg
                if cfg.loss != "reverse":
                    if cfg.loss == "topk":
                        kd_loss, kd = self._topk_loss(mb, scores, toks)
                    else:
                        kd_loss, kd = self._full_loss(mb, teacher_hidden[k], toks)
                    loss = loss + kd_loss
                    sums["kd"] = sums.get("kd", 0.0) + float(kd)
                loss.backward()
                n = float(mb.mask.sum())
                for key in ("clip_low", "clip_high", "ratio_mean"):
                    if key in stats:
                        sums[key] = sums.get(key, 0.0) + float(stats[key]) * n / max(toks, 1)
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            self.run.stop_if_not_finite(sums["loss"], self.step + 1)
            norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
            lr = rollout_lr(cfg.lr, self.step, cfg.warmup_steps, cfg.lr_schedule, cfg.decay_steps or cfg.steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            passes.append({**sums, "grad_norm": float(norm), "lr": lr})
        row = {k: sum(p[k] for p in passes) / len(passes) for k in passes[0]}
        return row, old, raw

    def step_once(self) -> dict[str, Any]:
        """One step: rollout → teacher scoring → [rewards] → updates → weight sync; its metrics row."""
        cfg = self.cfg
        start = time.perf_counter()
        rollout = self.rollout()
        rollout_s = time.perf_counter() - start
        rollout, cut = self.grader.whole_characters(rollout)  # across tokenizers the teacher reads text
        scores = self.grader.score(rollout.completions, rollout.prompts)
        teacher_s = time.perf_counter() - start - rollout_s
        xt_row = (
            {f"xt_{k}": v for k, v in self.grader.xt_shares.items()} | {"xt_cut": cut} if cfg.cross_tokenizer else {}
        )
        self._record(scores, rollout.prompts)
        rewards, row = self.reward_advantages(rollout)
        row.update(xt_row if cfg.cross_tokenizer else {})
        lengths = [len(c.completion_ids) for c in rollout.completions]
        truncated = [c.finish_reason == "length" for c in rollout.completions]
        self.rollout_tokens += sum(lengths)
        row.update(
            completion_len_mean=float(np.mean(lengths)),
            truncated_frac=float(np.mean(truncated)),
            rollout_tokens=self.rollout_tokens,
        )
        keep = [i for i, n in enumerate(lengths) if n and not (cfg.drop_truncated and truncated[i])]
        if keep:
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            batches = micro_batches(rollout.completions, keep, cfg.micro_batch, pad)
            updated = time.perf_counter()
            stats, old, raw = self.update(batches, scores, rewards)
            row.update(stats)
            row["update_s"] = time.perf_counter() - updated
            # reverse KL of the policy that sampled (π_θold) to the teacher, both at τ, over the trained tokens
            t = max(o.shape[1] for o in old)
            student = torch.cat([torch.nn.functional.pad(o.cpu(), (0, t - o.shape[1])) for o in old])
            mask = torch.cat([torch.nn.functional.pad(mb.mask, (0, t - mb.mask.shape[1])) for mb in batches])
            teacher = scores.logprobs[keep, :t]
            teacher = torch.nn.functional.pad(teacher, (0, t - teacher.shape[1]))
            row.update({k: float(v) for k, v in reverse_kl_by_position(student, teacher, mask).items()})
            engine = [c.sampled_logprobs for c in rollout.completions]  # raw, as the trainer's `raw`
            row["logprob_mismatch_mean"], row["logprob_mismatch_max"] = logprob_mismatch(batches, raw, engine)
            synced = time.perf_counter()
            self.engine.load_weights(self.policy.state_dict())
            row["sync_s"] = time.perf_counter() - synced
        else:
            self.log(f"warning: step {self.step + 1}: no completion to learn from (all empty or dropped as truncated)")
        row["rollout_s"], row["teacher_s"], row["seconds"] = rollout_s, teacher_s, time.perf_counter() - start
        return row

    def _record(self, scores: TeacherScores, prompts: list[dict[str, Any]]) -> None:
        """Append the step's teacher scores to OUT/cache (a resumed run skips what it already wrote)."""
        done = self.cache.done_keys()
        for c, q in zip(scores.rows, prompts, strict=True):
            c.key = (f"{self.step + 1}:{c.key[0]}:{q['id']}", c.key[1])
            if c.key not in done:
                self.cache.append(to_record(c, {**record_meta(q), "step": self.step + 1}))

    # -----------------------------------------------------------------------------------------
    # the loop

    def provenance(self) -> dict[str, Any]:
        """What the run's manifest records once set up: the student it starts from, the teacher, the prompts."""
        parent = run_of_model(self.student.hub_id)
        return {
            "model": self.cfg.student,
            "parent_run": read_manifest(parent).id if parent else None,
            "summary": {"teacher": self.cfg.teacher, "prompts": self.where, "prompt_count": len(self.prompts)},
        }

    def final_metrics(self) -> dict[str, Any]:
        """Reverse KL, completion length and rewards over the last 10 steps, and steps."""
        keys = ("reverse_kl", "reverse_kl_last_quarter", "completion_len_mean", "truncated_frac", "reward_mean",
                "rollout_tokens", *(f"reward_{n}_mean" for n in self.cfg.names))  # fmt: skip
        return self.run.final_metrics(keys, last=10)

    def train(self, record: RunRecord) -> None:
        cfg = self.cfg
        with StepLog(self.run, record, cfg.report_to, cfg.resume, "onpolicy", cfg.steps, self.step) as steps:
            rows = self.run.metric_rows()
            self.rollout_tokens = rows[-1].get("rollout_tokens", 0) if rows else 0
            if self.step == 0 and cfg.self_check:
                check = self.grader.self_check(self.prompts[: cfg.self_check], self.max_new_tokens)
                record.update(summary={**record.manifest.summary, "teacher_self_check": check})
            with self._open_cache() as self.cache, StopRequest() as stop:
                while self.step < cfg.steps:
                    row = {"step": self.step + 1, **self.step_once()}
                    self.step += 1
                    steps.log(row, f"reverse-kl {row.get('reverse_kl', math.nan):.4f} "
                              f"len {row['completion_len_mean']:.0f} {row['seconds']:.1f}s")  # fmt: skip
                    # Ctrl-C or SIGTERM: stop after this step, with its checkpoint
                    if self.step % cfg.save_every == 0 or self.step == cfg.steps or stop.signum is not None:
                        self.cache.flush()  # the scores of every step up to the checkpoint are on disk with it
                        self.run.save_policy(self.step, self.policy, self.optimizer)
                    if stop.signum is not None and self.step < cfg.steps:
                        raise stop.stop_now(f"after step {self.step} of {cfg.steps}, its checkpoint written")
                self.cache.finish(tokenizer=self.grader.tokenizer)

    # -----------------------------------------------------------------------------------------
    # save

    def save(self) -> Path:
        record = {"config": asdict(self.cfg), "student": self.student.hub_id, "teacher": self.teacher.hub_id,
                  "prompts": self.where, "steps": self.step}  # fmt: skip
        return self.run.export(self.policy, self.tokenizer, ONPOLICY_CONFIG, record, self.student)


def run_onpolicy(cfg: OnPolicyConfig) -> Path:
    """Run on-policy distillation and export; prints the output model directory as the last line of stdout."""
    cfg = resume_settings(cfg)  # --resume: the run's own settings, or a sentence naming each one given otherwise
    recipe = OnPolicyRecipe(cfg)
    recipe.run.check_start(cfg.resume)  # before anything loads: a refused start costs nothing
    recipe.setup()  # bad input stops here, before the run records itself: nothing is left behind
    with recipe.run.record("onpolicy", recipe.cfg) as record:  # the settings as run, preset defaults filled in
        record.update(**recipe.provenance())
        recipe.train(record)
        path = recipe.save()
        record.finish(recipe.final_metrics())
    typer.echo(str(path))
    return path
