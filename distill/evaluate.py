"""`distill eval`: sample N completions per problem and score them with the filter's verifiers.

The protocol users compare against (DeepSeek-R1 report): sampling at temperature 0.6, top-p 0.95,
N samples per problem — greedy decoding is not the default, R1-style models repeat under it.
Reported:
- pass@1: mean correctness over the N samples, averaged over problems;
- cons@N: majority vote of the extracted answers (ties: the answer seen first), then checked;
- pass@k: the unbiased estimator 1 − C(n−c, k) / C(n, k) for k = 1, 2, 4, ... ≤ N;
- unknown: how many samples the verifier could not check (timeout, sandbox failure, no gold
  answer), and their share. The metrics above count an unknown sample as not passed — a score
  must not rise because a check broke — so a benchmark with unknowns reports a lower bound, and
  says how loose it is;
- per domain, when the prompts have one (distill.prompts: a `domain` column, --domain-field, a task's own):
  problems, pass@1 and cons@N of each domain's problems (`domains` in the summary; "(none)" gathers the
  problems without a domain in a set where others have one).
Per-problem results (every sample's text, extracted answer, verdict status and reason) go to `--out` as JSON.
The eval records itself as a run (its manifest beside --out, NAME.run.json) and, when the model came from a
train/grpo run, attaches its summary to that run's manifest under the benchmark's name (`distill runs`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import typer

from distill.configs import EvalConfig
from distill.engines import Request, SamplingSpec, open_engine, request_seed
from distill.errors import DistillError
from distill.models.tokenizer import decode_completion, load_tokenizer, stop_token_ids
from distill.paths import distill_home
from distill.presets import resolve_preset
from distill.prompts import load_prompts, render_prompt
from distill.runs import MANIFEST, RunRecord, attach_eval, read_manifest, run_of_model
from distill.runs.manifest import new_run_id
from distill.verify import Verdict, final_answer, normalise_answer, reference_for, verify_batch


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority(answers: list[str | None]) -> str | None:
    """The most common non-empty answer; ties go to the one seen first."""
    counts = Counter(a for a in answers if a)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a and counts[a] == best)


def score_problems(problems: list[dict[str, Any]], texts: list[list[str]], verdicts: list[list[Verdict]]) -> dict:
    """Per-problem results and the summary, from each problem's sample texts and verdicts.

    An unknown verdict counts as not passed in pass@1, cons@N and pass@k, and is counted apart
    (`unknown` per problem and in the summary, with `unknown_rate` the share of all samples).
    """
    rows, n = [], len(texts[0]) if texts else 0
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= n]
    for q, samples, vs in zip(problems, texts, verdicts, strict=True):
        answers = [v.answer if v.answer is not None else final_answer(t) for t, v in zip(samples, vs, strict=True)]
        normalised = [normalise_answer(a) for a in answers]
        voted = majority(normalised)
        cons = any(v.passed for a, v in zip(normalised, vs, strict=True) if voted is not None and a == voted)
        correct = sum(v.passed for v in vs)
        rows.append(
            {
                "id": q["id"],
                **({"domain": q["domain"]} if q.get("domain") is not None else {}),
                "answer": q.get("answer"),
                "correct": correct,
                "unknown": sum(v.unknown for v in vs),
                "pass@1": correct / n,
                "majority_answer": voted,
                "cons": cons,
                "samples": [
                    {"text": t, "extracted": a, "status": v.status, "passed": v.passed, "reason": v.reason}
                    for t, a, v in zip(samples, answers, vs, strict=True)
                ],
            }
        )
    unknown = sum(r["unknown"] for r in rows)
    summary = {
        "problems": len(rows),
        "samples": n,
        "pass@1": sum(r["pass@1"] for r in rows) / max(len(rows), 1),
        f"cons@{n}": sum(r["cons"] for r in rows) / max(len(rows), 1),
        "unknown": unknown,
        "unknown_rate": unknown / max(len(rows) * n, 1),
    }
    for k in ks:
        summary[f"pass@{k}"] = sum(pass_at_k(n, r["correct"], k) for r in rows) / max(len(rows), 1)
    if any("domain" in r for r in rows):
        summary["domains"] = per_domain(rows, n)
    return {"summary": summary, "problems": rows}


NO_DOMAIN = "(none)"


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values)


def per_domain(rows: list[dict[str, Any]], n: int) -> dict[str, dict[str, Any]]:
    """Domain → {problems, pass@1, cons@N} over the scored problem rows of that domain, domains sorted by name."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r.get("domain", NO_DOMAIN), []).append(r)
    return {
        d: {"problems": len(g), "pass@1": _mean(r["pass@1"] for r in g), f"cons@{n}": _mean(r["cons"] for r in g)}
        for d, g in sorted(groups.items())
    }


def benchmark_name(cfg: EvalConfig) -> str:
    """How a run's eval results are keyed: the prompt source as typed (a file by its name), and the limit."""
    name = Path(cfg.prompts).name if Path(cfg.prompts).is_file() else cfg.prompts
    return name + (f"[:{cfg.limit}]" if cfg.limit else "")


def manifest_path(cfg: EvalConfig) -> Path:
    """Where an eval's own manifest goes: beside --out (NAME.run.json), else under $DISTILL_HOME/evals."""
    if cfg.out:
        return Path(cfg.out).with_suffix("." + MANIFEST)
    return distill_home() / "evals" / f"{new_run_id()}.{MANIFEST}"


