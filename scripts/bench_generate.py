"""Benchmark the teacher stage against bare vLLM: what recording top-k logprobs into a cache costs.

In one run, on one engine per model (real vLLM, CPU build here, or CUDA), with the same prompts,
sampling (temperature 0.6, top-p 0.95, one seed per request) and length:

    baseline   vllm.LLM.generate without logprobs
    distill    distill's generation path: VLLMEngine.generate with top-k raw logprobs, every
               completion streamed into a CacheWriter and the cache finished (fp32 and quantised
               shards written, fsynced, indexed)

Runs alternate (baseline, k=20, k=64, ...) and the median of each is taken, so machine noise hits
both sides alike. Two Qwen2 models are built offline: "small" (~26M parameters, 32k-row output
layer; the ≥ 0.90 goal applies to it) and "tiny" (~0.5M; it exposes the fixed per-token overhead).
Engine start-up is excluded on both sides. The last line is one JSON object.

    python scripts/bench_generate.py [--prompts 64] [--tokens 128] [--repeats 3]

With --teacher-url, the teacher served there (`distill serve --teacher T`, the same machine) against the same
teacher in this process, both through distill's generate path at top-20 (a server engine and a vLLM engine,
each writing a finished cache), runs alternating; the goal is a served/in-process ratio ≥ 0.8:

    distill serve --teacher arith-teacher --port 8000 &
    python scripts/bench_generate.py --teacher-url http://127.0.0.1:8000 --teacher arith-teacher
"""

from __future__ import annotations

import os

from distill.engines.vllm_engine import CPU_ENV

for _k, _v in CPU_ENV.items():
    os.environ.setdefault(_k, _v)

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from distill.cache import CacheSpec, CacheWriter  # noqa: E402
from distill.engines import Request, SamplingSpec, request_seed  # noqa: E402
from distill.engines.vllm_engine import VLLMEngine  # noqa: E402
from distill.models.tiny import build_tiny_model  # noqa: E402
from distill.recording import stream_into_cache  # noqa: E402

MODELS = {
    "small": dict(hidden_size=512, num_layers=4, num_heads=8, num_kv_heads=4, model_vocab_size=32768),
    "tiny": dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, model_vocab_size=2048),
}


def bare_vllm(engine: VLLMEngine, requests: list[Request], tokens: int) -> float:
    """tokens/s of plain LLM.generate, no logprobs."""
    from vllm import SamplingParams

    params = [
        SamplingParams(temperature=0.6, top_p=0.95, max_tokens=tokens, seed=r.seed, ignore_eos=True) for r in requests
    ]
    t0 = time.perf_counter()
    outs = engine.llm.generate([{"prompt_token_ids": r.prompt_ids} for r in requests], params, use_tqdm=False)
    return sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - t0)


def distill_path(engine: VLLMEngine, requests: list[Request], tokens: int, k: int, vocab: int, out: Path) -> float:
    """tokens/s of distill's generate path with top-k logprobs, writing a finished cache."""
    spec = SamplingSpec(temperature=0.6, top_p=0.95, max_new_tokens=tokens, top_k=k, stop_token_ids=[])
    t0 = time.perf_counter()
    writer = CacheWriter(out, CacheSpec(top_k=k, vocab_size=vocab), key=out.name)
    metas = {r.key: {} for r in requests}
    stats = stream_into_cache(writer, engine.generate(iter(requests), spec), metas, len(requests), f"k={k}")
    writer.finish()
    return stats.tokens / (time.perf_counter() - t0)


