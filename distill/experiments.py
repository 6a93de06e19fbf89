"""`distill runs` and `distill compare`: the experiments run against one teacher cache, side by side.

    distill runs --cache 3fa2c1                    # every run trained on that cache, one line each
    distill compare --cache 3fa2c1 --out cmp/      # the settings that differ, scores, curves, report.md

Both read the run registry (distill.runs): every train, grpo and eval run recorded its manifest
there, so nothing here re-derives what a run was from its files. `compare` groups runs whose
settings differ only in the seed: their accuracy is a mean with the spread over seeds, and the
table shows each setting that differs between groups once. The report (report.md beside PNGs) is in
the demo report's style: curves per metric with one line per run, accuracy bars per benchmark.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import typer

from distill.configs import CompareConfig, RunsConfig
from distill.errors import DistillError
from distill.runs import Registry, RunManifest
from distill.runs.table import (
    NOT_APPLICABLE,
    effective_config,
    format_table,
    pass1,
    reasons,
    run_json,
    run_rows,
    show,
    student_of,
    visible_columns,
)

# settings that never tell two experiments apart: where they wrote, how they were launched, how they logged
INCIDENTAL = {"out", "resume", "report_to", "save_every", "json"}
CURVES = {"train": ("loss", "ce", "kd"), "grpo": ("reward_mean", "kl"), "onpolicy": ("reverse_kl", "reward_mean")}


def cache_key_of(cache: str) -> str:
    """A cache given as a directory, a key or a key prefix, as what the registry stores (key or prefix)."""
    if Path(cache).is_dir():
        from distill.cache import open_cache

        return open_cache(cache, allow_incomplete=True).key
    return cache


# ---------------------------------------------------------------------------------------------
# distill runs


def run_runs(cfg: RunsConfig) -> list[dict[str, Any]]:
    """List the registry's runs (after scanning `cfg.scan`); prints a table or JSON."""
    registry = Registry()
    if cfg.scan is not None:
        if not cfg.scan.is_dir():
            raise DistillError(f"--scan {cfg.scan} is not a directory.")
        found = registry.scan(cfg.scan)
        typer.echo(f"registered {len(found)} runs found under {cfg.scan}", err=True)
    runs = registry.runs(cache_key=cache_key_of(cfg.cache) if cfg.cache else None, stage=cfg.stage)
    listed = [run_json(m, p) for m, p in runs]
    if cfg.json:
        typer.echo(json.dumps(listed, indent=2))
    elif not runs:
        typer.echo(f"no runs recorded in {registry.path}" + (" for that cache" if cfg.cache else ""))
    else:
        typer.echo(format_table(run_rows(runs)))
        for line in reasons(runs):
            typer.echo(line)
    return listed


# ---------------------------------------------------------------------------------------------
# distill compare


def run_compare(cfg: CompareConfig) -> dict[str, Any]:
    """Compare runs: print the table (or JSON); with --out, write report.md and the figures."""
    registry = Registry()
    runs: dict[str, tuple[RunManifest, Path]] = {}
    for ref in cfg.runs:
        m, p = registry.find(ref)
        runs[m.id] = (m, p)
    if cfg.cache is not None:
        for m, p in registry.runs(cache_key=cache_key_of(cfg.cache), stage=cfg.stage or "train"):
            runs.setdefault(m.id, (m, p))
    if not runs:
        raise DistillError(f"No runs of cache {cfg.cache!r} in {registry.path}; `distill runs` lists what is there.")
    chosen = sorted(runs.values(), key=lambda r: r[0].started)
    comparison = compare(chosen)
    if cfg.out is not None:
        write_report(cfg.out, chosen, comparison)
    if cfg.json:
        typer.echo(json.dumps(comparison, indent=2))
    else:
        typer.echo(format_table(comparison["table"]))
        if comparison["seeded"]:
            typer.echo("\n" + format_table(comparison["groups_table"]))
        if cfg.out is not None:
            typer.echo(f"\nreport: {cfg.out / 'report.md'}")
    return comparison


def differing(runs: list[tuple[RunManifest, Path]]) -> list[str]:
    """Config keys whose values are not the same in every run (incidental ones left out)."""
    configs = [effective_config(m) for m, _ in runs]
    keys = sorted({k for c in configs for k in c} - INCIDENTAL)
    # a setting that acted in only some runs (τ of KD runs next to SFT runs) differs only if it took two values
    return [k for k in keys if len({json.dumps(c.get(k)) for c in configs if c.get(k) != NOT_APPLICABLE}) > 1]


def compare(runs: list[tuple[RunManifest, Path]]) -> dict[str, Any]:
    """The comparison as data: per-run rows of the differing settings and scores, and seed groups."""
    diff = differing(runs)
    benchmarks = sorted({b for m, _ in runs for b in pass1(m)})
    table = []
    for m, _ in runs:
        row = {"name": m.name, "stage": m.stage, "student": student_of(m)}
        config = effective_config(m)
        row.update({k: show(config.get(k)) for k in diff})
        row.update(
            CE=show(m.metrics.get("ce")), KD=show(m.metrics.get("kd") if config.get("kd") != NOT_APPLICABLE else None)
        )
        row.update({f"pass@1 {b}": show(100 * pass1(m)[b] if b in pass1(m) else None, 1) for b in benchmarks})
        row["status"] = m.status
        table.append(row)
    groups = seed_groups(runs, [k for k in diff if k != "seed"])
    groups_table = []
    for g in groups:
        row = {"group": g["label"], "runs": str(len(g["runs"])), "seeds": ",".join(map(str, g["seeds"]))}
        for b in benchmarks:
            s = g["pass1"].get(b)
            row[f"pass@1 {b}"] = "-" if s is None else f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"
        groups_table.append(row)
    return {
        "runs": [{"id": m.id, "name": m.name, "manifest": str(p)} for m, p in runs],
        "differing": diff,
        "benchmarks": benchmarks,
        "table": table,
        "groups": groups,
        "groups_table": groups_table,
        "seeded": any(len(g["runs"]) > 1 for g in groups),
    }


