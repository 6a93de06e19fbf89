"""`distill demo`: the whole pipeline on the embedded default, on one CPU machine, in minutes.

generate (the bundled arith teacher through real vLLM, top-20 logprobs into a cache, on the
`arith:distill` prompts it was never trained on, so it gets some wrong) → filter (math + format
verifiers: a view of the correct traces) → train two students from the same cache with the same
steps, batch and seed, KD (reverse KL, α = 0.5, τ = 1, top-20 + tail bucket: the exact target) and SFT (α = 1)
→ with --onpolicy, the KD student polished on-policy (`distill onpolicy`: it samples, the teacher grades every
token it wrote) → eval the teacher and the students on `arith:test` → a table, `summary.json` and `report.md` with
plots (CE and KL curves, accuracy bars, filter pass rates, the teacher's per-token entropy).

The teacher was trained on traces whose correct reasoning forks (order, operand order, phrasing,
checks: see distill.tasks.arith), so at τ = 1 it spreads its mass over the valid continuations and
KD has more to pass on than the text; the summary reports that entropy. Both students start from
the bundled pretrained base student (it knows arithmetic, not the task's reasoning).

Each stage runs as its own `distill` command in a subprocess, exactly as a user would chain them:
stages talk through files on disk, never in memory. The two students train side by side, each on an
equal share of the cores (one thread each on two), so each equals the same `distill train` run alone
with that many threads. Without the bundled teacher (a checkout where
scripts/train_arith_teacher.py has not been run) the demo says so and uses a random tiny teacher,
whose accuracies are near zero: the machinery runs, the comparison means nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer
from tqdm import tqdm

from distill.cache import load_view, open_cache, view_indices
from distill.configs import DemoConfig
from distill.presets import preset_dir

STAGES = 6

KL_TITLE = {"forward": "KL(teacher ‖ student)", "reverse": "KL(student ‖ teacher)", "jsd": "JSD(teacher, student)"}
BATCH_ROWS = 4  # small steps: on 2 CPU cores the students are limited by optimiser steps, not data


def _distill(*args: str) -> str:
    """Run one `distill` command (its progress and logs pass through to stderr); returns its last stdout line."""
    out = subprocess.run([sys.executable, "-m", "distill", *args], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise typer.Exit(out.returncode)
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def train_threads(jobs: int) -> int:
    """Threads per training process when `jobs` of them share this process's cores (at least one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // jobs)


