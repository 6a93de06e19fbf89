"""What scripts/gpu_check.py runs in processes of its own: the sizes, the offline tokenizer and random-weight
models, and the in-process measures (bench_generate's ratio, the loss benchmark, FSDP2 at world size 1).

Each worker writes its figures to WORK/results/NAME.json and exits; a crash or an out-of-memory error
stays in its process, and the GPU memory is free again for the next part. Run by gpu_check.py:

    python scripts/gpu_check_workers.py {build,ratio,loss,fsdp} --work DIR [--tiny]
    python -m torch.distributed.run --standalone --nproc-per-node=1 scripts/gpu_check_workers.py fsdp --work DIR
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TOP_K = 20


# ---------------------------------------------------------------------------------------------
# sizes


@dataclass(frozen=True)
class Shape:
    """A Qwen2 decoder's shape."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    mlp: int
    tied: bool

    def params(self, rows: int) -> int:
        """Parameters (biases and norms left out)."""
        kv = self.kv_heads * self.hidden // self.heads
        layer = 2 * self.hidden**2 + 2 * self.hidden * kv + 3 * self.hidden * self.mlp
        return rows * self.hidden * (1 if self.tied else 2) + self.layers * layer


@dataclass(frozen=True)
class Plan:
    """Every size the check uses: FULL on a GPU, TINY for the --tiny rehearsal."""

    rows: int  # vocabulary rows of both models
    regular_tokens: int  # BPE tokens; special and reserved tokens fill the rest of the rows
    student: Shape
    teacher: Shape  # on a GPU, as many layers as fit (teacher_that_fits)
    dtype: str  # saved weights and engines
    part_cap_s: int  # the most one part may take
    gen_prompts: int  # arith:train prompts of `distill generate`
    gen_samples: int  # completions per prompt
    gen_tokens: int  # new tokens per completion (a random teacher never stops early)
    max_model_len: int  # engine context of generate and ratio
    ratio_prompts: int  # requests per bench_generate run
    ratio_tokens: int  # new tokens per request
    ratio_repeats: int  # alternating (bare, top-20) pairs; the medians are compared
    loss_tokens: int  # positions of the loss benchmark
    row_tokens: int  # tokens per packed training row (train and fsdp)
    train_steps: int  # `distill train` steps, one row each; the first is warm-up
    fsdp_steps: int  # timed fsdp steps after one warm-up step
    grpo_prompts: int  # arith:train prompts (--limit)
    grpo_group: int  # G
    grpo_batch: int  # completions per step
    grpo_tokens: int  # new tokens: at 16, 42% of the random student's pass `lang`, 13 of 16 groups differ (measured)
    grpo_steps: int


FULL = Plan(
    rows=151_936,
    regular_tokens=151_643,
    student=Shape(hidden=1536, layers=28, heads=12, kv_heads=2, mlp=8960, tied=True),  # students/qwen-1.5b.yaml
    teacher=Shape(hidden=3584, layers=28, heads=28, kv_heads=4, mlp=18944, tied=False),  # Qwen2.5-7B
    dtype="bfloat16",
    part_cap_s=300,
    gen_prompts=64,
    gen_samples=2,
    gen_tokens=256,
    max_model_len=2048,
    ratio_prompts=128,
    ratio_tokens=128,
    ratio_repeats=2,
    loss_tokens=16_384,
    row_tokens=16_384,
    train_steps=4,
    fsdp_steps=2,
    grpo_prompts=16,
    grpo_group=4,
    grpo_batch=16,
    grpo_tokens=16,
    grpo_steps=3,
)
TINY = Plan(
    rows=4096,
    regular_tokens=3803,
    student=Shape(hidden=128, layers=2, heads=4, kv_heads=2, mlp=256, tied=True),  # head size 32: vLLM CPU's least
    teacher=Shape(hidden=256, layers=2, heads=8, kv_heads=2, mlp=512, tied=False),
    dtype="float32",
    part_cap_s=300,
    gen_prompts=8,
    gen_samples=2,
    gen_tokens=32,
    max_model_len=512,
    ratio_prompts=8,
    ratio_tokens=16,
    ratio_repeats=1,
    loss_tokens=8192,  # two chunks at 4,096 rows
    row_tokens=512,
    train_steps=2,
    fsdp_steps=1,
    grpo_prompts=8,
    grpo_group=4,
    grpo_batch=8,
    grpo_tokens=48,  # the tiny vocabulary's tokens are shorter: ~83% pass `lang` at 48
    grpo_steps=3,
)


