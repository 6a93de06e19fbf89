"""The transformers engine: `generate` one request at a time, same records as vLLM.

For machines without vLLM, and as an independent cross-check of the vLLM path. Each request is
sampled with its own seed (so a resumed run repeats it); raw logprobs come from the unprocessed
logits (`output_logits=True`), i.e. before temperature and top-p, like vLLM's raw_logprobs.
Slow next to vLLM — it does not batch — but simple enough to trust. It sees the full logits, so it
records exact tail masses and can draw extra tokens from the teacher's distribution for sampled KD
(`--extra-samples`), which vLLM cannot.

Padded vocabularies (more model rows than the tokenizer has tokens, as in Qwen2.5): given the tokenizer's
size (`tokens`), sampling never picks a padding row (their logits are −inf for the sampler only; the recorded
logprobs are the raw ones over every row), the top-k is taken over the real rows, and the tail is the exact
mass of everything else, padding included.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from distill.engines import Completion, Request, SamplingSpec


class HFEngine:
    """transformers `AutoModelForCausalLM` on CPU (fp32) or the first GPU."""

    name = "hf"

    def __init__(
        self, model: str, dtype: str = "auto", max_model_len: int | None = None, tokens: int | None = None, **_: object
    ) -> None:
        """`tokens`: the tokenizer's size; model rows at or above it are padding (None: every row is a token)."""
        import transformers
        from transformers import AutoModelForCausalLM

        self.version = transformers.__version__
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = torch.float32 if self.device == "cpu" or dtype in ("auto", "float32") else getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(self.device).eval()
        self.max_model_len = max_model_len or self.model.config.max_position_embeddings
        self._set_rows(tokens)

    @classmethod
    def from_model(
        cls, model: torch.nn.Module, max_model_len: int | None = None, tokens: int | None = None
    ) -> HFEngine:
        """An engine over a model already loaded (e.g. a trainer's teacher), without a second copy of it."""
        engine = cls.__new__(cls)
        import transformers

        engine.version = transformers.__version__
        engine.model = model
        engine.device = next(model.parameters()).device
        engine.max_model_len = max_model_len or model.config.max_position_embeddings
        engine._set_rows(tokens)
        return engine

    def _set_rows(self, tokens: int | None) -> None:
        self.rows = self.model.get_output_embeddings().weight.shape[0]
        self.tokens = min(tokens or self.rows, self.rows)

    @torch.no_grad()
    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Replace the model's weights with `state_dict` (same architecture and names), in place."""
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        # tied output embeddings may be absent from one side's state dict; anything else is a mismatch
        missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise ValueError(f"load_weights: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def _teacher_view(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        k: int,
        extra_samples: int = 0,
        extra_temperature: float = 1.0,
        seed: int = 0,
    ) -> dict[str, np.ndarray | int | None]:
        """What the cache records of each position, from the full raw logits (T, V), as numpy.

        topk_ids / topk_logprobs (T, k): the best k real tokens (ids below `self.tokens`); sampled_logprobs
        (T,) of the targets; tail_logprobs (T,): the exact log mass outside the top-k, padding rows included, a
        logsumexp over the complement (no 1 − Σ cancellation, so a tail of 1e-9 next to a top-1 of 1 − 1e-9
        survives); folded / folded_positions: padding rows within the top k of all rows, and the positions that
        have one; extra_ids / extra_logprobs (T, M): real tokens drawn from
        softmax(logits / extra_temperature) over the real rows, with their logprobs there, seeded by `seed`.
        """
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # (T, V): padding rows keep their mass
        t, real = len(targets), self.tokens
        out: dict[str, np.ndarray | int | None] = {
            "sampled_logprobs": logprobs.gather(-1, targets[:, None])[:, 0].cpu().numpy(),
            "topk_ids": np.zeros((t, 0), np.int32),
            "topk_logprobs": np.zeros((t, 0), np.float32),
            "tail_logprobs": None,
            "extra_ids": None,
            "extra_logprobs": None,
        }
        if k:
            top = torch.topk(logprobs[:, :real], k, dim=-1)
            outside = logprobs.scatter(-1, top.indices, -math.inf)  # (T, V) copy: the complement of the top-k
            out["topk_ids"] = top.indices.int().cpu().numpy()
            out["topk_logprobs"] = top.values.cpu().numpy()
            out["tail_logprobs"] = torch.logsumexp(outside, dim=-1).cpu().numpy()
            # (T,) padding rows in the top-k of every row: the entries the best k real tokens replaced
            ranked = top if real == logprobs.shape[-1] else torch.topk(logprobs, k, dim=-1)
            folded = (ranked.indices >= real).sum(-1)
            out["folded"] = int(folded.sum())
            out["folded_positions"] = int(torch.count_nonzero(folded))
        if extra_samples:
            # over the real rows: a padding row is no token a student could be trained towards
            tempered = torch.log_softmax(logits[:, :real].float() / extra_temperature, dim=-1)  # (T, tokens)
            # a stream of its own: the request seed also drives generation, whose draws these must not repeat
            gen = torch.Generator(device=logits.device).manual_seed((seed * 7919 + 1) % 2**63)
            draws = torch.multinomial(tempered.exp(), extra_samples, replacement=True, generator=gen)  # (T, M)
            out["extra_ids"] = draws.int().cpu().numpy()
            out["extra_logprobs"] = tempered.gather(-1, draws).cpu().numpy()
        return out

    @torch.inference_mode()
    def generate(self, requests: Iterable[Request], spec: SamplingSpec) -> Iterator[Completion]:
        for req in requests:
            torch.manual_seed(req.seed)
            inputs = torch.tensor([req.prompt_ids], device=self.device)
            out = self.model.generate(
                inputs,
                attention_mask=torch.ones_like(inputs),
                do_sample=spec.temperature > 0,
                temperature=spec.temperature if spec.temperature > 0 else None,
                top_p=spec.top_p if spec.temperature > 0 else None,
                top_k=0,  # transformers' default top-50 would change the sampling distribution
                max_new_tokens=req.max_new_tokens or spec.max_new_tokens,
                eos_token_id=spec.stop_token_ids or None,
                pad_token_id=(spec.stop_token_ids or [0])[0],
                suppress_tokens=list(range(self.tokens, self.rows)) or None,  # padding rows: not tokens
                output_logits=True,
                return_dict_in_generate=True,
            )
            completion = out.sequences[0, len(req.prompt_ids) :]
            logits = torch.cat(out.logits, dim=0)[: len(completion)]  # (T, V) raw, before processors
            view = self._teacher_view(
                logits, completion, spec.top_k, spec.extra_samples, spec.extra_temperature, req.seed
            )
            stopped = len(completion) > 0 and int(completion[-1]) in spec.stop_token_ids
            yield Completion(
                key=req.key,
                prompt_ids=list(req.prompt_ids),
                completion_ids=completion.int().cpu().numpy(),
                finish_reason="stop" if stopped else "length",
                **view,
            )

    @torch.inference_mode()
    def score(
        self, requests: Iterable[Request], top_k: int, extra_samples: int = 0, extra_temperature: float = 1.0
    ) -> Iterator[Completion]:
        for req in requests:
            completion = list(req.completion_ids or [])
            full = torch.tensor([list(req.prompt_ids) + completion], device=self.device)
            p = len(req.prompt_ids)
            logits = self.model(full).logits[0, p - 1 : p - 1 + len(completion)]  # (T, V): position t predicts t+1
            view = self._teacher_view(logits, full[0, p:], top_k, extra_samples, extra_temperature, req.seed)
            yield Completion(
                key=req.key,
                prompt_ids=list(req.prompt_ids),
                completion_ids=np.asarray(completion, np.int32),
                finish_reason="given",
                **view,
            )
