"""`distill filter`: keep only verified-correct traces, as a view of the cache.

The filter never copies or edits shards: it decodes every completion with the teacher's tokenizer
(saved in the cache), runs the named verifiers (distill.verify — the same ones GRPO rewards and
eval scores with) against the gold answers stored in record metadata, and writes
`views/<name>.json`: the kept record indices, every record's verdicts (`{verifier: [status,
reason]}`, status "passed", "failed" or "unknown"), and a report (pass rates overall and per
verifier, unknowns counted apart from failures, prompts with at least one correct sample, reason
histogram, truncation rate), also printed. `distill train --view NAME` then reads through it.

A record is kept only when every verifier passed it. One a verifier could not check (unknown: no
gold answer, a timeout, a sandbox failure) is not kept, but the report counts it as unknown, not
as failed, so that a broken gold column or sandbox shows as such rather than as a weak teacher.

--keep all          every record that passes every verifier
--keep first        per prompt, the passing sample with the lowest sample index
--keep best-of-n    per prompt, the passing sample the teacher was most confident in
                    (highest mean logprob of its own tokens)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np
import typer

from distill.cache import TeacherCache, write_view
from distill.configs import FilterConfig
from distill.errors import DistillError
from distill.models.tokenizer import cache_tokenizer, decode_completion
from distill.verify import FAILED, PASSED, UNKNOWN, Verdict, VerdictStatus, reference_for, verify_batch


def completion_texts(cache: TeacherCache) -> list[str]:
    """Every record's completion as text, re-opened with the think block the prompt primed."""
    tok = cache_tokenizer(cache)
    return [decode_completion(tok, rec.completion_ids, rec.prompt_ids) for rec in cache]


def references(name: str, metas: list[dict[str, Any]]) -> list[Any]:
    """What verifier `name` checks each record against, from the record metadata (a record without a
    question, from an older cache, is judged as latin by lang)."""
    return [reference_for(name, m.get("answer"), m.get("question"), m.get("finish_reason")) for m in metas]


def record_status(verdicts: list[Verdict]) -> VerdictStatus:
    """A record's status under several verifiers: failed if any failed, else unknown if any could not
    check it, else passed."""
    statuses = {v.status for v in verdicts}
    return FAILED if FAILED in statuses else UNKNOWN if UNKNOWN in statuses else PASSED


def select(metas: list[dict[str, Any]], passed: list[bool], keep: str, confidence: np.ndarray) -> list[int]:
    """Indices of the records to keep under policy `keep`."""
    if keep == "all":
        return [i for i, ok in enumerate(passed) if ok]
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for i, ok in enumerate(passed):
        if ok:
            by_prompt[str(metas[i]["prompt_id"])].append(i)
    if keep == "first":
        return sorted(min(ix, key=lambda i: metas[i]["sample_index"]) for ix in by_prompt.values())
    return sorted(max(ix, key=lambda i: confidence[i]) for ix in by_prompt.values())


def run_filter(cfg: FilterConfig) -> dict[str, Any]:
    """Verify every record, write the view, print and return the report."""
    names = [v.strip() for v in cfg.verifiers.split(",") if v.strip()]
    cache = TeacherCache(cfg.cache)
    metas = cache.metas()
    if "math" in names and all(m.get("answer") is None for m in metas):
        raise DistillError(f"Cache {cache.path} stores no gold answers; the math verifier needs them (--answer-field).")
    texts = completion_texts(cache)
    # workers=None lets verify_batch pick its default, capped at MAX_DEFAULT_WORKERS (sympy workers are heavy).
    verdicts = {n: verify_batch(n, texts, references(n, metas), workers=cfg.workers, progress=True) for n in names}
    statuses = [record_status([verdicts[n][i] for n in names]) for i in range(len(texts))]
    passed = [status == PASSED for status in statuses]
    confidence = np.array([np.nanmean(r.sampled_logprobs) if r.num_tokens else -np.inf for r in cache])
    kept = select(metas, passed, cfg.keep, confidence)
    report = _report(names, metas, verdicts, statuses, kept)
    name = cfg.name or "+".join(names)
    per_record = {str(i): {n: [verdicts[n][i].status, verdicts[n][i].reason] for n in names} for i in range(len(texts))}
    path = write_view(
        cache, name, kept, extra={"verifiers": names, "keep": cfg.keep, "report": report, "verdicts": per_record}
    )
    for line in _report_lines(report):
        typer.echo(line)
    typer.echo(f"view {name!r}: {len(kept)} of {len(texts)} records kept → {path}")
    return report


def _report(
    names: list[str],
    metas: list[dict],
    verdicts: dict[str, list[Verdict]],
    statuses: list[VerdictStatus],
    kept: list[int],
) -> dict:
    """The filter's report: records by status, per-verifier pass and unknown rates, prompts, reasons."""
    n = len(statuses)

    def rate(count: int) -> float:
        return count / n if n else 0.0

    prompts = {str(m["prompt_id"]) for m in metas}
    solved = {str(metas[i]["prompt_id"]) for i, status in enumerate(statuses) if status == PASSED}
    reasons = Counter(
        f"{v}: {x.reason}" if x.status == FAILED else f"{v} (unknown): {x.reason}"
        for v in names
        for x in verdicts[v]
        if not x.passed
    )
    counts = Counter(statuses)
    return {
        "records": n,
        "passed": counts[PASSED],
        "pass_rate": rate(counts[PASSED]),
        "failed": counts[FAILED],
        "unknown": counts[UNKNOWN],  # no verifier failed the record, but at least one could not check it
        "unknown_rate": rate(counts[UNKNOWN]),
        "per_verifier": {v: rate(sum(x.passed for x in verdicts[v])) for v in names},
        "per_verifier_unknown": {v: rate(sum(x.unknown for x in verdicts[v])) for v in names},
        "prompts": len(prompts),
        "prompts_with_a_correct_sample": len(solved),
        "truncation_rate": rate(sum(m.get("finish_reason") == "length" for m in metas)),
        "kept": len(kept),
        "reasons": dict(reasons.most_common(20)),
    }


def _report_lines(r: dict) -> list[str]:
    per_verifier = (f"{k} {v:.1%} (unknown {r['per_verifier_unknown'][k]:.1%})" for k, v in r["per_verifier"].items())
    lines = [
        f"records {r['records']}, passed {r['passed']} ({r['pass_rate']:.1%}), failed {r['failed']}, "
        f"unknown {r['unknown']} ({r['unknown_rate']:.1%}, could not be checked), kept {r['kept']}",
        "per verifier passed: " + ", ".join(per_verifier),
        f"prompts with a correct sample: {r['prompts_with_a_correct_sample']} of {r['prompts']}",
        f"truncated (finish reason 'length'): {r['truncation_rate']:.1%}",
    ]
    lines += [f"  {count:>6}  {reason}" for reason, count in r["reasons"].items()]
    return lines