def seed_groups(runs: list[tuple[RunManifest, Path]], keys: list[str]) -> list[dict[str, Any]]:
    """Runs whose settings `keys` (the differing ones, seed aside) agree, with pass@1 mean and spread over seeds."""
    groups: dict[str, dict[str, Any]] = {}
    for m, _ in runs:
        config = effective_config(m)
        values = {k: config.get(k) for k in keys}
        key = json.dumps([m.stage, values], sort_keys=True, default=str)
        label = ", ".join(f"{k}={show(v)}" for k, v in values.items() if v != NOT_APPLICABLE) or m.stage
        g = groups.setdefault(key, {"label": label, "settings": values, "runs": [], "seeds": [], "scores": {}})
        g["runs"].append(m.name)
        g["seeds"].append(m.config.get("seed"))
        for b, v in pass1(m).items():
            g["scores"].setdefault(b, []).append(v)
    for g in groups.values():
        g["pass1"] = {
            b: {"mean": statistics.fmean(v), "std": statistics.pstdev(v) if len(v) > 1 else 0.0, "values": v}
            for b, v in g.pop("scores").items()
        }
    return list(groups.values())


# ---------------------------------------------------------------------------------------------
# the report


def write_report(out: Path, runs: list[tuple[RunManifest, Path]], comparison: dict[str, Any]) -> None:
    """report.md, curves_METRIC.png per metric and accuracy.png, into `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    figures = []
    stages = {m.stage for m, _ in runs}
    for metric in dict.fromkeys(k for s in sorted(stages) for k in CURVES.get(s, ())):
        lines = [(m.name, _curve(p.parent / "metrics.jsonl", metric)) for m, p in runs]
        lines = [(n, xy) for n, xy in lines if any(xy[1])]  # no metric, or all zero (an SFT run's kd)
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        for name, (x, y) in lines:
            ax.plot(x, y, label=name, linewidth=1.2)
        ax.set(title=f"{metric} (moving average)", xlabel="step", ylabel=metric)
        if metric in ("kd", "kl", "reverse_kl") and all(v > 0 for _, (_, y) in lines for v in y):
            ax.set_yscale("log")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"curves_{metric}.png", dpi=110)
        plt.close(fig)
        figures.append((metric, f"curves_{metric}.png"))
    groups, benchmarks = comparison["groups"], comparison["benchmarks"]
    if benchmarks:
        fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(groups) * len(benchmarks)), 3.8))
        width = 0.8 / len(benchmarks)
        for j, b in enumerate(benchmarks):
            for i, g in enumerate(groups):
                s = g["pass1"].get(b)
                if s is None:
                    continue
                x = i + (j - (len(benchmarks) - 1) / 2) * width
                ax.bar(x, 100 * s["mean"], width, yerr=100 * s["std"], color=f"C{j}", label=b if i == 0 else None)
                ax.scatter([x] * len(s["values"]), [100 * v for v in s["values"]], color="k", s=8, zorder=3)
                ax.text(x, 100 * s["mean"] + 1.5, f"{100 * s['mean']:.1f}", ha="center", fontsize=7)
        # a group by its first run's name: the settings are in the report's table
        names = [g["runs"][0] + (f" (+{len(g['runs']) - 1})" if len(g["runs"]) > 1 else "") for g in groups]
        ax.set_xticks(range(len(groups)), names, rotation=20, ha="right", fontsize=8)
        ax.set(title="pass@1 (bars: mean over seeds ± std; dots: each run)", ylabel="%", ylim=(0, 105))
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "accuracy.png", dpi=110)
        plt.close(fig)
        figures.append(("accuracy", "accuracy.png"))
    lines = [
        "# distill compare",
        "",
        f"{len(runs)} runs; settings that differ: {', '.join(comparison['differing']) or 'none'}.",
        "",
        _markdown(comparison["table"]),
        "",
        *(
            [
                "Grouped over seeds (pass@1 mean ± population std over the seeds):",
                "",
                _markdown(comparison["groups_table"]),
                "",
            ]
            if comparison["seeded"]
            else []
        ),
        *(f"![{name}]({file})\n" for name, file in figures),
    ]
    (out / "report.md").write_text("\n".join(lines))


def _curve(path: Path, metric: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `metric` in a metrics.jsonl, smoothed over ~1/50 of the run."""
    if not path.is_file():
        return [], []
    rows = [json.loads(r) for r in path.read_text().splitlines() if r.strip()]
    pts = [(r["step"], r[metric]) for r in rows if isinstance(r.get(metric), (int, float))]
    if not pts:
        return [], []
    w = max(1, len(pts) // 50)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    smooth = [statistics.fmean(ys[max(0, i - w + 1) : i + 1]) for i in range(len(ys))]
    return xs, smooth


def _markdown(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    columns = visible_columns(rows)
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(r.get(c, "-") for c in columns) + " |" for r in rows]
    return "\n".join(out)
