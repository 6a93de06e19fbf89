"""The teacher behind vLLM's OpenAI-compatible server(s): the vLLM engine's generate and score over HTTP.

`ServerEngine` is the in-process `VLLMEngine` with the model elsewhere: the same token-id prompts, seeds, raw
(pre-temperature) logprobs, padding margin and folding (`real_topk`), so a cache written through servers has
the same records, format and key as one written in-process. Choices:

- generation: `/v1/completions` with the token ids as the prompt, `logprobs` k + margin and
  `return_tokens_as_token_ids` (every logprob keyed `token_id:N`, never a string to map back), `return_token_ids`;
  every sampling parameter is sent, so a server's own defaults (a model's generation_config) never apply;
- scoring: the same endpoint over prompt + completion with `max_tokens` 1 and vLLM's `prompt_logprobs`, whose
  entries carry their rank;
- the answers are read back into the in-process engine's arrays by `server_answers` (the top-k in rank order);
- padding rows are masked when sampling with a logit bias of −100 (the API's floor; −inf in-process), which no
  trained model's logits overcome;
- before any work (`__init__`), every server is checked to be this teacher: it serves the model --teacher names
  (`/v1/models`, by served name or path), with the context this run expects, tokenizes a probe text (with a
  message in the chat template) as the local tokenizer does (`/tokenize`), allows the logprobs asked for per
  position, and gives raw logprobs (the same at two temperatures). Anything else is one sentence naming the URL
  and what differs; a server that cannot be reached is dropped (the run goes on with the others).
- the requests, their concurrency over many servers and the retries are `servers.ServerPool`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from distill.engines import Completion, Request, SamplingSpec
from distill.engines.server_answers import (
    MASK_BIAS,
    UnusableAnswer,
    generate_body,
    read_generated,
    read_prompt,
    score_body,
)
from distill.engines.servers import Server, ServerFault, ServerPool, ServerRefusal, stderr
from distill.engines.vllm_engine import MAX_MASKED_ROWS, padding_margin, real_topk, refuse_padding
from distill.errors import DistillError

# a probe text the tokenizers must agree on (the stage adds a rendered prompt): digits, markup, non-ASCII, spaces
PROBE = "<think>\nStep 1: 12 + 7 = 19, then 19 × 3 = 57.\n</think>\nSo \\boxed{57}. Ünïcödé, 你好, tabs\tand  spaces."


class ServerEngine:
    """A teacher served at one or more URLs; see the module docstring."""

    name = "vllm-server"

    def __init__(
        self,
        urls: list[str],
        teacher: Any,
        tokenizer: Any,
        *,
        top_k: int,
        max_model_len: int | None = None,
        inflight: int = 256,
        timeout_s: float = 3600.0,
        retries: int = 5,
        log: Callable[[str], None] = stderr,
    ) -> None:
        """teacher: its preset (name, hub_id, revision); top_k: the largest top-k this run asks for; max_model_len:
        the context the run expects (None: the server's own)."""
        self.pool = ServerPool(urls, inflight, timeout_s, retries, log)
        self.teacher, self.tokenizer = teacher, tokenizer
        self.tokens = len(tokenizer)
        self.rows = max(model_rows(teacher.hub_id, teacher.revision) or self.tokens, self.tokens)
        padding = self.rows - self.tokens
        self._mask = (
            {str(i): MASK_BIAS for i in range(self.tokens, self.rows)} if 0 < padding <= MAX_MASKED_ROWS else None
        )
        self.top_k = top_k
        self.max_model_len, self.version = 0, ""
        self._check(max_model_len, PROBE + _chat_probe(tokenizer))

    # -----------------------------------------------------------------------------------------
    # identity checks

    def _width(self, k: int) -> int:
        return k + padding_margin(k, self.rows - self.tokens)

    def _check(self, expected_len: int | None, probe: str) -> None:
        """Every server serves this teacher as this run needs it, or a sentence; unreachable ones are dropped."""
        contexts = {}
        for server in self.pool.servers:
            try:
                contexts[server.url] = self._check_model(server, expected_len)
                self._check_tokenizer(server, probe)
                self._check_logprobs(server)
            except ServerFault:
                continue  # dropped (logged); the others may do
            except ServerRefusal as e:
                raise DistillError(
                    f"Teacher server {server.url} refused an identity check ({e}); is it vLLM?"
                ) from None
        if not self.pool.live:
            raise DistillError(self.pool.none_left())
        live = {contexts[s.url] for s in self.pool.live}
        if len(live) > 1:
            raise DistillError(
                f"The teacher servers serve different contexts ({contexts}); start them with one --max-model-len."
            )
        self.max_model_len = live.pop()
        try:
            self.version = str(self.pool.call(self.pool.live[0], "/version").get("version"))
        except (ServerFault, ServerRefusal):
            self.version = "unknown"

    def _check_model(self, server: Server, expected_len: int | None) -> int:
        """The server serves the teacher (by name or path): remember its name there; its context."""
        names = set(served_names(self.teacher))
        models = self.pool.call(server, "/v1/models").get("data") or []
        card = next((m for m in models if m.get("id") in names or _resolved(m.get("root")) in names), None)
        if card is None:
            served = ", ".join(f"{m.get('id')} ({m.get('root')})" for m in models) or "nothing"
            raise DistillError(
                f"Teacher server {server.url} serves {served}, not the teacher {self.teacher.name} "
                f"({self.teacher.hub_id}); point --teacher-url at a server of it (`distill serve --teacher "
                f"{self.teacher.name}` serves it as {served_names(self.teacher)[0]})."
            )
        server.model = card["id"]
        context = card.get("max_model_len")
        if expected_len is not None and context != expected_len:
            raise DistillError(
                f"Teacher server {server.url} serves a context of {context} tokens, this run expects {expected_len} "
                f"(--max-model-len or the teacher's preset); restart it with --max-model-len {expected_len}, or pass "
                f"--max-model-len {context}."
            )
        return context

    def _check_tokenizer(self, server: Server, probe: str) -> None:
        """The server's tokenizer makes the local tokenizer's ids of a probe text."""
        probe_ids = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
        body = {"prompt": probe, "add_special_tokens": False}
        try:
            theirs = self.pool.call(server, "/tokenize", body).get("tokens")
        except ServerRefusal as e:
            raise DistillError(
                f"Teacher server {server.url} does not tokenize ({e}), so distill cannot check that it reads token "
                "ids as the tokenizer of --teacher writes them; serve it with its tokenizer (no --skip-tokenizer-init)."
            ) from None
        if theirs != probe_ids:
            at = next((i for i, (a, b) in enumerate(zip(theirs or [], probe_ids, strict=False)) if a != b), None)
            where = (
                f"first difference at token {at}: the server's {theirs[at]}, the local {probe_ids[at]}"
                if at is not None
                else f"{len(theirs or [])} tokens against {len(probe_ids)}"
            )
            raise DistillError(
                f"Teacher server {server.url} tokenizes a probe text differently from the tokenizer of --teacher "
                f"{self.teacher.name} ({where}); it runs another model or revision: serve the teacher --teacher names."
            )

    def _check_logprobs(self, server: Server) -> None:
        """The server allows k + margin logprobs per position (sampled and prompt), and they are raw: the same at
        two temperatures (processed logprobs would be tempered)."""
        probe_ids = self.tokenizer(PROBE, add_special_tokens=False)["input_ids"]
        width = self._width(self.top_k)
        tops = []
        for temperature in (1.0, 0.5):
            body = generate_body(probe_ids, 1, temperature, 1.0, 0, [], width, self._mask)
            try:
                answer = self.pool.call(server, "/v1/completions", {**body, "prompt_logprobs": width})
            except ServerRefusal as e:
                raise DistillError(
                    f"Teacher server {server.url} refuses {width} logprobs per position (--top-k {self.top_k}"
                    f"{' plus a margin for padding rows' if width > self.top_k else ''}): {e}; restart it with "
                    f"--max-logprobs {width} or more (`distill serve --top-k {self.top_k}` does)."
                ) from None
            try:
                _, lps, *_ = read_generated(answer, width, self.rows)
                read_prompt(answer, probe_ids, 1, width, self.rows)
            except UnusableAnswer as e:
                raise DistillError(f"Teacher server {server.url} {e}, answering a probe request.") from None
            tops.append(lps[0])
        if np.max(np.abs(tops[0] - tops[1])) > 1e-3 or np.max(tops[0]) > 0:
            raise DistillError(
                f"Teacher server {server.url} does not give raw logprobs (they change with the temperature, or are "
                "no log-probabilities); distillation needs the raw ones: restart it with --logprobs-mode raw_logprobs."
            )

    # -----------------------------------------------------------------------------------------
    # generate and score, as VLLMEngine does

    def generate(self, requests: Iterable[Request], spec: SamplingSpec) -> Iterator[Completion]:
        """Sample one completion per request, with the teacher's top-k logprobs at every position."""
        _refuse_extra_samples(spec.extra_samples)
        width = self._width(spec.top_k)
        todo = {}

        def jobs() -> Iterator[tuple[Any, dict[str, Any]]]:
            for r in requests:
                todo[r.key] = r
                max_tokens = r.max_new_tokens or spec.max_new_tokens
                body = generate_body(
                    r.prompt_ids,
                    max_tokens,
                    spec.temperature,
                    spec.top_p,
                    r.seed,
                    spec.stop_token_ids,
                    width,
                    self._mask,
                )
                yield r.key, body

        for key, answer, url in self.pool.stream("/v1/completions", jobs()):
            req = todo.pop(key)
            try:
                ids, lps, completion, sampled, reason = read_generated(answer, width, self.rows)
            except UnusableAnswer as e:
                raise DistillError(f"Teacher server {url} {e}, for completion {key}.") from None
            refuse_padding(completion, key, self.tokens, self.rows)
            yield self._completion(key, req.prompt_ids, completion, ids, lps, sampled, reason, spec.top_k)

    def score(
        self, requests: Iterable[Request], top_k: int, extra_samples: int = 0, extra_temperature: float = 1.0
    ) -> Iterator[Completion]:
        """Teacher-forced top-k logprobs over each request's given completion (prompt logprobs)."""
        _refuse_extra_samples(extra_samples)
        width = self._width(top_k)
        todo = {}

        def jobs() -> Iterator[tuple[Any, dict[str, Any]]]:
            for r in requests:
                todo[r.key] = r
                ids = [int(t) for t in r.prompt_ids] + [int(t) for t in r.completion_ids]
                yield r.key, score_body(ids, width)

        for key, answer, url in self.pool.stream("/v1/completions", jobs()):
            req = todo.pop(key)
            full = [int(t) for t in req.prompt_ids] + [int(t) for t in req.completion_ids]
            try:
                ids, lps, sampled = read_prompt(answer, full, len(full) - len(req.completion_ids), width, self.rows)
            except UnusableAnswer as e:
                raise DistillError(f"Teacher server {url} {e}, scoring completion {key}.") from None
            yield self._completion(key, req.prompt_ids, req.completion_ids, ids, lps, sampled, "given", top_k)

    def _completion(
        self,
        key: Any,
        prompt: Any,
        completion: Any,
        ids: np.ndarray,
        lps: np.ndarray,
        sampled: Any,
        reason: str,
        k: int,
    ) -> Completion:
        """A completion with the best k real tokens of each position's (T, k + margin) ids and logprobs."""
        top_ids, top_lps, folded = real_topk(ids, lps, k, key, self.tokens, self.rows)
        return Completion(
            key=key,
            prompt_ids=list(prompt),
            completion_ids=np.asarray(completion, np.int32),
            topk_ids=top_ids,
            topk_logprobs=top_lps,
            sampled_logprobs=sampled,
            finish_reason=reason,
            folded=int(folded.sum()),
            folded_positions=int(np.count_nonzero(folded)),
        )

    def report(self) -> list[str]:
        """The summary line: what each server answered, which were dropped and why, the requests sent again."""
        each = ", ".join(
            f"{s.url} answered {s.answered}" + (f" (dropped: {s.last_fault})" if s.dropped else "")
            for s in self.pool.servers
        )
        return [f"teacher servers: {each}; {len(self.pool.dropped)} dropped, {self.pool.resent} requests sent again"]


def served_names(teacher: Any) -> list[str]:
    """The names a server of `teacher` (its preset) may serve it under: a model directory by its absolute path (a
    directory name alone could be anyone's `model/`), a hub model by its hub id or the preset's name."""
    path = Path(teacher.hub_id).expanduser()
    if path.is_dir():
        return [str(path.resolve())]
    return list(dict.fromkeys([str(teacher.hub_id), teacher.name]))


def _refuse_extra_samples(extra_samples: int) -> None:
    if extra_samples:  # the configs refuse it first; the Python API gets the same sentence
        raise DistillError("--extra-samples needs the teacher's full distribution, which a vLLM server does not give.")


def _chat_probe(tokenizer: Any) -> str:
    """A short message in the tokenizer's chat template (its special tokens), or nothing where it has none."""
    try:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is 2 + 2?"}], tokenize=False, add_generation_prompt=True
        )
    except Exception:  # no chat template: the probe text alone
        return ""


def _resolved(root: Any) -> str | None:
    """A served model's path, absolute where it exists here (a server on this machine started with a relative one)."""
    return str(Path(root).resolve()) if isinstance(root, str) and Path(root).exists() else root


def model_rows(model: str, revision: str | None = None) -> int | None:
    """The model's output rows (its config's vocab_size), or None where its config cannot be read here."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model, revision=revision)
    except Exception:  # no config here (a hub model whose config was never downloaded): no padding assumed
        return None
    return getattr(config.get_text_config(), "vocab_size", None)
