"""Benchmark the teacher cache codec: size, fidelity and speed against a naive layout, in one run.

For k=20 and k=64 at V=151,936 on a synthetic LM-like stream (distill.cache.synthetic: Zipfian
ids drawn independently per position, sorted power-law logprobs with a tail), it writes a real
cache with `CacheWriter`, reads it back with `open_cache`, and prints:

- bytes per token and per stored logit (everything on disk: shards, index), and the ratio against
  a naive baseline of int32 ids + fp16 logprobs (6 bytes per logit);
- decode KL: mean KL(original ‖ decoded) over positions, top-k + tail bucket, in nats;
- write and read+decode tokens/s on one core (numpy and torch threads pinned to 1).

Targets (issue 2): ≤ 2.0 bytes per logit, decode KL ≤ 1e-3, read+decode ≥ 2M tokens/s at k=20.
The last line printed is one JSON object with the figures.

    python scripts/bench_cache.py [--tokens 400000] [--zipf 1.1]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from distill.cache import CacheSpec, CacheWriter, Record, open_cache  # noqa: E402
from distill.cache.admin import directory_bytes  # noqa: E402
from distill.cache.synthetic import lm_like_logprobs, topk_kl, zipf_topk_ids  # noqa: E402

VOCAB = 151_936
NAIVE_BYTES_PER_LOGIT = 4 + 2  # int32 id + fp16 logprob


def make_records(rng: np.random.Generator, tokens: int, k: int, zipf: float) -> list[Record]:
    """Records of 256–4096 completion tokens (reasoning-trace lengths) totalling about `tokens`."""
    lengths = []
    while sum(lengths) < tokens:
        lengths.append(int(rng.integers(256, 4097)))
    total = sum(lengths)
    ids = zipf_topk_ids(rng, total, k, VOCAB, zipf)
    lps = lm_like_logprobs(rng, total, k)
    # the trace token is drawn from the top-k most of the time, as sampling from a teacher would
    pick = np.minimum(rng.geometric(0.5, total) - 1, k - 1)
    records, start = [], 0
    for i, n in enumerate(lengths):
        sl = slice(start, start + n)
        rows = np.arange(n)
        records.append(
            Record(
                prompt_ids=zipf_topk_ids(rng, 1, 200, VOCAB, zipf)[0],
                completion_ids=ids[sl][rows, pick[sl]],
                topk_ids=ids[sl],
                topk_logprobs=lps[sl],
                sampled_logprobs=lps[sl][rows, pick[sl]],
                meta={"prompt_id": f"p{i}", "sample_index": 0, "finish_reason": "stop"},
            )
        )
        start += n
    return records


def bench(k: int, tokens: int, zipf: float, root: Path) -> dict[str, float]:
    rng = np.random.default_rng(k)
    records = make_records(rng, tokens, k, zipf)
    total = sum(r.num_tokens for r in records)
    path = root / f"k{k}"
    t0 = time.perf_counter()
    writer = CacheWriter(path, CacheSpec(top_k=k, vocab_size=VOCAB), key=f"bench-k{k}", provenance={"teacher": "bench"})
    for r in records:
        writer.append(r)
    writer.finish()
    write_s = time.perf_counter() - t0

    cache = open_cache(path)
    for s in range(len(cache.index["shards"])):
        cache.shard(s)  # checksums are verified on first open; time the decode, not the hash
    t0 = time.perf_counter()
    decoded = cache.records(range(len(cache)))
    read_s = time.perf_counter() - t0

    kl = np.concatenate([topk_kl(a.topk_logprobs, b.topk_logprobs) for a, b in zip(records, decoded, strict=True)])
    assert all((a.topk_ids == b.topk_ids).all() for a, b in zip(records, decoded, strict=True)), "ids must be exact"
    on_disk = directory_bytes(path)
    return {
        "tokens": total,
        "bytes_per_token": on_disk / total,
        "bytes_per_logit": on_disk / (total * k),
        "naive_bytes_per_logit": NAIVE_BYTES_PER_LOGIT,
        "size_ratio_vs_naive": on_disk / (total * k) / NAIVE_BYTES_PER_LOGIT,
        "decode_kl_mean": float(kl.mean()),
        "decode_kl_p99": float(np.quantile(kl, 0.99)),
        "write_tokens_per_s": total / write_s,
        "read_tokens_per_s": total / read_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=400_000, help="completion tokens per k")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the id stream (1.0–1.2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {k: bench(k, args.tokens, args.zipf, Path(tmp)) for k in (20, 64)}
    print(f"V={VOCAB}, Zipf exponent {args.zipf}, one core")
    print(f"{'':24}{'k=20':>14}{'k=64':>14}")
    for name in results[20]:
        print(f"{name:24}{results[20][name]:>14.4g}{results[64][name]:>14.4g}")
    summary = {
        "zipf_exponent": args.zipf,
        "bytes_per_logit_k20": round(results[20]["bytes_per_logit"], 4),
        "bytes_per_logit_k64": round(results[64]["bytes_per_logit"], 4),
        "size_ratio_vs_naive_k20": round(results[20]["size_ratio_vs_naive"], 4),
        "size_ratio_vs_naive_k64": round(results[64]["size_ratio_vs_naive"], 4),
        "decode_kl_k20": float(f"{results[20]['decode_kl_mean']:.3g}"),
        "decode_kl_k64": float(f"{results[64]['decode_kl_mean']:.3g}"),
        "write_tokens_per_s_k20": round(results[20]["write_tokens_per_s"]),
        "read_tokens_per_s_k20": round(results[20]["read_tokens_per_s"]),
        "read_tokens_per_s_k64": round(results[64]["read_tokens_per_s"]),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