def bench_model(name: str, root: Path, prompts: int, tokens: int, repeats: int) -> dict[str, float]:
    model = build_tiny_model(root / name, seed=0, **MODELS[name])
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    params = sum(
        p
        for p in [
            config.vocab_size * config.hidden_size,
            config.num_hidden_layers
            * (
                2 * config.hidden_size**2
                + 2
                * config.hidden_size
                * config.num_key_value_heads
                * (config.hidden_size // config.num_attention_heads)
                + 3 * config.hidden_size * config.intermediate_size
            ),
        ]
    )
    engine = VLLMEngine(str(model), dtype="float32", max_model_len=512, max_logprobs=64)
    requests = [
        Request((str(i), 0), [1 + (i * 7 + j) % 400 for j in range(32)], request_seed(0, str(i), 0))
        for i in range(prompts)
    ]
    bare_vllm(engine, requests[:8], 8)  # warm-up
    runs: dict[str, list[float]] = {"bare": [], "k20": [], "k64": []}
    for r in range(repeats):
        runs["bare"].append(bare_vllm(engine, requests, tokens))
        runs["k20"].append(distill_path(engine, requests, tokens, 20, config.vocab_size, root / f"{name}-k20-{r}"))
        runs["k64"].append(distill_path(engine, requests, tokens, 64, config.vocab_size, root / f"{name}-k64-{r}"))
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "params_millions": round(params / 1e6, 2),
        "bare_tokens_per_s": round(med["bare"]),
        "k20_tokens_per_s": round(med["k20"]),
        "k64_tokens_per_s": round(med["k64"]),
        "ratio_k20": round(med["k20"] / med["bare"], 3),
        "ratio_k64": round(med["k64"] / med["bare"], 3),
    }


def bench_served(url: str, teacher: str, root: Path, prompts: int, tokens: int, repeats: int) -> dict[str, float]:
    """tokens/s of distill's generate path (top-20, cache written) through the server at `url` and in-process."""
    from distill.engines.server_engine import ServerEngine
    from distill.models.tokenizer import load_tokenizer
    from distill.presets import resolve_preset

    preset = resolve_preset(teacher, "teacher")
    tokenizer = load_tokenizer(preset.hub_id, preset.revision)
    served = ServerEngine([url], preset, tokenizer, top_k=20, max_model_len=preset.engine.max_model_len)
    engines = {  # the in-process engine with the server's context
        "served": served,
        "in_process": VLLMEngine(
            preset.hub_id,
            dtype=preset.engine.dtype,
            max_model_len=served.max_model_len,
            max_logprobs=20,
            tokens=len(tokenizer),
        ),
    }
    vocab = len(tokenizer)
    requests = [
        Request((str(i), 0), [1 + (i * 7 + j) % (vocab - 1) for j in range(32)], request_seed(0, str(i), 0))
        for i in range(prompts)
    ]
    runs: dict[str, list[float]] = {name: [] for name in engines}
    for name, engine in engines.items():  # warm-up
        distill_path(engine, requests[:8], 8, 20, vocab, root / f"warm-{name}")
    for r in range(repeats):
        for name, engine in engines.items():
            runs[name].append(distill_path(engine, requests, tokens, 20, vocab, root / f"{name}-{r}"))
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "teacher": preset.name,
        "served_tokens_per_s": round(med["served"]),
        "in_process_tokens_per_s": round(med["in_process"]),
        "ratio_served": round(med["served"] / med["in_process"], 3),
        "runs": {k: [round(x) for x in v] for k, v in runs.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per prompt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--teacher-url", help="compare this server of --teacher with the same teacher in-process")
    parser.add_argument("--teacher", default="arith-teacher", help="the teacher --teacher-url serves")
    args = parser.parse_args()
    if args.teacher_url:
        with tempfile.TemporaryDirectory() as tmp:
            result = bench_served(args.teacher_url, args.teacher, Path(tmp), args.prompts, args.tokens, args.repeats)
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: bench_model(name, Path(tmp), args.prompts, args.tokens, args.repeats) for name in MODELS}
    for name, r in results.items():
        print(f"{name}: {r}")
    print(
        json.dumps(
            {
                "ratio_k20": results["small"]["ratio_k20"],
                "ratio_k64": results["small"]["ratio_k64"],
                "ratio_k20_tiny": results["tiny"]["ratio_k20"],
                "ratio_k64_tiny": results["tiny"]["ratio_k64"],
                "small": results["small"],
                "tiny": results["tiny"],
            }
        )
    )


if __name__ == "__main__":
    main()
