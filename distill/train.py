"""`distill train`: a student on α·CE + (1−α)·τ²·KD to the cached teacher, at every completion position.

One recipe that reads top to bottom: setup → train → save → cleanup. Choices:
- the teacher is never loaded: its top-k logprobs come from the cache (through a view, if given),
  read-only, so any number of runs share one cache;
- the loss is computed from final hidden states in chunks over the output layer (distill.losses),
  never materialising batch × time × vocab logits;
- `--cross-tokenizer`: a student of another tokenizer re-tokenises the traces' text (distill.retokenize)
  and learns from the teacher's top-k mapped onto its ids, and from the teacher's probability of each
  span where tokens do not correspond one to one;
- batches are packed rows planned per epoch (distill.data); a step's loss is the mean over all its
  loss tokens across micro-batches and ranks, so 1 process and N processes with the same global
  batch compute the same numbers;
- the same command under `torchrun --nproc-per-node N` shards the model with FSDP2 (or replicates it
  with DDP: `--sharding ddp`; a failed FSDP2 set-up is an error, never a quiet fallback), NCCL on
  GPUs, gloo on CPUs;
- bf16 autocast on GPU, fp32 on CPU; AdamW, linear warmup then cosine decay, gradient clipping;
- checkpoints are directories written under a temp name and renamed; `--resume` restores model,
  optimiser, scheduler, RNG and the data position (the step), so the remaining losses equal an
  uninterrupted run's; Ctrl-C or SIGTERM (preemption) stops after the step in progress with a
  checkpoint (distill.stopping), so `--resume` continues from there; a NaN/inf loss stops the run naming
  the step and keeps the last good checkpoint (the run directory's rules live in
  distill.checkpoints.RunDirectory, shared with grpo);
- the run records itself: OUT/run.json (its manifest: config, cache, status, final metrics; see
  distill.runs) in the registry that `distill runs` and `distill compare` read; metrics go to
  OUT/metrics.jsonl and to the `--report-to` trackers (TensorBoard by default; wandb, mlflow);
- the output is a Hugging Face directory (weights, tokenizer, generation config, `distill_train.json`
  with the training config and the cache it came from) that transformers and vLLM load; LoRA
  adapters are merged on export.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

from distill.checkpoints import RunDirectory
from distill.configs import TrainConfig
from distill.distributed import all_sum, parallelize, rank_and_world
from distill.losses import IGNORE_INDEX, distill_loss
from distill.losses.cross_tokenizer import AlignedTeacher, cross_tokenizer_kd
from distill.mixing import CacheFeed
from distill.presets import resolve_preset
from distill.runs import RunRecord, read_manifest, resume_settings, run_of_model
from distill.stopping import StopRequest
from distill.tracking import StepLog
from distill.train_data import load_train_data

TRAIN_CONFIG = "distill_train.json"
TRACKED = ("loss", "ce", "kd", "merged", "lr", "grad_norm", "tokens_per_s")  # to --report-to trackers (train/NAME)


# ---------------------------------------------------------------------------------------------
# the loss module: a wrapper whose forward FSDP/DDP see, so their hooks gather every parameter


class StudentLoss(torch.nn.Module):
    """The student's decoder plus the chunked CE + KD loss over its output layer."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, vmaps: list[torch.Tensor | None]) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        # cross-tokenizer: per cache, (V_teacher,) teacher id → student id; plain attributes, not state
        self.vmaps = vmaps

    def _causal_lm(self) -> torch.nn.Module:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(self, batch: Any) -> Any:
        lm = self._causal_lm()
        # use_cache=False matters: with a KV cache transformers ignores the packing in position_ids
        # and lets records attend to each other (tests/test_data.py checks the isolation)
        hidden = lm.model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).last_hidden_state
        keep = batch.targets != IGNORE_INDEX  # only loss positions go through the output layer
        flat = lambda t: None if t is None else t[keep]  # noqa: E731
        head = lm.get_output_embeddings()
        cfg = self.cfg  # the loss settings both paths share
        shared = dict(alpha=cfg.alpha, kd=cfg.kd, tail=cfg.tail, temperature=cfg.temperature, beta=cfg.beta,
                      chunk_size=cfg.chunk_size, bias=getattr(head, "bias", None))  # fmt: skip
        if batch.aligned is not None:  # --cross-tokenizer: the teacher's rows are its own, aligned by text
            return cross_tokenizer_kd(hidden[keep], head.weight, batch.targets[keep], batch.aligned,
                                      self.vmaps[batch.source],
                                      xt_weight=cfg.xt_weight, merged=cfg.xt_merged, **shared)  # fmt: skip
        return distill_loss(
            hidden[keep],
            head.weight,
            batch.targets[keep],
            topk_ids=flat(batch.topk_ids) if self.cfg.uses_teacher else None,
            topk_logprobs=flat(batch.topk_logprobs) if self.cfg.uses_teacher else None,
            tail_logprobs=flat(batch.tail_logprobs) if self.cfg.uses_teacher else None,
            extra_ids=flat(batch.extra_ids) if self.cfg.kd == "sampled" else None,
            extra_logprobs=flat(batch.extra_logprobs) if self.cfg.kd == "sampled" else None,
            **shared,
        )