def train_side_by_side(jobs: dict[str, list[str]], out: Path, steps: int, threads: int) -> dict[str, Path]:
    """Run `distill train` commands at once, each with `threads` threads and its log in out/train-NAME.log, under
    one progress bar of their steps; returns each run's exported model directory. Tiny models use two threads
    poorly: two one-thread runs side by side on two cores do 1.4× the steps per second of two-thread runs one
    after the other (the demo, measured); and a run's result depends on its thread count (the order of float
    sums), not on what runs beside it: each equals the same command run alone. When one fails the others are
    stopped, and its log's last lines and the log's path are shown."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    procs, logs, failed = {}, {}, []
    try:
        for name, args in jobs.items():
            logs[name] = out / f"train-{name}.log"
            with logs[name].open("w") as log:
                cmd = [sys.executable, "-m", "distill", *args]
                procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        with tqdm(total=steps * len(jobs), desc="train " + " + ".join(n.upper() for n in jobs), unit="step") as bar:
            while True:
                time.sleep(1)
                bar.n = sum(_steps_done(out / name) for name in jobs)
                bar.refresh()
                codes = {name: p.poll() for name, p in procs.items()}
                failed = [name for name, code in codes.items() if code not in (None, 0)]
                if failed or None not in codes.values():
                    break
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()
    for name in failed:
        typer.echo("\n".join(logs[name].read_text().strip().splitlines()[-5:]), err=True)
        typer.echo(f"error: the {name.upper()} student's training failed; its log is {logs[name]}", err=True)
    if failed:
        raise typer.Exit(1)
    return {name: Path(p.stdout.read().strip().splitlines()[-1]) for name, p in procs.items()}


def _steps_done(run: Path) -> int:
    """Steps a training run has logged so far (a line of metrics.jsonl each)."""
    try:
        with (run / "metrics.jsonl").open("rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def _teacher(out: Path, seed: int) -> tuple[str, bool]:
    """The bundled teacher preset, or a random tiny stand-in (and whether it is the real one)."""
    if (preset_dir("teacher") / "arith-teacher" / "model.safetensors").is_file():
        return "arith-teacher", True
    from distill.models.tiny import build_tiny_model

    return str(build_tiny_model(out / "random-teacher", seed=seed)), False


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage; print the table; write summary.json and report.md under `out`."""
    out, seed, prompts, steps, eval_problems = Path(cfg.out), cfg.seed, cfg.prompts, cfg.steps, cfg.eval_problems
    kd_temperature, kd_alpha = cfg.kd_temperature, cfg.kd_alpha
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    teacher, bundled = _teacher(out, seed)
    if not bundled:
        typer.echo(
            "note: no bundled arith teacher in this checkout (run scripts/train_arith_teacher.py --install); "
            "using a random tiny teacher, so every accuracy below is near zero"
        )
    student = "arith-student" if bundled else teacher
    typer.echo(f"[1/{STAGES}] generate: {teacher} on arith:distill ({prompts} prompts, top-20, real vLLM)")
    cache = _distill(
        "generate",
        "--teacher",
        teacher,
        "--prompts",
        "arith:distill",
        "--limit",
        str(prompts),
        "--samples-per-prompt",
        "1",
        "--top-k",
        "20",
        "--max-new-tokens",
        "96",
        "--seed",
        str(seed),
        "--dtype",
        "float32",
        "--out",
        str(out / "cache"),
    )
    typer.echo(f"[2/{STAGES}] filter: math + format verifiers")
    _distill("filter", cache, "--verifiers", "math,format", "--name", "correct")
    view = load_view(open_cache(cache), "correct")
    tail = "bucket" if kd_temperature == 1 else "renorm"  # both students get it: they differ in α and τ only
    entropy = teacher_entropy(Path(cache)) if view.kept else np.zeros(0)
    jobs = {}
    for name, alpha in (("kd", str(kd_alpha)), ("sft", "1.0")):
        args = [
            "train",
            "--student",
            student,
            "--cache",
            cache,
            "--alpha",
            alpha,
            "--max-steps",
            str(steps),
            "--seed",
            str(seed),
            "--out",
            str(out / name),
            "--save-every",
            str(steps),
            "--batch-rows",
            str(BATCH_ROWS),
            "--tail",
            tail,
        ]
        if name == "kd":
            args += ["--temperature", str(kd_temperature), "--kd", cfg.kd]
        if view.kept:
            args += ["--view", "correct"]
        if not bundled:
            args += ["--init", "random", "--max-length", "512"]
        jobs[name] = args
    threads = train_threads(len(jobs))
    typer.echo(
        f"[3/{STAGES}] train the KD student (alpha {kd_alpha}, --kd {cfg.kd}, temperature {kd_temperature:g}) and the "
        f"SFT student (alpha 1) side by side, {steps} steps each, seed {seed}, {threads} thread(s) each; "
        f"logs: {out}/train-kd.log, {out}/train-sft.log"
    )
    runs = train_side_by_side(jobs, out, steps, threads)
    stages = STAGES + 2 * cfg.onpolicy
    models = [("teacher", teacher), ("kd", str(runs["kd"])), ("sft", str(runs["sft"]))]
    if cfg.onpolicy:
        typer.echo(
            f"[4/{stages}] onpolicy: the KD student samples arith:train and the teacher grades every token it wrote, "
            f"{cfg.onpolicy_steps} steps (its defaults for {student}); log: {out}/onpolicy.log"
        )
        with (out / "onpolicy.log").open("w") as log:
            done = subprocess.run(
                [sys.executable, "-m", "distill", "onpolicy", "--student", str(runs["kd"]), "--teacher", teacher,
                 "--prompts", "arith:train", "--max-new-tokens", "96", "--dtype", "float32", "--steps",
                 str(cfg.onpolicy_steps), "--seed", str(seed), "--out", str(out / "opd")],
                stdout=subprocess.PIPE, stderr=log, text=True,
            )  # fmt: skip
        if done.returncode != 0:
            typer.echo("\n".join((out / "onpolicy.log").read_text().strip().splitlines()[-5:]), err=True)
            typer.echo(f"error: the on-policy polish failed; its log is {out}/onpolicy.log", err=True)
            raise typer.Exit(done.returncode)
        models.append(("opd", done.stdout.strip().splitlines()[-1]))
    scores = {}
    for i, (name, model) in enumerate(models):
        typer.echo(
            f"[{4 + cfg.onpolicy + i}/{stages}] eval {name} on arith:test ({eval_problems} problems × 4 samples)"
        )
        path = out / f"eval-{name}.json"
        _distill(
            "eval",
            "--model",
            model,
            "--prompts",
            "arith:test",
            "--limit",
            str(eval_problems),
            "--samples",
            "4",
            "--max-new-tokens",
            "96",
            "--seed",
            str(seed),
            "--dtype",
            "float32",
            "--out",
            str(path),
        )
        scores[name] = json.loads(path.read_text())["summary"]
    summary = {
        "teacher_pass1": scores["teacher"]["pass@1"],
        "kd_pass1": scores["kd"]["pass@1"],
        "sft_pass1": scores["sft"]["pass@1"],
        "teacher_cons4": scores["teacher"]["cons@4"],
        "kd_cons4": scores["kd"]["cons@4"],
        "sft_cons4": scores["sft"]["cons@4"],
        "train_records": view.records,
        "kept_records": len(view.kept),
        "filter_report": view.extra["report"],
        "bundled_teacher": bundled,
        "seed": seed,
        "steps": steps,
        "kd_temperature": kd_temperature,
        "kd_alpha": kd_alpha,
        "kd_kind": cfg.kd,
        "kd_tail": tail,
        "batch_rows": BATCH_ROWS,
        "train_threads": threads,
        **(
            {
                "opd_pass1": scores["opd"]["pass@1"],
                "opd_cons4": scores["opd"]["cons@4"],
                "onpolicy_steps": cfg.onpolicy_steps,
            }
            if cfg.onpolicy
            else {}
        ),
        "teacher_entropy_mean": float(entropy.mean()) if len(entropy) else None,
        "teacher_entropy_above_half": float((entropy > 0.5).mean()) if len(entropy) else None,
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _report(out, summary, {k: _metrics(out / k) for k in ("kd", "sft")}, entropy)
    typer.echo(f"\n{'model':<10}{'pass@1':>8}{'cons@4':>8}")
    for name in [n for n, _ in models]:
        typer.echo(f"{name:<10}{100 * summary[f'{name}_pass1']:8.1f}{100 * summary[f'{name}_cons4']:8.1f}")
    if len(entropy):
        typer.echo(
            f"teacher entropy on its kept traces (τ = 1): {summary['teacher_entropy_mean']:.3f} nats per token, "
            f"{summary['teacher_entropy_above_half']:.1%} of positions above 0.5 nats"
        )
    typer.echo(
        f"kept {summary['kept_records']} of {summary['train_records']} teacher traces; "
        f"{summary['seconds']:.0f}s; report: {out / 'report.md'}"
    )
    return summary


def teacher_entropy(cache_path: Path, view: str = "correct") -> np.ndarray:
    """Per completion position, the teacher's entropy in nats at τ = 1 over its top-k and the tail bucket,
    on the traces the view kept (the tail counted as one token: a lower bound, tight when it is small)."""
    cache = open_cache(cache_path)
    out = []
    for rec in cache.records(view_indices(cache, view)):
        lp = np.concatenate([rec.topk_logprobs, rec.tail_logprobs[:, None]], axis=1).astype(np.float64)  # (T, k+1)
        p = np.exp(lp)
        out.append(-np.where(p > 0, p * np.where(p > 0, lp, 0.0), 0.0).sum(axis=1))
    return np.concatenate(out) if out else np.zeros(0)


def _report(out: Path, summary: dict, metrics: dict[str, list[dict]], entropy: np.ndarray) -> None:
    """report.md with four PNG plots beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, rows in metrics.items():
        axes[0].plot([r["step"] for r in rows], [r["ce"] for r in rows], label=f"{name.upper()} student")
    axes[0].set(title="cross-entropy on teacher traces", xlabel="step", ylabel="nats / token")
    kd = metrics["kd"]
    axes[1].plot([r["step"] for r in kd], [r["kd"] for r in kd], color="C0", label="KD student")
    axes[1].set(
        title=f"{KL_TITLE[summary['kd_kind']]} at τ = {summary['kd_temperature']:g}, "
        + ("top-20 + tail" if summary["kd_tail"] == "bucket" else "top-20 renormalised"),
        xlabel="step",
        ylabel="nats / token",
    )
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = ["teacher", "kd", "sft", *(["opd"] if "opd_pass1" in summary else [])]
    values = [100 * summary[f"{n}_pass1"] for n in names]
    labels = {"teacher": "teacher", "kd": "KD student", "sft": "SFT student", "opd": "KD → on-policy"}
    ax.bar([labels[n] for n in names], values, color=["C2", "C0", "C1", "C3"][: len(names)])
    for i, v in enumerate(values):
        ax.text(i, v + 1, f"{v:.1f}", ha="center")
    ax.set(title="pass@1 on arith:test (4 samples, T=0.6)", ylabel="%", ylim=(0, 105))
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)

    report = summary["filter_report"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    labels = ["all", *report["per_verifier"]]
    rates = [100 * report["pass_rate"], *(100 * v for v in report["per_verifier"].values())]
    ax.bar(labels, rates, color="C4")
    ax.set(title="teacher traces passing the filter", ylabel="%", ylim=(0, 105))
    fig.tight_layout()
    fig.savefig(out / "filter.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    if len(entropy):
        ax.hist(entropy, bins=np.linspace(0, max(2.0, float(entropy.max())), 41), color="C0")
        ax.axvline(0.5, color="k", linestyle=":", label="0.5 nats")
        ax.legend()
    ax.set(title="teacher entropy per position (τ = 1, kept traces)", xlabel="nats", ylabel="positions", yscale="log")
    fig.tight_layout()
    fig.savefig(out / "entropy.png", dpi=110)
    plt.close(fig)

    who = "bundled arith teacher" if summary["bundled_teacher"] else "random tiny model (no bundled teacher)"
    lines = [
        "# distill demo report",
        "",
        f"Teacher: {who}; seed {summary['seed']}; {summary['steps']} training steps per student "
        f"(KD: --kd {summary['kd_kind']}, α = {summary['kd_alpha']:g}, τ = {summary['kd_temperature']:g}, "
        f"--tail {summary['kd_tail']}; "
        "SFT: α = 1"
        + (
            f"; KD → on-policy: the KD student, {summary['onpolicy_steps']} steps of `distill onpolicy`"
            if "opd_pass1" in summary
            else ""
        )
        + f"); {summary['seconds']:.0f} s.",
        "",
        "| model | pass@1 | cons@4 |",
        "|---|---|---|",
        *(f"| {n} | {100 * summary[f'{n}_pass1']:.1f} | {100 * summary[f'{n}_cons4']:.1f} |" for n in names),
        "",
        f"Filter: kept {summary['kept_records']} of {summary['train_records']} traces.",
        "",
        f"Teacher entropy on its kept traces (τ = 1): {summary['teacher_entropy_mean'] or 0:.3f} nats per token on "
        f"average, {summary['teacher_entropy_above_half'] or 0:.1%} of positions above 0.5 nats.",
        "",
        "![training curves](curves.png)",
        "",
        "![accuracy](accuracy.png)",
        "",
        "![filter pass rates](filter.png)",
        "",
        "![teacher entropy](entropy.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
