"""The teacher that grades a student's samples on-policy (`distill onpolicy`), loaded once beside the trainer.

`TeacherGrader` holds the teacher — a transformers model in the trainer's numerics (`hf`, the default: a student
identical to it sees exactly 0), a vLLM engine's prompt-logprobs path (`vllm`), or the same path of vLLM servers
elsewhere (`servers`: --teacher-url, checked to be this teacher before step 1) — and does what the recipe asks
of it: refuse a student whose ids or template it cannot read (`check`), render each prompt in its own chat
template (`render`), score every completion teacher-forced after that rendering (`score`: the sampled tokens'
logprobs at the run's temperature, top-k and tail for the scores cache), check its own scoring path on a few
greedy completions (`self_check`), and give its final hidden states at the student's positions for the exact
full-vocabulary loss (`hidden`); across tokenizers, cut a sample back to whole characters first (`whole_characters`).

Across tokenizers (`cross_tokenizer`) a completion's text (its end token aside) is re-tokenised by the teacher,
which ends with its own eos where the student ended; the two are aligned by byte spans and each student token
gets its share of the teacher's log-probability of its span (`span_logprobs`). With one tokenizer on both sides
the ids are the teacher's already: nothing is re-tokenised.

The pieces it is built from (guards, `teacher_view`, `TeacherScores`) live in `distill.teacher_scores`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import numpy as np
import torch

from distill.alignment import Alignment, alignment_shares, span_logprobs
from distill.engines import Completion, Request, SamplingSpec, open_engine
from distill.errors import DistillError
from distill.fingerprint import tokenizer_fingerprint
from distill.models.tokenizer import decode_completion, load_tokenizer, stop_token_ids
from distill.retokenize import align_text, whole_characters
from distill.rollouts import Rollout, completion_hidden, load_policy, micro_batches, render_prompts
from distill.teacher_scores import TeacherScores, stack_scores, teacher_view, template_problems, tokenizer_problems

SELF_CHECK_GAP = 0.05  # nats/token between generation-time and scored logprobs past which scoring looks broken


class TeacherGrader:
    """One teacher, the way `distill onpolicy` reads it; see the module docstring."""

    def __init__(
        self,
        teacher: Any,
        student_tokenizer: Any,
        student_stops: list[int],
        *,
        backend: str,
        top_k: int,
        temperature: float,
        micro_batch: int,
        cross_tokenizer: bool,
        device: torch.device,
        seed: int = 0,
        gpu_memory_utilization: float = 0.3,
        servers: Any = None,
        log: Callable[[str], None] = print,
    ) -> None:
        """teacher: its preset; backend: hf or vllm; top_k: logprobs kept per position for the scores cache;
        temperature: the run's τ (the advantage's sampled-token logprobs are taken at it); servers: the run's
        `TeacherServers` options when the teacher is served (--teacher-url), else None."""
        self.preset, self.top_k, self.temperature, self.servers = teacher, top_k, temperature, servers
        self.backend = "vllm server" if servers is not None else backend
        self.student_tokenizer, self.student_stops = student_tokenizer, student_stops
        self.micro_batch, self.cross_tokenizer, self.device, self.log = micro_batch, cross_tokenizer, device, log
        self.seed, self.gpu_memory_utilization = seed, gpu_memory_utilization
        self.tokenizer = load_tokenizer(teacher.hub_id, teacher.revision)
        # --cross-tokenizer with one tokenizer: the ids are the teacher's already (never re-encoded)
        self.same_tokenizer = tokenizer_fingerprint(student_tokenizer) == tokenizer_fingerprint(self.tokenizer)
        self.model: torch.nn.Module | None = None
        self.engine: Any = None
        self.xt_shares: dict[str, float] = {}

    # -----------------------------------------------------------------------------------------
    # set-up

    def check(self, student: Any) -> None:
        """Refuse, with one sentence naming every problem, a student whose samples this teacher would misread."""
        xt = self.cross_tokenizer  # the text is re-tokenised and the teacher ends on its own eos: ids may differ
        problems = (
            [] if xt else tokenizer_problems(self.student_tokenizer, self.tokenizer, student.name, self.preset.name)
        )
        problems += template_problems(
            student, self.preset, [] if xt else self.student_stops, stop_token_ids(self.tokenizer, self.preset.hub_id)
        )
        if problems:
            raise DistillError("The teacher cannot score this student's samples: " + "; ".join(problems) + ".")

    def render(self, prompts: list[dict[str, Any]]) -> None:
        """Give every prompt `teacher_ids`: the same question in the teacher's own chat template."""
        rendered = [dict(q) for q in prompts]
        render_prompts(rendered, self.tokenizer, self.preset.prompt)
        for q, t in zip(prompts, rendered, strict=True):
            q["teacher_ids"] = t["ids"]

    def load(self) -> None:
        """Load the teacher: frozen weights for hf — on a GPU in bf16 (its matmuls run in bf16 under autocast
        anyway), on the CPU in fp32 as the student, so a teacher identical to it agrees bit for bit — a second
        vLLM engine in this process, or the servers' engine (checked to serve this teacher)."""
        if self.servers is not None:
            from distill.engines.server_engine import ServerEngine

            s = self.servers
            self.engine = ServerEngine(
                s.teacher_url,
                self.preset,
                self.tokenizer,
                top_k=self.top_k,
                max_model_len=self.preset.engine.max_model_len,
                inflight=s.teacher_inflight,
                timeout_s=s.teacher_timeout_s,
                retries=s.teacher_retries,
                log=self.log,
            )
        elif self.backend == "hf":
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
            self.model = load_policy(self.preset, self.device, dtype).eval().requires_grad_(False)
        else:
            self.engine = open_engine(
                "vllm",
                self.preset.hub_id,
                dtype=self.preset.engine.dtype,
                max_model_len=self.preset.engine.max_model_len,
                max_logprobs=self.top_k,
                seed=self.seed,
                gpu_memory_utilization=self.gpu_memory_utilization,
                tokens=len(self.tokenizer),
            )

    # -----------------------------------------------------------------------------------------
    # grading

    def score(
        self, completions: list[Completion], prompts: list[dict[str, Any]], students: bool = True
    ) -> TeacherScores:
        """The teacher's view of every completion, teacher-forced after its rendering of the prompt (`render`);
        across tokenizers the student's completions (`students`; False: ids of the teacher's own) are re-tokenised
        and the scores carried onto the student's tokens, with the alignment's shares in `xt_shares`."""
        as_teacher = [replace(c, prompt_ids=q["teacher_ids"]) for c, q in zip(completions, prompts, strict=True)]
        alignments = None
        if self.cross_tokenizer and students:
            as_teacher, alignments = self._as_teacher_text(as_teacher)
        rows, tempered = self._rows(as_teacher)
        if alignments is not None:
            tempered = [
                span_logprobs(a, torch.from_numpy(np.asarray(lp, np.float32))).numpy()
                for a, lp in zip(alignments, tempered, strict=True)
            ]
            self.xt_shares = alignment_shares(alignments)
        return stack_scores(rows, tempered)

    def whole_characters(self, rollout: Rollout) -> tuple[Rollout, int]:
        """Across tokenizers, each completion cut back to its last whole UTF-8 character, and how many were cut (the
        rollout as it is otherwise). A completion cut by --max-new-tokens inside a character, or holding a stray byte,
        has no text the teacher could re-tokenise from there on: those tokens (and its stop token) are left out of
        the step as if never sampled, and the completion counts as truncated."""
        if not self.cross_tokenizer or self.same_tokenizer:
            return rollout, 0
        completions, texts, cut = [], [], 0
        for c, text in zip(rollout.completions, rollout.texts, strict=True):
            ids = [int(t) for t in c.completion_ids]
            body = ids[:-1] if ids and ids[-1] in self.student_stops else ids
            whole = whole_characters(self.student_tokenizer, body)
            if whole < len(body):
                arrays = {f.name: getattr(c, f.name) for f in fields(c)}
                per_token = {
                    k: v[:whole] for k, v in arrays.items() if isinstance(v, np.ndarray) and len(v) == len(ids)
                }
                c, cut = replace(c, **per_token, finish_reason="length"), cut + 1
                text = decode_completion(self.student_tokenizer, c.completion_ids, c.prompt_ids)
            completions.append(c)
            texts.append(text)
        return replace(rollout, completions=completions, texts=texts), cut

    def _as_teacher_text(self, completions: list[Completion]) -> tuple[list[Completion], list[Alignment]]:
        """Each student completion re-tokenised by the teacher (ending with its eos where the student ended), and
        the alignment of the two."""
        student_tok, teacher_tok = self.student_tokenizer, self.tokenizer
        out, alignments = [], []
        for c in completions:
            ids = [int(t) for t in c.completion_ids]
            if self.same_tokenizer:  # every token its own group (no text: broken characters align too)
                alignments.append(Alignment.identity(len(ids)))
                out.append(c)
                continue
            ends = bool(ids) and ids[-1] in self.student_stops
            body = ids[:-1] if ends else ids
            text = student_tok.decode(body, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            teacher = teacher_tok(text, add_special_tokens=False)["input_ids"]
            alignments.append(align_text(text, teacher_tok, teacher, student_tok, body, ends, f"completion {c.key}"))
            out.append(replace(c, completion_ids=np.asarray(teacher + [teacher_tok.eos_token_id] * ends, np.int32)))
        return out, alignments

    def _rows(self, as_teacher: list[Completion]) -> tuple[list[Completion], list[np.ndarray]]:
        """The teacher's scored completions, and each one's sampled-token logprobs at the run's temperature."""
        if self.engine is not None:
            requests = [
                Request(c.key, c.prompt_ids, completion_ids=[int(t) for t in c.completion_ids]) for c in as_teacher
            ]
            scored = {s.key: s for s in self.engine.score(iter(requests), self.top_k)}
            rows = [scored[c.key] for c in as_teacher]
            for r, c in zip(rows, as_teacher, strict=True):
                r.finish_reason = c.finish_reason
            return rows, [r.sampled_logprobs for r in rows]  # τ = 1 (a vLLM teacher, served or not, takes no other)
        pad = self.tokenizer.pad_token_id or 0
        rows: list[Completion] = []
        tempered: list[np.ndarray] = []
        with torch.no_grad():
            for mb in micro_batches(as_teacher, list(range(len(as_teacher))), self.micro_batch, pad):
                views, at_t = teacher_view(
                    self.model, mb, self.top_k, self.temperature, self.device, len(self.tokenizer)
                )
                for j, (i, view) in enumerate(zip(mb.rows, views, strict=True)):
                    c = as_teacher[i]
                    rows.append(
                        Completion(c.key, c.prompt_ids, c.completion_ids, finish_reason=c.finish_reason, **view)
                    )
                    tempered.append(at_t[j, : len(c.completion_ids)].numpy())
        return rows, tempered

    def hidden(self, batches: list[Any], scores: TeacherScores) -> list[torch.Tensor]:
        """(b, T, H_t) per student micro-batch: the teacher's final hidden states at the positions predicting the
        student's tokens, over its own rendering of each prompt (the rows `score` graded), for --loss full."""
        pad = self.tokenizer.pad_token_id or 0
        with torch.no_grad():
            return [
                completion_hidden(self.model, micro_batches(scores.rows, mb.rows, len(mb.rows), pad)[0], self.device)
                for mb in batches
            ]

    @property
    def output_weight(self) -> torch.Tensor:
        """(V_t, H_t) the in-process teacher's output layer (hf)."""
        return self.model.get_output_embeddings().weight

    def self_check(self, prompts: list[dict[str, Any]], max_new_tokens: int) -> dict[str, float]:
        """The teacher's greedy completions of `prompts` (rendered), scored by the scoring path: its mean logprob
        (high: its own argmax choices) and the gap to the logprobs it generated them with (≈ 0 when scoring is
        aligned), logged, with a warning when either looks wrong."""
        spec = SamplingSpec(
            0.0, 1.0, max_new_tokens, top_k=0, stop_token_ids=stop_token_ids(self.tokenizer, self.preset.hub_id)
        )
        requests = [
            Request((str(i), 0), q["teacher_ids"], max_new_tokens=max_new_tokens) for i, q in enumerate(prompts)
        ]
        if self.engine is not None:
            written = list(self.engine.generate(iter(requests), spec))
        else:
            from distill.engines.hf_engine import HFEngine

            engine = HFEngine.from_model(self.model, tokens=len(self.tokenizer))
            written = list(engine.generate(iter(requests), spec))
        written = [c for c in written if len(c.completion_ids)]
        if not written:
            return {}
        by_key = {str(i): q for i, q in enumerate(prompts)}
        scored = self.score(written, [by_key[c.key[0]] for c in written], students=False)
        gen = torch.cat([torch.as_tensor(c.sampled_logprobs, dtype=torch.float32) for c in written])
        got = torch.cat([torch.as_tensor(c.sampled_logprobs, dtype=torch.float32) for c in scored.rows])
        check = {
            "completions": len(written),
            "tokens": int(gen.numel()),
            "mean_logprob": float(got.mean()),
            "max_gap": float((got - gen).abs().max()),
        }
        self.log(
            f"teacher self-check: {check['completions']} greedy completions of its own ({check['tokens']} tokens) "
            f"score {check['mean_logprob']:.4f} nats/token; scoring vs generation differ by ≤ {check['max_gap']:.2g}"
        )
        if check["max_gap"] > SELF_CHECK_GAP or check["mean_logprob"] < -1.0:
            self.log(
                f"warning: the teacher's scores of its own greedy text look wrong (mean {check['mean_logprob']:.3f} "
                f"nats/token, gap {check['max_gap']:.3f}); check --teacher, its template and --teacher-backend "
                "before trusting this run"
            )
        return check