# ---------------------------------------------------------------------------------------------
# the recipe


class TrainRecipe:
    """setup → train → save → cleanup."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.rank, self.world = rank_and_world()
        self.device = torch.device(f"cuda:{torch.cuda.current_device()}") if torch.cuda.is_available() else "cpu"
        self.run = RunDirectory(Path(cfg.out))
        self.feeds: list[CacheFeed] = []  # what the run reads: one per --cache (or the --traces)

    def log(self, msg: str) -> None:
        if self.rank == 0:
            typer.echo(msg, err=True)

    # -----------------------------------------------------------------------------------------
    # setup

    def setup(self) -> None:
        cfg = self.cfg
        self.preset = resolve_preset(cfg.student, "student")
        self._seed_everything(cfg.seed)
        self._setup_data()
        self._setup_model()
        self._setup_optimizer()
        self.step = 0
        if cfg.resume:
            self._load_checkpoint()

    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _setup_data(self) -> None:
        data = load_train_data(self.cfg, self.preset, self.rank, self.world, self.log)
        self.feeds, self.tokenizer, self.top_k, self.source = data.feeds, data.tokenizer, data.top_k, data.source
        self.records, self.loader, self.total_steps = data.records, data.loader, data.total_steps

    def _build_model(self) -> torch.nn.Module:
        """The student as configured (pretrained or random, resized, LoRA-wrapped), on the CPU."""
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg, preset = self.cfg, self.preset
        torch.manual_seed(cfg.seed)  # the same initial adapters / random weights on every rank
        if (cfg.init or preset.init) == "random":
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(preset.hub_id), dtype=torch.float32)
        else:
            model = AutoModelForCausalLM.from_pretrained(preset.hub_id, revision=preset.revision, dtype=torch.float32)
        if len(self.tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(self.tokenizer))
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if cfg.lora:
            from peft import LoraConfig, get_peft_model

            lora = preset.lora
            model = get_peft_model(
                model,
                LoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=lora.target_modules,
                    task_type="CAUSAL_LM",
                ),
            )
        # from_pretrained returns eval mode, in which gradient checkpointing and dropout are off
        return model.train()

    def _setup_model(self) -> None:
        self.model = self._build_model().to(self.device)
        loss = StudentLoss(self.model, self.cfg, [f.vmap for f in self.feeds])
        self.module, self.sharding = parallelize(loss.to(self.device), self._layers(), self.world, self.cfg.sharding)
        if self.world > 1:
            self.log(f"sharding: {'FSDP2' if self.sharding == 'fsdp2' else 'DDP'} over {self.world} processes")

    def _layers(self) -> list[torch.nn.Module]:
        """The decoder layers FSDP2 shards one by one (under the LoRA wrapper when there is one)."""
        return list(self.model.get_base_model().model.layers if self.cfg.lora else self.model.model.layers)

    def _setup_optimizer(self) -> None:
        cfg, train = self.cfg, self.preset.train
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params,
            lr=cfg.lr or train.lr,
            betas=(0.9, 0.95),
            weight_decay=cfg.weight_decay if cfg.weight_decay is not None else train.weight_decay,
        )
        warmup = int((cfg.warmup_ratio if cfg.warmup_ratio is not None else train.warmup_ratio) * self.total_steps)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(self.total_steps - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)

    # -----------------------------------------------------------------------------------------
    # train

    def provenance(self) -> dict[str, Any]:
        """What the run's manifest records once set up: the resolved config, the cache, the parent model."""
        cfg, train = self.cfg, self.preset.train
        parent = run_of_model(self.preset.hub_id)
        resolved = {
            "lr": cfg.lr or train.lr,
            "epochs": cfg.epochs if cfg.epochs is not None or cfg.max_steps else train.epochs,
            "warmup_ratio": cfg.warmup_ratio if cfg.warmup_ratio is not None else train.warmup_ratio,
            "weight_decay": cfg.weight_decay if cfg.weight_decay is not None else train.weight_decay,
            "max_length": cfg.max_length or train.max_length,
            "init": cfg.init or self.preset.init,
        }
        first = self.feeds[0]  # of several caches, the first stands in the manifest's one-cache fields
        alignments = {f.name: asdict(f.alignment) for f in self.feeds if f.alignment is not None}
        if len(alignments) == 1:  # one cache: the report itself, as before several were possible
            alignments = next(iter(alignments.values()))
        return {
            "config": resolved,
            "cache_key": first.cache.key if first.cache else None,
            "cache": str(first.cache.path) if first.cache else self.source.get("traces"),
            "view": first.view,
            "caches": [f.describe() for f in self.feeds if f.cache is not None],
            "model": cfg.student,
            "parent_run": read_manifest(parent).id if parent else None,
            "summary": {"top_k": self.top_k, "total_steps": self.total_steps, "records": self.records}
            | ({"cross_tokenizer": alignments} if alignments else {}),
        }

    def train(self, record: RunRecord) -> None:
        cfg, first = self.cfg, self.rank == 0
        with StepLog(self.run, record, cfg.report_to, cfg.resume, "train", self.total_steps, self.step,
                     enabled=first, tracked=TRACKED + self._cache_metrics()) as steps, \
                StopRequest() as stop:  # fmt: skip
            start, tokens_seen = time.perf_counter(), 0
            while self.step < self.total_steps:
                row = self._step()
                tokens_seen += row["tokens"]
                row["tokens_per_s"] = rate = tokens_seen / (time.perf_counter() - start)
                merged = f" merged {row['merged']:.4f}" if "merged" in row else ""
                status = f"loss {row['loss']:.4f} ce {row['ce']:.4f} kl {row['kd']:.4f}{merged} {rate:,.0f} tok/s"
                steps.log(row, status)
                saved = self.step % cfg.save_every == 0 or self.step == self.total_steps
                if saved:
                    self._save_checkpoint()
                # Ctrl-C or SIGTERM: every rank stops after the same step, with its checkpoint
                if self.step < self.total_steps and all_sum([float(stop.signum is not None)], self.world)[0]:
                    if not saved:
                        self._save_checkpoint()
                    raise stop.stop_now(f"after step {self.step} of {self.total_steps}, its checkpoint written")

    def _step(self) -> dict[str, Any]:
        """One optimizer step over the step's micro-batches; its metrics row."""
        batches, step_tokens = self.loader.step(self.step)
        parts = self._parts()
        sums = [0.0] * len(parts)  # loss, ce, kd (, merged): sums over this rank's loss tokens
        per_cache = [[0.0, 0.0, 0.0] for _ in self.feeds]  # ce, kd sums and tokens of each cache's records
        for batch in batches:
            batch = _to(batch, self.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device != "cpu"):
                out = self.module(batch)
            n = out.num_tokens
            # mean over the whole step's tokens on all ranks; DDP/FSDP average gradients over ranks
            (out.loss * n / max(step_tokens, 1) * self.world).backward()
            sums = [s + float(getattr(out, name).detach()) * n for s, name in zip(sums, parts, strict=True)]
            if len(self.feeds) > 1:
                for j, value in enumerate((float(out.ce.detach()) * n, float(out.kd.detach()) * n, n)):
                    per_cache[batch.source][j] += value
        means = {name: v / max(step_tokens, 1) for name, v in zip(parts, all_sum(sums, self.world), strict=True)}
        if len(self.feeds) > 1:
            means |= self._cache_means(all_sum([v for c in per_cache for v in c], self.world))
        self.run.stop_if_not_finite(means["loss"], self.step + 1)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.module.parameters() if p.requires_grad], self.cfg.grad_clip
        )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {
            "step": self.step,
            **means,
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm),
            "tokens": step_tokens,
        }

    def _cache_means(self, sums: list[float]) -> dict[str, float]:
        """ce/NAME and kd/NAME, each cache's records' mean CE and KD this step (none when it had no records in
        it), and tokens/NAME, from the (ce sum, kd sum, tokens) of each cache over all ranks."""
        out: dict[str, float] = {}
        for f, (ce, kd, n) in zip(self.feeds, (sums[i : i + 3] for i in range(0, len(sums), 3)), strict=True):
            out[f"tokens/{f.name}"] = int(n)
            if n:
                out[f"ce/{f.name}"], out[f"kd/{f.name}"] = ce / n, kd / n
        return out

    def _cache_metrics(self) -> tuple[str, ...]:
        """The per-cache metric names (several caches only)."""
        names = [f.name for f in self.feeds] if len(self.feeds) > 1 else []
        return tuple(f"{part}/{name}" for name in names for part in ("ce", "kd", "tokens"))

    def _parts(self) -> tuple[str, ...]:
        """The loss and the parts of it the metrics report: the merged-span term too across tokenizers."""
        return ("loss", "ce", "kd", "merged") if self.cfg.cross_tokenizer else ("loss", "ce", "kd")

    def final_metrics(self) -> dict[str, Any]:
        """The manifest's final metrics: loss, CE and KD over the last 50 steps, steps, tokens trained on."""
        out = self.run.final_metrics(self._parts() + tuple(m for m in self._cache_metrics() if "tokens/" not in m))
        out["tokens"] = sum(r["tokens"] for r in self.run.metric_rows())
        return out

    # -----------------------------------------------------------------------------------------
    # checkpoints

    def _state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd, optim_sd = get_state_dict(self.module, self.optimizer, options=opts)
        return {
            "model": model_sd,
            "optimizer": optim_sd,
            "scheduler": self.scheduler.state_dict(),
        }

    def _save_checkpoint(self) -> None:
        state = self._state()  # collective under FSDP: every rank takes part
        if self.rank == 0:
            self.run.save_checkpoint(self.step, state)

    def _load_checkpoint(self) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        last, state = self.run.load_checkpoint()  # the RNG states are restored with it
        set_state_dict(
            self.module,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False),
        )
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.log(f"resumed from {last} (step {self.step})")

    # -----------------------------------------------------------------------------------------
    # save

    def save(self) -> Path:
        """Write the Hugging Face directory (rank 0) and return it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank != 0:
            return self.run.model
        # sharded parameters cannot take a full state dict: export from a plain copy on rank 0
        model = self.model if self.world == 1 else self._build_model()
        model.load_state_dict({k.removeprefix("model."): v for k, v in full.items() if k.startswith("model.")})
        model = model.merge_and_unload() if self.cfg.lora else model
        record = {
            "config": asdict(self.cfg),
            "source": self.source,
            "student": asdict(self.preset),
            "steps": self.step,
        }
        return self.run.export(model, self.tokenizer, TRAIN_CONFIG, record, self.preset)

    def cleanup(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _to(batch: Any, device: Any) -> Any:
    for name, value in vars(batch).items():
        if isinstance(value, torch.Tensor | AlignedTeacher):
            setattr(batch, name, value.to(device))
    return batch


def run_train(cfg: TrainConfig) -> Path:
    """Train and export; prints the output directory as the last line of stdout (rank 0)."""
    cfg = resume_settings(cfg)  # --resume: the run's own settings, or a sentence naming each one given otherwise
    trainer = TrainRecipe(cfg)
    trainer.run.check_start(cfg.resume)  # before anything loads: a refused start costs nothing
    try:
        trainer.setup()  # bad input stops here, before the run records itself: nothing is left behind
        with trainer.run.record("train", cfg, enabled=trainer.rank == 0) as record:
            record.update(**trainer.provenance())
            trainer.train(record)
            path = trainer.save()
            if trainer.rank == 0:
                record.finish(trainer.final_metrics())
    finally:
        trainer.cleanup()
    if trainer.rank == 0:
        typer.echo(str(path))
    return path
