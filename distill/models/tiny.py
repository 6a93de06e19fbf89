"""Tiny Qwen2 models and tokenizers built offline, for tests and for the embedded default.

Nothing here touches the hub. The tokenizer is a byte-level BPE (Qwen's own pipeline: transformers
loads any `model_type: qwen2` directory's tokenizer as byte-level BPE, so a word-level tokenizer
would silently lose its spaces), trained in well under a second on a small corpus, with the
special tokens and chat template of a Qwen-style reasoning model. The model is a randomly
initialised `Qwen2ForCausalLM` whose head size (hidden / heads) is at least 32, the smallest the
vLLM CPU attention backend accepts.

    build_tiny_model("/tmp/tiny", vocab_size=512, hidden_size=128)  # → directory HF and vLLM load
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MIN_HEAD_SIZE = 32


def default_corpus(seed: int = 0, lines: int = 2000) -> list[str]:
    """Short English-and-arithmetic lines, enough for a BPE to learn digits, operators and words."""
    rng = random.Random(seed)
    words = "the a of to and is so we add subtract multiply answer step first then result reason final".split()
    out = []
    for _ in range(lines):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice("+-*")
        out.append(f"{' '.join(rng.choices(words, k=6))}: {a} {op} {b} = {eval(f'{a}{op}{b}')}. \\boxed{{{a}}}")
    out.append("Please reason step by step, and put your final answer within \\boxed{}.")
    return out


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 512):
    """A byte-level BPE `PreTrainedTokenizerFast` with Qwen-style special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:2] + SPECIAL_TOKENS[3:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def build_tiny_model(
    out_dir: str | Path,
    vocab_size: int = 512,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    model_vocab_size: int | None = None,
    tokenizer: Any = None,
    family: str = "qwen2",
) -> Path:
    """Save a randomly initialised tiny Qwen2 model and its tokenizer to `out_dir`; returns it.

    `model_vocab_size` pads the embedding beyond the tokenizer (as Qwen2.5 pads 151,665 tokens to
    151,936 rows), e.g. to give a benchmark model a realistic output-layer cost. `tokenizer` (a
    loaded Hugging Face tokenizer) is used instead of training one on `corpus`, e.g. a student
    that must share its teacher's. `family` "llama" makes a `LlamaForCausalLM` of the same shape (no
    q/k/v biases): transformers then loads the tokenizer from tokenizer.json as it is, where a qwen2
    directory's is rebuilt with Qwen's pre-tokenizer (which spells every digit alone).
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if hidden_size // num_heads < MIN_HEAD_SIZE:
        raise ValueError(f"head size {hidden_size // num_heads} < {MIN_HEAD_SIZE}: vLLM's CPU backend would refuse it")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = build_tokenizer(corpus if corpus is not None else default_corpus(seed), vocab_size)
    tokenizer.save_pretrained(out)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config_class, model_class = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[
        family
    ]
    config = config_class(
        vocab_size=max(len(tokenizer), model_vocab_size or 0),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = model_class(config)
    model.save_pretrained(out)
    GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id).save_pretrained(out)
    return out