def run_eval(cfg: EvalConfig) -> dict:
    """Generate, verify, print the summary table; write per-problem JSON to `cfg.out`; record the run and attach
    the summary to the run whose model was evaluated."""
    preset = resolve_preset(cfg.model, "teacher")
    prompts, where = load_prompts(
        cfg.prompts, cfg.prompt_field, cfg.answer_field, cfg.mapping, cfg.limit, cfg.domain_field
    )
    tokenizer = load_tokenizer(preset.hub_id, preset.revision)
    parent = run_of_model(preset.hub_id)
    name = Path(cfg.out).stem if cfg.out else f"eval-{Path(cfg.model).name}"
    # bad input stopped above, before the run records itself: nothing is left behind
    with RunRecord("eval", manifest_path(cfg), cfg, name=name) as record:
        record.update(model=preset.hub_id, parent_run=read_manifest(parent).id if parent else None)
        result = _evaluate(cfg, preset, prompts, where, tokenizer)
        benchmark = benchmark_name(cfg)
        s = result["summary"]
        results = {k: v for k, v in s.items() if k.startswith(("pass@", "cons@")) or k in SUMMARY_KEYS}
        results.update({"domains": s["domains"]} if "domains" in s else {})
        results.update(eval_run=record.manifest.id, temperature=cfg.temperature, top_p=cfg.top_p)
        record.finish({benchmark: results}, eval={benchmark: results})
        if attach_eval(preset.hub_id, benchmark, results):
            typer.echo(f"results attached to run {record.manifest.parent_run} as {benchmark}", err=True)
    return result


SUMMARY_KEYS = ("problems", "samples", "unknown", "unknown_rate")


def _evaluate(cfg: EvalConfig, preset: Any, prompts: list[dict], where: str, tokenizer: Any) -> dict:
    """Sample, verify and score every problem; print the table."""
    style = preset.prompt
    rendered = {
        q["id"]: render_prompt(tokenizer, q["prompt"], style.instruction, style.system_prompt, style.think_prefix)
        for q in prompts
    }
    engine = open_engine(
        cfg.backend,
        preset.hub_id,
        dtype=cfg.dtype or preset.engine.dtype,
        max_model_len=cfg.max_model_len or preset.engine.max_model_len,
        max_logprobs=1,
        seed=cfg.seed,
        tokens=len(tokenizer),  # a padded vocabulary's extra rows are never sampled
    )
    requests, clamped = [], 0
    for q in prompts:
        ids = tokenizer(rendered[q["id"]], add_special_tokens=False)["input_ids"]
        room = engine.max_model_len - len(ids)
        if room < 1:
            raise DistillError(f"Prompt {q['id']} is longer than the model's context ({engine.max_model_len} tokens).")
        clamped += room < cfg.max_new_tokens
        for s in range(cfg.samples):
            requests.append(
                Request(
                    (q["id"], s), ids, request_seed(cfg.seed, q["id"], s), max_new_tokens=min(cfg.max_new_tokens, room)
                )
            )
    if clamped:  # a reasoning model cut short scores as a wrong one: say so rather than report a lower pass@1
        typer.echo(
            f"warning: the model's context ({engine.max_model_len} tokens) leaves {clamped} of {len(prompts)} prompts "
            f"less than --max-new-tokens {cfg.max_new_tokens}; their completions stop earlier. Pass --max-model-len "
            "(the model must support it) or a smaller --max-new-tokens.",
            err=True,
        )
    spec = SamplingSpec(
        cfg.temperature, cfg.top_p, cfg.max_new_tokens, top_k=0, stop_token_ids=stop_token_ids(tokenizer, preset.hub_id)
    )
    from tqdm import tqdm

    generated = tqdm(engine.generate(iter(requests), spec), total=len(requests), desc="eval", unit="sample")
    done = {c.key: c for c in generated}
    samples = [[done[(q["id"], s)] for s in range(cfg.samples)] for q in prompts]
    texts = [[decode_completion(tokenizer, c.completion_ids, c.prompt_ids) for c in cs] for cs in samples]
    flat = [t for ts in texts for t in ts]
    refs = [
        reference_for(cfg.verifier, q.get("answer"), q["prompt"], c.finish_reason)
        for q, cs in zip(prompts, samples, strict=True)
        for c in cs
    ]
    flat_verdicts = verify_batch(cfg.verifier, flat, refs)
    verdicts = [flat_verdicts[i * cfg.samples : (i + 1) * cfg.samples] for i in range(len(prompts))]
    result = score_problems(prompts, texts, verdicts)
    # private attributes (which options were typed: Config.given) are not settings
    result["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(cfg).items() if not k.startswith("_")}
    result["summary"]["model"], result["summary"]["prompts"] = preset.hub_id, where
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(result, indent=1))
    s = result["summary"]
    typer.echo(
        f"{'model':<10}{preset.name}\n{'prompts':<10}{where} ({s['problems']} problems × {s['samples']} samples)"
    )
    for key, value in s.items():
        if key.startswith(("pass@", "cons@")):
            typer.echo(f"{key:<10}{100 * value:6.1f}")
    # not passed above, but not known to be wrong either: the scores are lower bounds by this much
    typer.echo(f"{'unknown':<10}{100 * s['unknown_rate']:6.1f}  ({s['unknown']} samples could not be checked)")
    for domain, d in s.get("domains", {}).items():
        typer.echo(f"{'pass@1':<7}{domain:<12}{100 * d['pass@1']:6.1f}  ({d['problems']} problems)")
    return result
