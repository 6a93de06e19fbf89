"""The transformers engine: `generate` one request at a time, same records as vLLM.

For machines without vLLM, and as an independent cross-check of the vLLM path. Each request is
sampled with its own seed (so a resumed run repeats it); raw logprobs come from the unprocessed
logits (`output_logits=True`), i.e. before temperature and top-p, like vLLM's raw_logprobs.
Slow next to vLLM — it does not batch — but simple enough to trust.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from distill.engines import Completion, Request, SamplingSpec


class HFEngine:
    """transformers `AutoModelForCausalLM` on CPU (fp32) or the first GPU."""

    name = "hf"

    def __init__(self, model: str, dtype: str = "auto", max_model_len: int | None = None, **_: object) -> None:
        import transformers
        from transformers import AutoModelForCausalLM

        self.version = transformers.__version__
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = torch.float32 if self.device == "cpu" or dtype in ("auto", "float32") else getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(self.device).eval()
        self.max_model_len = max_model_len or self.model.config.max_position_embeddings

    @torch.no_grad()
    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Replace the model's weights with `state_dict` (same architecture and names), in place."""
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        # tied output embeddings may be absent from one side's state dict; anything else is a mismatch
        missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise ValueError(f"load_weights: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def _topk(self, logits: torch.Tensor, targets: torch.Tensor, k: int) -> tuple[np.ndarray, ...]:
        """logits (T, V) → top-k ids, top-k logprobs and the targets' logprobs, as numpy."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # (T, V)
        top = torch.topk(logprobs, k, dim=-1) if k else None
        sampled = logprobs.gather(-1, targets[:, None])[:, 0]
        ids = top.indices.int().cpu().numpy() if top else np.zeros((len(targets), 0), np.int32)
        lps = top.values.cpu().numpy() if top else np.zeros((len(targets), 0), np.float32)
        return ids, lps, sampled.cpu().numpy()

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
                output_logits=True,
                return_dict_in_generate=True,
            )
            completion = out.sequences[0, len(req.prompt_ids) :]
            logits = torch.cat(out.logits, dim=0)[: len(completion)]  # (T, V) raw, before processors
            ids, lps, sampled = self._topk(logits, completion, spec.top_k)
            stopped = len(completion) > 0 and int(completion[-1]) in spec.stop_token_ids
            yield Completion(
                key=req.key,
                prompt_ids=list(req.prompt_ids),
                completion_ids=completion.int().cpu().numpy(),
                topk_ids=ids,
                topk_logprobs=lps,
                sampled_logprobs=sampled,
                finish_reason="stop" if stopped else "length",
            )

    @torch.inference_mode()
    def score(self, requests: Iterable[Request], top_k: int) -> Iterator[Completion]:
        for req in requests:
            completion = list(req.completion_ids or [])
            full = torch.tensor([list(req.prompt_ids) + completion], device=self.device)
            p = len(req.prompt_ids)
            logits = self.model(full).logits[
                0, p - 1 : p - 1 + len(completion)
            ]  # (T, V): position t predicts token t+1
            ids, lps, sampled = self._topk(logits, full[0, p:], top_k)
            yield Completion(
                key=req.key,
                prompt_ids=list(req.prompt_ids),
                completion_ids=np.asarray(completion, np.int32),
                topk_ids=ids,
                topk_logprobs=lps,
                sampled_logprobs=sampled,
                finish_reason="given",
            )