def teacher_that_fits(plan: Plan, gpu_bytes: int) -> Shape:
    """The teacher shape with as many layers (≤ 28) as keep its 2-byte weights under 35% of the GPU."""
    one_layer = replace(plan.teacher, layers=1).params(plan.rows) - replace(plan.teacher, layers=0).params(plan.rows)
    room = 0.35 * gpu_bytes / 2 - replace(plan.teacher, layers=0).params(plan.rows)
    return replace(plan.teacher, layers=max(1, min(plan.teacher.layers, int(room // one_layer))))


# ---------------------------------------------------------------------------------------------
# the tokenizer and the random-weight models (worker "build")


def multilingual_corpus(seed: int = 0) -> list[str]:
    """distill's tiny-model corpus plus words in three scripts (3 Latin : 1 Cyrillic : 1 Greek)."""
    from distill.models.tiny import default_corpus

    rng = random.Random(seed)
    alphabets = ["abcdefghijklmnopqrstuvwxyz", "абвгдежзийклмнопрстуфхцчшщыэюя", "αβγδεζηθικλμνξοπρστυφχψω"]
    lines = []
    for _ in range(3000):
        scripts = rng.choices(alphabets, weights=[3, 1, 1], k=12)
        lines.append(" ".join("".join(rng.choices(a, k=rng.randint(2, 7))) for a in scripts))
    return default_corpus(seed) + lines


def build_tokenizer(regular: int, rows: int, seed: int = 0) -> Any:
    """A byte-level BPE `PreTrainedTokenizerFast` of exactly `rows` tokens: `regular` BPE tokens, then
    distill's Qwen-style special tokens, then `<|reserved_N|>` tokens up to `rows`.

    A BPE is trained on the corpus (a few thousand merges) and then extended with merges of random pairs
    of its tokens until it has `regular` tokens: every merge joins two existing tokens, so the vocabulary
    stays a valid BPE and decode(encode(text)) == text. About 20 s on 2 CPU cores at 151,643 tokens.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from distill.models.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS

    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=min(8000, regular // 4), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    base.train_from_iterator(multilingual_corpus(seed), trainer)
    data = json.loads(base.to_str())
    vocab, merges = data["model"]["vocab"], data["model"]["merges"]
    rng = random.Random(seed)
    pool = [t for t, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i >= 256]  # merged tokens, not bytes
    while len(vocab) < regular:
        a, b = rng.choice(pool), rng.choice(pool)
        if a + b in vocab or len(a + b) > 24:
            continue
        vocab[a + b] = len(vocab)
        merges.append([a, b])
        pool.append(a + b)
    tok = Tokenizer.from_str(json.dumps(data))
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS])
    reserved = rows - tok.get_vocab_size(with_added_tokens=True)
    tok.add_special_tokens([AddedToken(f"<|reserved_{i}|>", special=True) for i in range(reserved)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
    )
    text = "What is 12 + 7? Please reason step by step. привет мир, γεια σου"
    if len(fast) != rows or fast.decode(fast(text)["input_ids"]) != text:
        raise RuntimeError(f"the offline tokenizer has {len(fast)} tokens (want {rows}) or does not round-trip text")
    return fast


def build_model(out: Path, shape: Shape, rows: int, tokenizer: Any, device: str, dtype: str) -> dict[str, Any]:
    """Save a random-weight Qwen2ForCausalLM of `shape` with its tokenizer to `out`, initialised on `device`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config

    start = time.perf_counter()
    eos, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id
    config = Qwen2Config(
        vocab_size=rows,
        hidden_size=shape.hidden,
        intermediate_size=shape.mlp,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=32768,
        tie_word_embeddings=shape.tied,
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it is fast: 7.6B parameters take minutes on CPU
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    tokenizer.save_pretrained(out)
    GenerationConfig(eos_token_id=eos, pad_token_id=pad).save_pretrained(out)
    size = sum(f.stat().st_size for f in out.iterdir() if f.suffix == ".safetensors")
    return {
        **asdict(shape),
        "rows": rows,
        "params_billions": round(params / 1e9, 3),
        "weights_gib": round(size / 2**30, 2),
        "seconds": round(time.perf_counter() - start, 1),
    }


def worker_build(work: Path, plan: Plan, device: str) -> dict[str, Any]:
    import torch

    start = time.perf_counter()
    tokenizer = build_tokenizer(plan.regular_tokens, plan.rows)
    tokenizer_s = time.perf_counter() - start
    teacher = plan.teacher
    if device == "cuda":
        teacher = teacher_that_fits(plan, torch.cuda.get_device_properties(0).total_memory)
    return {
        "tokenizer": {"tokens": len(tokenizer), "regular": plan.regular_tokens, "seconds": round(tokenizer_s, 1)},
        "student": build_model(work / "student", plan.student, plan.rows, tokenizer, device, plan.dtype),
        "teacher": build_model(work / "teacher", teacher, plan.rows, tokenizer, device, plan.dtype),
    }


# ---------------------------------------------------------------------------------------------
# worker "ratio": scripts/bench_generate.py's two measures, on the teacher


def worker_ratio(work: Path, plan: Plan, device: str) -> dict[str, Any]:
    from distill.engines.vllm_engine import CPU_ENV, VLLMEngine

    absent = [k for k in CPU_ENV if k not in os.environ]
    sys.path.insert(0, str(REPO / "scripts"))
    import bench_generate as bench  # sets vLLM's CPU settings as defaults on import

    if device == "cuda":  # they are for CPUs only (TORCHDYNAMO_DISABLE would switch off vLLM's compilation)
        for k in absent:
            os.environ.pop(k, None)
    engine = VLLMEngine(
        str(work / "teacher"),
        dtype=plan.dtype,
        max_model_len=plan.max_model_len,
        max_logprobs=TOP_K,
        gpu_memory_utilization=0.85,
    )
    requests = [
        bench.Request((str(i), 0), [1 + (i * 7 + j) % 400 for j in range(32)], bench.request_seed(0, str(i), 0))
        for i in range(plan.ratio_prompts)
    ]
    bench.bare_vllm(engine, requests[:8], 8)  # warm-up of both paths
    bench.distill_path(engine, requests[:8], 8, TOP_K, plan.rows, work / "ratio-warmup")
    runs: dict[str, list[float]] = {"bare": [], "k20": []}
    for r in range(plan.ratio_repeats):  # alternating, so machine noise hits both alike
        runs["bare"].append(bench.bare_vllm(engine, requests, plan.ratio_tokens))
        runs["k20"].append(
            bench.distill_path(engine, requests, plan.ratio_tokens, TOP_K, plan.rows, work / f"ratio-{r}")
        )
    bare, k20 = statistics.median(runs["bare"]), statistics.median(runs["k20"])
    return {
        "prompts": plan.ratio_prompts,
        "new_tokens": plan.ratio_tokens,
        "repeats": plan.ratio_repeats,
        "bare_tokens_per_s": round(bare),
        "k20_tokens_per_s": round(k20),
        "ratio_k20": round(k20 / bare, 3),
    }


# ---------------------------------------------------------------------------------------------
# worker "loss": chunked against naive at the student's output layer


def worker_loss(work: Path, plan: Plan, device: str) -> dict[str, Any]:
    import numpy as np
    import torch

    from distill.cache.synthetic import lm_like_logprobs, zipf_topk_ids
    from distill.losses import auto_chunk_size, distill_loss, measure_peak_memory, naive_distill_loss

    t, v, h = plan.loss_tokens, plan.rows, plan.student.hidden
    rng, g = np.random.default_rng(0), torch.Generator().manual_seed(0)
    # fp32 leaves, as the trainer's hidden states and master weights are; autocast makes the matmul bf16
    hidden = torch.randn(t, h, generator=g).to(device).requires_grad_()  # (T, H)
    weight = (torch.randn(v, h, generator=g) * 0.02).to(device).requires_grad_()  # (V, H)
    targets = torch.randint(0, v, (t,), generator=g).to(device)
    ids = torch.from_numpy(zipf_topk_ids(rng, t, TOP_K, v, 1.1)).long().to(device)  # (T, k)
    lps = torch.from_numpy(lm_like_logprobs(rng, t, TOP_K)).to(device)  # (T, k)
    cuda = device == "cuda"

    def step(fn: Any) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            out = fn(hidden, weight, targets, ids, lps, alpha=0.5)
        out.loss.backward()

    def seconds(fn: Any) -> float:
        hidden.grad = weight.grad = None
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step(fn)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    figures: dict[str, Any] = {"tokens": t, "rows": v, "hidden": h, "chunk_size": auto_chunk_size(v)}
    for name, fn in (("chunked", distill_loss), ("naive", naive_distill_loss)):
        try:
            seconds(fn)  # warm-up: kernels, autocast's weight copy
            hidden.grad = weight.grad = None
            peak = measure_peak_memory(lambda fn=fn: step(fn), device)
            s = statistics.median(seconds(fn) for _ in range(3))
            figures[name] = {"ms": round(s * 1e3, 1), "tokens_per_s": round(t / s), "peak_gib": round(peak / 2**30, 3)}
        except torch.OutOfMemoryError:  # the naive loss may not fit at all: that is a figure, not a failure
            figures[name] = {"out_of_memory": True}
        hidden.grad = weight.grad = None
        if cuda:
            torch.cuda.empty_cache()
    if "peak_gib" in figures["chunked"] and "peak_gib" in figures.get("naive", {}):
        figures["peak_ratio"] = round(figures["chunked"]["peak_gib"] / figures["naive"]["peak_gib"], 4)
        figures["speed_ratio"] = round(figures["chunked"]["tokens_per_s"] / figures["naive"]["tokens_per_s"], 3)
    return figures


# ---------------------------------------------------------------------------------------------
# worker "fsdp": distill's StudentLoss sharded with FSDP2 at world size 1 (under torchrun)


def synthetic_records(count: int, length: int, vocab: int, seed: int = 0) -> list[Any]:
    """`count` cache records of `length` tokens (64 of prompt) with Zipf top-k ids and LM-like logprobs."""
    import numpy as np

    from distill.cache import Record
    from distill.cache.synthetic import lm_like_logprobs, zipf_topk_ids

    rng = np.random.default_rng(seed)
    out = []
    for r in range(count):
        t = length - 64
        ids = zipf_topk_ids(rng, t, TOP_K, vocab, 1.1)
        out.append(
            Record(
                prompt_ids=rng.integers(0, vocab, 64).astype(np.int32),
                completion_ids=ids[:, 0].copy(),
                topk_ids=ids,
                topk_logprobs=lm_like_logprobs(rng, t, TOP_K),
                sampled_logprobs=np.zeros(t, np.float32),
                meta={"prompt_id": str(r), "sample_index": 0},
            )
        )
    return out


def worker_fsdp(work: Path, plan: Plan, device: str) -> dict[str, Any] | None:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM

    import distill.train as train_stage
    from distill.data import collate

    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    cuda = device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    student = work / "student"
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    model.gradient_checkpointing_enable()
    model = model.train().to(dev)
    cfg = train_stage.TrainConfig(student=str(student), cache="-", max_length=plan.row_tokens, batch_rows=world)
    module = train_stage.StudentLoss(model, cfg).to(dev)
    for layer in model.model.layers:  # as distill.train shards: every decoder layer, then the root
        fully_shard(layer)
    fully_shard(module)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5, betas=(0.9, 0.95))
    rows = [[record] for record in synthetic_records(1, plan.row_tokens, plan.rows, seed=rank)]
    batch = collate(rows, plan.row_tokens, 0, TOP_K, 0)  # one packed row; pad id 0
    for name, value in vars(batch).items():
        if isinstance(value, torch.Tensor):
            setattr(batch, name, value.to(dev))
    times, losses = [], []
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(1 + plan.fsdp_steps):  # the first step warms up
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            out = module(batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - start)
        losses.append(float(out.loss.detach()))
    sharded = all(isinstance(p, DTensor) for p in module.parameters())
    peak = torch.cuda.max_memory_allocated(dev) if cuda else None
    dist.destroy_process_group()
    if rank != 0:
        return None
    step_s = statistics.median(times[1:])
    return {
        "world": world,
        "backend": "nccl" if cuda else "gloo",
        "parameters_are_dtensors": sharded,
        "row_tokens": plan.row_tokens,
        "step_s": round(step_s, 3),
        "row_tokens_per_s": round(plan.row_tokens * world / step_s),
        "losses": [round(x, 4) for x in losses],
        "peak_allocated_gib": None if peak is None else round(peak / 2**30, 2),
    }


WORKERS = {"build": worker_build, "ratio": worker_ratio, "loss": worker_loss, "fsdp": worker_fsdp}


def run_worker(name: str, work: Path, tiny: bool) -> None:
    """Entry point of a worker process: run it and write its figures to WORK/results/NAME.json."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    figures = WORKERS[name](work, TINY if tiny else FULL, device)
    if figures is not None:
        (work / "results").mkdir(exist_ok=True)
        (work / "results" / f"{name}.json").write_text(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("worker", choices=sorted(WORKERS))
    parser.add_argument("--work", type=Path, required=True, help="gpu_check's working directory")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes")
    args = parser.parse_args()
    run_worker(args.worker, args.work.resolve(), args.tiny)


if __name__ == "__main__":
    main()
