"""Pretrain the bundled base student of the embedded default: a small Qwen2 that knows arithmetic, not the task.

Real students are pretrained base models (Qwen2.5-Math-1.5B under R1-Distill-Qwen-1.5B): distillation
teaches them to reason, not to count. This is the miniature of that: a Qwen2 with a quarter of the
arith teacher's parameters or fewer (hidden 64, 4 layers, 2 heads of 32, MLP 192: 230k parameters,
0.22× the teacher's 1.05M) and the teacher's tokenizer, trained as a plain language model on lines
of arithmetic ("19 * 3 = 57": the operations `arith:train` problems need, plus new pairs of operands
drawn as the task's are; `arith.arithmetic_facts`). It never sees a `<think>` block, a problem
statement, a chain of thought or a boxed answer, so what it learns from the teacher is the reasoning.

Reproducible by seed, CPU only: 4,000 steps of 16 rows × 256 tokens take about 7 minutes on 2 cores.
Prints the held-out accuracy of its arithmetic (greedy completion of "a op b =" on facts it never
trained on): 91.8% for the bundled one.

`--tokenizer own` makes the cross-tokenizer student instead (`students/arith-student-bpe`): a model of
the same shape from another family (Llama) on a byte-level BPE of the same size (512) trained on other
text (arithmetic lines and task problems) with GPT-2's pre-tokenizer, so it spells numbers as whole
tokens ("Ġ17") where the Qwen-style teacher spells every digit ("Ġ", "1", "7") — as Llama 3's tokenizer
groups up to three digits and Qwen's splits each. `--tokenizer bytes` makes `students/arith-student-bytes`:
the same Llama on bytes (a byte-level BPE without merges: 256 tokens and the special ones, its embedding
padded to 512 rows so the parameter count is arith-student's): digits spelled as the teacher spells them,
every word and operator in pieces.

    python scripts/pretrain_arith_student.py [--steps 4000] [--seed 0] [--tokenizer teacher|own] --install
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPECIAL_TOKENS = 5  # distill.models.tiny.SPECIAL_TOKENS
STUDENT = dict(hidden_size=64, num_layers=4, num_heads=2, num_kv_heads=1, intermediate_size=192)
TEACHER_DIR = REPO / "teachers" / "arith-teacher"
TARGETS = {
    "teacher": REPO / "students" / "arith-student",
    "own": REPO / "students" / "arith-student-bpe",
    "bytes": REPO / "students" / "arith-student-bytes",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--rows", type=int, default=16, help="packed rows per step")
    parser.add_argument("--length", type=int, default=256, help="tokens per packed row")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--facts", type=int, default=200_000, help="lines of arithmetic to train on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher", type=Path, default=TEACHER_DIR, help="whose tokenizer the student shares")
    parser.add_argument(
        "--tokenizer", choices=sorted(TARGETS), default="teacher",
        help="the teacher's tokenizer (arith-student), or one of its own for cross-tokenizer KD: own "
        "(arith-student-bpe) or bytes (arith-student-bytes)",
    )  # fmt: skip
    parser.add_argument("--work", type=Path, default=None, help="[runs/<student name>]")
    parser.add_argument("--install", action="store_true", help="copy the result into students/<student name>")
    args = parser.parse_args()
    target = TARGETS[args.tokenizer]
    args.work = args.work or REPO / "runs" / target.name
    model_dir = pretrain(args)
    if args.install:
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(model_dir, target)
        print(f"installed {target}")


def pretrain(args: argparse.Namespace) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.models.tiny import build_tiny_model
    from distill.tasks import arith

    torch.manual_seed(args.seed)
    shutil.rmtree(args.work, ignore_errors=True)
    # the teacher's tokenizer, so the student reads the teacher's cache token for token; or one of its own
    if args.tokenizer == "teacher":
        tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    else:
        tokenizer = own_tokenizer(args.seed, 512 if args.tokenizer == "own" else 256 + SPECIAL_TOKENS)
    init = build_tiny_model(
        args.work / "init",
        seed=args.seed,
        max_position_embeddings=512,
        tokenizer=tokenizer,
        model_vocab_size=512,
        **STUDENT,
        family="qwen2" if args.tokenizer == "teacher" else "llama",
    )
    tok = AutoTokenizer.from_pretrained(init)
    model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32)
    print(f"student: {sum(p.numel() for p in model.parameters()):,} parameters, vocabulary {len(tok)}")

    facts = arith.arithmetic_facts(args.facts + 2000, args.seed)
    held_out, facts = facts[:2000], facts[2000:]
    held = set(held_out)
    facts = [f for f in facts if f not in held]
    stream = tok("\n".join(facts) + "\n", add_special_tokens=False)["input_ids"]
    data = torch.tensor(stream[: len(stream) // args.length * args.length]).view(-1, args.length)
    optim = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = args.steps // 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim,
        lambda s: (
            (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (args.steps - warmup)))
        ),
    )
    rng = random.Random(args.seed)
    model.train()
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = data[rng.sample(range(len(data)), args.rows)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == args.steps:
            print(f"step {step}/{args.steps}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f}s", flush=True)
    model.eval()
    print(f"held-out arithmetic, greedy: {fact_accuracy(model, tok, held_out[:500]):.1%} of 500 facts")
    out = args.work / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    return out


def own_tokenizer(seed: int, vocab_size: int):
    """A byte-level BPE with the teacher's special tokens, trained on arithmetic lines and problem text (at 261
    tokens: the 256 bytes and the special tokens, no merges)."""
    from distill.models.tiny import build_tokenizer
    from distill.tasks import arith

    text = [f"{r['prompt']}\n{r['completion']}" for r in arith.problems("train")[:3000]]
    return build_tokenizer(arith.arithmetic_facts(20_000, seed) + text, vocab_size)


def fact_accuracy(model, tok, facts: list[str]) -> float:
    """Share of facts "a op b = c" whose c the model completes exactly from "a op b =" (greedy)."""
    import torch

    right = 0
    for fact in facts:
        head, _, want = fact.rpartition(" = ")
        ids = torch.tensor([tok("\n" + head + " =", add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        got = tok.decode(out[0, ids.shape[1] :]).split("\n")[0].strip()
        right += got == want
    return right / len(facts)


if __name__ == "__main__":
    main()
