"""The teacher as its own student: KD ≈ 0 at step 1, for every kind, tail mode and temperature it accepts.

This is the check that guards the whole teacher → cache → loss path at once: the engine's logprobs,
the codec (quantised top-k and stored tail), the reader, packing, the chunked loss. A student
identical to the teacher, trained on the teacher's own cache with `--alpha 0 --max-steps 1`, must
log `kd` ≤ 1e-3 nats per position at step 1 (before any update). Two teachers bracket real data:

- the bundled arith teacher: near-certain at three positions in four (the arithmetic), where a
  quantiser that cannot represent p ≈ 1 invents tail mass, and spread over 2–5 valid continuations
  at its forks;
- a random tiny Qwen2: high-entropy, its top-20 holding a few percent of the mass, the tail the rest;
- a flat teacher over a large vocabulary (151,936 tokens, as Qwen's; logits of standard deviation ~0.02, as a
  random-weight model at scale in a GPU smoke test): its top-20 hold 1.4e-4 of the mass, its top-64 4.6e-4,
  near-equal, at top-20 and top-64.

Caches: real vLLM generation (compact precision) for the top-k kinds, and transformers scoring with
`--extra-samples` drawn at the training temperature for sampled KD, at the teacher's top-k.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from distill.errors import DistillError
from distill.generate import GenerateConfig, run_generate
from distill.score import ScoreConfig, run_score
from distill.train import TrainConfig, run_train

pytestmark = pytest.mark.vllm  # every test reads the `caches` fixture, made by real vLLM generation

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_TEACHER = ROOT / "teachers" / "arith-teacher"
BUDGET = 1e-3  # nats per position
# A KL is ≥ 0, but fp32 resolves it only to ~1e-7 where the tail bucket holds nearly everything (the flat teacher's
# top-20 hold 1.4e-4): there its ≈ 0 reads as ±1e-7.
FP32_FLOOR = -1e-6

ACCEPTED_TAILS = (("bucket", 1.0), ("renorm", 1.0), ("renorm", 2.0))  # bucket at τ ≠ 1 is refused (tested below)
TOPK_CASES = [(kd, tail, t) for kd in ("forward", "reverse", "jsd") for tail, t in ACCEPTED_TAILS]
TEACHERS = [("bundled", 20), ("random", 20), ("flat", 20), ("flat", 64)]  # (teacher, top-k)
FLAT_VOCAB = 151_936


@pytest.fixture(scope="module")
def flat_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 over FLAT_VOCAB tokens whose final norm is scaled to 1/10: logits of std ~0.02, nearly uniform.

    The tokenizer is the tiny byte-level BPE one, its vocabulary filled up with three-byte tokens that no merge
    produces (reachable only by sampling, as most of a large vocabulary is from a flat teacher)."""
    import torch
    from tokenizers import Tokenizer, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from distill.models.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tiny_model, build_tokenizer, default_corpus

    doc = json.loads(build_tokenizer(default_corpus(0), 512).backend_tokenizer.to_str())
    vocab, alphabet = doc["model"]["vocab"], sorted(pre_tokenizers.ByteLevel.alphabet())
    words = (a + b + c for a in alphabet for b in alphabet for c in alphabet)
    while len(vocab) < FLAT_VOCAB:
        vocab.setdefault(next(words), len(vocab))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(doc)),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:2] + SPECIAL_TOKENS[3:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )
    out = build_tiny_model(tmp_path_factory.mktemp("flat-teacher"), tokenizer=tok)
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        model.model.norm.weight.mul_(0.1)  # every logit scaled by 1/10 (the embedding is tied: scale after the norm)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=TEACHERS, ids=[f"{name}-k{k}" for name, k in TEACHERS])
def teacher_and_k(request: pytest.FixtureRequest, tiny_model: Path) -> tuple[Path, int]:
    name, k = request.param
    if name == "flat":
        return request.getfixturevalue("flat_teacher"), k  # built only where asked for
    return (BUNDLED_TEACHER if name == "bundled" else tiny_model), k


@pytest.fixture(scope="module")
def teacher(teacher_and_k: tuple[Path, int]) -> Path:
    return teacher_and_k[0]


