"""Benchmark the trainer's loss: what KD costs per step, and what chunking saves in memory. One run.

1. Step time: a full training step (forward, chunked loss, backward, AdamW) of one student on one
   packed batch, with α=0.5 (teacher top-20, forward KL with tail bucket) ÷ the same with α=1
   (plain cross-entropy through the same chunked path). Steps alternate and the medians are
   compared, so machine noise hits both alike. Target ≤ 1.10.
2. Peak memory of the loss alone at T=4096 positions, V=32,768, with a synthetic output layer:
   chunked (the default chunk size: 512 tokens here) ÷ naive (full T×V logits kept for backward), each measured as
   the peak growth of resident memory (sampled every 0.5 ms, large blocks mmapped so frees show)
   in a fresh process during forward+backward. Target ≤ 0.25.

The last line printed is one JSON object.

    python scripts/bench_train.py [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distill.cache import Record
from distill.cache.synthetic import lm_like_logprobs, zipf_topk_ids
from distill.data import collate
from distill.models.tiny import build_tiny_model
from distill.train import StudentLoss, TrainConfig

VOCAB = 32_768


def step_time(model_dir: Path, alpha: float, batch, module_cache: dict) -> float:
    """Seconds for one optimizer step of a fresh-enough student (weights persist across calls per α)."""
    if alpha not in module_cache:
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        cfg = TrainConfig(student=str(model_dir), cache="-", alpha=alpha)
        module = StudentLoss(model, cfg)
        module_cache[alpha] = (module, torch.optim.AdamW(module.parameters(), lr=1e-4))
    module, opt = module_cache[alpha]
    t0 = time.perf_counter()
    out = module(batch)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def make_batch(rng: np.random.Generator, rows: int, length: int, k: int):
    records = []
    for r in range(rows):
        t = length - 64
        ids = zipf_topk_ids(rng, t, k, VOCAB, 1.1)
        records.append(
            [
                Record(
                    prompt_ids=rng.integers(0, VOCAB, 64).astype(np.int32),
                    completion_ids=ids[:, 0].copy(),
                    topk_ids=ids,
                    topk_logprobs=lm_like_logprobs(rng, t, k),
                    sampled_logprobs=np.zeros(t, np.float32),
                    meta={"prompt_id": str(r), "sample_index": 0},
                )
            ]
        )
    return collate(records, length, 0, k, 0)


PEAK_CHILD = """
import sys, threading, time, torch
from distill.losses import distill_loss, naive_distill_loss
T, V, H, K = 4096, 32768, 256, 20
page = 4096
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
g = torch.Generator().manual_seed(0)
hidden = torch.randn(T, H, generator=g, requires_grad=True)
weight = (torch.randn(V, H, generator=g) * 0.02).requires_grad_()
targets = torch.randint(0, V, (T,), generator=g)
ids = torch.randint(0, V, (T, K), generator=g)
lps = torch.log_softmax(torch.randn(T, K + 1, generator=g), -1)[:, :K].contiguous()
fn = distill_loss if sys.argv[1] == "chunked" else naive_distill_loss
fn(hidden[:8], weight, targets[:8], ids[:8], lps[:8], alpha=0.5).loss.backward()  # warm up kernels
hidden.grad = weight.grad = None
peak, done = [0], [False]
def sample():
    while not done[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.0005)
base = rss()
t = threading.Thread(target=sample)
t.start()
fn(hidden, weight, targets, ids, lps, alpha=0.5).loss.backward()
done[0] = True
t.join()
print(max(peak[0], rss()) - base)
"""


def peak_bytes(kind: str) -> int:
    # large blocks via mmap: freed memory leaves the process, so RSS follows live memory
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PEAK_CHILD, kind], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per setting")
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--length", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(
            Path(tmp) / "student", hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, model_vocab_size=VOCAB
        )
        batch = make_batch(np.random.default_rng(0), args.rows, args.length, 20)
        cache: dict = {}
        times: dict[float, list[float]] = {0.5: [], 1.0: []}
        for alpha in (0.5, 1.0):
            step_time(model, alpha, batch, cache)  # warm-up
        for _ in range(args.steps):
            for alpha in (0.5, 1.0):
                times[alpha].append(step_time(model, alpha, batch, cache))
    kd_s, ce_s = statistics.median(times[0.5]), statistics.median(times[1.0])
    chunked, naive = peak_bytes("chunked"), peak_bytes("naive")
    print(
        f"step time ({args.rows}×{args.length} tokens, V={VOCAB}, 1 thread): α=0.5 top-20 {kd_s * 1e3:.0f} ms, "
        f"α=1 {ce_s * 1e3:.0f} ms"
    )
    print(f"loss peak memory at T=4096, V={VOCAB}: chunked {chunked / 2**20:.0f} MiB, naive {naive / 2**20:.0f} MiB")
    print(
        json.dumps(
            {
                "step_time_ratio": round(kd_s / ce_s, 3),
                "peak_memory_ratio": round(chunked / naive, 3),
                "step_ms_alpha_0_5": round(kd_s * 1e3, 1),
                "step_ms_alpha_1": round(ce_s * 1e3, 1),
                "peak_mib_chunked": round(chunked / 2**20, 1),
                "peak_mib_naive": round(naive / 2**20, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
