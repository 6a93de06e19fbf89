"""Runs as table rows and as JSON: what `distill runs`, `distill cache info` and `distill compare` print.

One function decides which settings matter for a run (`settings`), so every listing shows the same
columns with the same names: the KD kind (sft when α = 1), tail, α, τ, the cache's top-k, the caches (by
teacher name, joined by +), the view, LoRA, steps and tokens for a student; the loss, group size and learning
rate for grpo; for onpolicy the loss (topk-KIND for the top-k KD), teacher, G, reward weight w and the final
reverse KL (RKL).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from distill.runs.manifest import RunManifest, format_age

NOT_APPLICABLE = "n/a"


def effective_config(m: RunManifest) -> dict[str, Any]:
    """The run's config with the settings that did not act marked NOT_APPLICABLE: for SFT (α = 1) the KD kind,
    tail, τ and β; for sampled KD the tail; β except for jsd. Two SFT runs then agree whatever --kd they had."""
    c = dict(m.config)
    if m.stage == "train":
        unused = set()
        if c.get("alpha") == 1:
            unused |= {"kd", "tail", "temperature", "beta"}
        if c.get("kd") == "sampled":
            unused.add("tail")
        if c.get("kd") != "jsd":
            unused.add("beta")
        c.update(dict.fromkeys(unused & set(c), NOT_APPLICABLE))
    return c


def settings(m: RunManifest) -> dict[str, Any]:
    """The settings that tell runs of this stage apart, by short column name."""
    c, s = m.config, m.summary
    # a run that did not finish (running, killed, failed) has its last step's row as metrics: show how far it got
    ended = "steps" in m.metrics
    if m.stage == "train":
        sft = c.get("alpha") == 1
        return {
            "kind": "sft" if sft else c.get("kd"),
            "tail": None if sft or c.get("kd") == "sampled" else c.get("tail"),
            "α": c.get("alpha"),
            "τ": None if sft else c.get("temperature"),
            "k": s.get("top_k") or None,
            "caches": "+".join(str(x.get("name")) for x in m.caches) or None,
            "view": _view(m),
            "lora": c.get("lora"),
            "lr": c.get("lr"),
            "seed": c.get("seed"),
            "steps": m.metrics["steps"] if ended else f"{m.metrics.get('step', 0)}/{s.get('total_steps')}",
            "tokens": m.metrics.get("tokens") if ended else None,
        }
    if m.stage == "onpolicy":
        topk = c.get("loss") == "topk"
        return {
            "kind": f"topk-{c.get('kd')}" if topk else c.get("loss"),
            "teacher": c.get("teacher"),
            "G": c.get("group_size"),
            "w": c.get("reward_weight"),
            "lr": c.get("lr"),
            "β": c.get("beta") if topk and c.get("kd") == "jsd" else NOT_APPLICABLE,
            "seed": c.get("seed"),
            "steps": m.metrics["steps"] if ended else f"{m.metrics.get('step', 0)}/{c.get('steps')}",
        }
    if m.stage == "grpo":
        return {
            "kind": c.get("loss"),
            "G": c.get("group_size"),
            "lr": c.get("lr"),
            "β": c.get("beta"),
            "seed": c.get("seed"),
            "steps": m.metrics["steps"] if ended else f"{m.metrics.get('step', 0)}/{c.get('steps')}",
        }
    return {"samples": c.get("samples"), "τ": c.get("temperature"), "seed": c.get("seed")}


def _view(m: RunManifest) -> str | None:
    """--view, or the views of the run's caches joined by + (`all` for a cache read whole) where they name some."""
    views = [c.get("view") for c in m.caches]
    return m.config.get("view") or ("+".join(v or "all" for v in views) if any(views) else None)


def student_of(m: RunManifest) -> str:
    """The model a run started from, as the user named it."""
    name = str(m.config.get("student") or m.config.get("policy") or m.config.get("model") or m.model or "?")
    if "/" not in name or not Path(name).exists():
        return name  # a preset name or a hub id
    path = Path(name).resolve()
    return path.parent.name if path.name == "model" else path.name


def pass1(m: RunManifest) -> dict[str, float]:
    """Benchmark → pass@1 of the run's evaluated model."""
    return {b: r["pass@1"] for b, r in m.eval.items() if isinstance(r.get("pass@1"), (int, float))}


def run_json(m: RunManifest, path: Path) -> dict[str, Any]:
    """The JSON of one run (`distill runs --json`): the manifest, with where it is now."""
    return {**dataclasses.asdict(m), "manifest": str(path), "settings": settings(m)}


def run_rows(runs: list[tuple[RunManifest, Path]], now: float | None = None) -> list[dict[str, str]]:
    """One display row per run: name, stage, student, settings, final CE and KD (the losses, upper case: `kd`
    is the setting), pass@1 per benchmark, status, age."""
    now = time.time() if now is None else now
    benchmarks = sorted({b for m, _ in runs for b in pass1(m)})
    rows = []
    for m, _ in runs:
        row = {"name": m.name, "stage": m.stage, "student": student_of(m)}
        row.update({k: show(v) for k, v in settings(m).items()})
        row["CE"] = show(m.metrics.get("ce"))
        row["KD"] = show(m.metrics.get("kd") if row.get("kind") != "sft" else None)
        row["RKL"] = show(m.metrics.get("reverse_kl"))  # on-policy: reverse KL to the teacher on its own samples
        row.update({f"pass@1 {b}": show(100 * v if v is not None else None, 1) for b, v in _each(pass1(m), benchmarks)})
        row["status"] = m.status
        row["age"] = format_age(now - m.started)
        rows.append(row)
    return rows


def _each(values: dict[str, float], keys: list[str]) -> list[tuple[str, float | None]]:
    return [(k, values.get(k)) for k in keys]


def show(value: Any, digits: int = 4) -> str:
    """A cell: '-' for nothing, short numbers, yes/no."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if digits != 1 else f"{value:.1f}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value / 1e6:.2f}M" if value >= 1_000_000 else f"{value / 1e3:.0f}k"
    return str(value)


def visible_columns(rows: list[dict[str, str]]) -> list[str]:
    """The columns of `rows` (in the first row's order) that are not '-' everywhere."""
    return [c for c in rows[0] if any(r.get(c, "-") != "-" for r in rows)] if rows else []


def format_table(rows: list[dict[str, str]]) -> str:
    """Rows (dicts with the same keys, in order) as aligned text columns; columns that are '-' everywhere dropped."""
    if not rows:
        return ""
    columns = visible_columns(rows)
    widths = {c: max(len(c), *(len(r.get(c, "-")) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(r.get(c, "-").ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


def reasons(runs: list[tuple[RunManifest, Path]]) -> list[str]:
    """'name: reason' for each failed or killed run."""
    ended = ("failed", "interrupted", "killed")
    return [f"{m.name} ({m.status}): {m.reason}" for m, _ in runs if m.status in ended and m.reason]