@pytest.fixture(scope="module")
def caches(teacher_and_k: tuple[Path, int], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The teacher's own caches: vLLM top-k compact, and hf-scored with extra samples at τ = 1 and τ = 2."""
    teacher, top_k = teacher_and_k
    root = tmp_path_factory.mktemp("self")
    generated = run_generate(
        GenerateConfig(
            teacher=str(teacher),
            prompts="arith:test",
            limit=6,
            samples_per_prompt=1,
            max_new_tokens=64,
            top_k=top_k,
            temperature=1.0,
            top_p=1.0,
            dtype="float32",
            precision="compact",
            out=root / "generated",
        )
    )
    out = {"generated": generated}
    for tau in (1.0, 2.0):
        out[f"sampled@{tau}"] = run_score(
            ScoreConfig(
                teacher=str(teacher),
                traces=str(generated),
                backend="hf",
                top_k=top_k,
                dtype="float32",
                extra_samples=8,
                extra_temperature=tau,
                out=root / f"sampled-{tau}",
            )
        )
    return out


def first_step_kd(teacher: Path, cache: Path, out: Path, **kw) -> float:
    cfg = TrainConfig(
        student=str(teacher),
        cache=str(cache),
        out=out,
        alpha=0.0,
        max_steps=1,
        batch_rows=2,
        max_length=512,
        lr=1e-6,
        save_every=1000,
        **kw,
    )
    run_train(cfg)
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["kd"]


@pytest.mark.parametrize(("kd", "tail", "temperature"), TOPK_CASES)
def test_teacher_as_student_sees_no_topk_kd(
    teacher: Path, caches: dict[str, Path], tmp_path: Path, kd: str, tail: str, temperature: float
) -> None:
    value = first_step_kd(teacher, caches["generated"], tmp_path / "run", kd=kd, tail=tail, temperature=temperature)
    print(f"self-distillation {teacher.name} {kd}/{tail} τ={temperature}: kd {value:.2e}")
    assert FP32_FLOOR <= value <= BUDGET


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_teacher_as_student_sees_no_sampled_kd(
    teacher: Path, caches: dict[str, Path], tmp_path: Path, temperature: float
) -> None:
    cache = caches[f"sampled@{temperature}"]
    value = first_step_kd(teacher, cache, tmp_path / "run", kd="sampled", temperature=temperature)
    print(f"self-distillation {teacher.name} sampled τ={temperature}: kd {value:.2e}")
    assert abs(value) <= BUDGET


def test_exact_tails_from_full_logits_give_zero_bucket_kd(
    teacher: Path, caches: dict[str, Path], tmp_path: Path
) -> None:
    """The hf-scored cache stores tails as a logsumexp over the complement of the top-k: exact."""
    value = first_step_kd(teacher, caches["sampled@1.0"], tmp_path / "run", kd="forward", tail="bucket")
    assert FP32_FLOOR <= value <= BUDGET


def test_bucket_at_another_temperature_and_mismatched_samples_are_refused(
    teacher: Path, caches: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(DistillError, match="--tail bucket is exact only at --temperature 1.*--tail renorm"):
        first_step_kd(teacher, caches["generated"], tmp_path / "a", kd="forward", tail="bucket", temperature=2.0)
    with pytest.raises(DistillError, match=r"drew its extra samples at temperature 1.0.*--extra-temperature 2.0"):
        first_step_kd(teacher, caches["sampled@1.0"], tmp_path / "b", kd="sampled", temperature=2.0)
    with pytest.raises(DistillError, match="needs tokens drawn from the teacher.*--extra-samples"):
        first_step_kd(teacher, caches["generated"], tmp_path / "c", kd="sampled")


def test_sampled_kd_through_the_cli(teacher: Path, caches: dict[str, Path], tmp_path: Path) -> None:
    """`distill train --kd sampled --temperature 2` from a cache made by `score --extra-samples`, as a user types it."""
    out = tmp_path / "cli"
    args = ["--student", str(teacher), "--cache", str(caches["sampled@2.0"]), "--kd", "sampled", "--alpha", "0"]
    args += ["--temperature", "2", "--max-steps", "1", "--batch-rows", "2", "--max-length", "512", "--out", str(out)]
    done = subprocess.run([sys.executable, "-m", "distill", "train", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert abs(json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["kd"]) <= BUDGET
