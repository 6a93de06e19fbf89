"""A model's tokenizer as every stage uses it: loading it, the tokens that stop a completion, and
decoding a completion into the text the verifiers read.

Generate and score (the teacher), train and grpo (the student), filter and eval (either) all load
and decode the same way, so this lives in one core module rather than in any stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.errors import DistillError

# The files that make a tokenizer (with its chat template and sampling defaults): a model's fingerprint
# covers them besides its weights, because a changed chat template makes different prompts.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
)


def load_tokenizer(model: str, revision: str | None = None) -> Any:
    """The model's Hugging Face tokenizer, or a sentence saying why it cannot be had."""
    from transformers import AutoTokenizer

    if Path(model).is_absolute() and not Path(model).exists():
        raise DistillError(
            f"Model directory {model} does not exist (the bundled arith teacher and student are made by "
            "`python scripts/train_arith_teacher.py --install`)."
        )
    try:
        return AutoTokenizer.from_pretrained(model, revision=revision)
    except Exception as e:  # OSError, ValueError, hub errors: all mean "not loadable"
        raise DistillError(
            f"Cannot load the tokenizer of {model}: {_first_line(e)}. Check the path or hub id (without hub access, "
            "download the model elsewhere and pass its directory)."
        ) from e


def stop_token_ids(tokenizer: Any, model: str) -> list[int]:
    """Tokens that end a completion: the tokenizer's eos plus the generation config's eos ids."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = Path(model) / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return sorted(ids)


def decode_completion(tokenizer: Any, completion_ids: Any, prompt_ids: Any = None) -> str:
    """A completion as text for the verifiers: special tokens kept (</think> is one), the trailing
    end-of-sequence token dropped, and the `<think>` the prompt primed put back in front."""
    text = tokenizer.decode(list(completion_ids), skip_special_tokens=False)
    for stop in (tokenizer.eos_token, tokenizer.pad_token):
        if stop and text.endswith(stop):
            text = text[: -len(stop)]
    if prompt_ids is not None:
        primed = tokenizer.decode(list(prompt_ids[-8:]), skip_special_tokens=False)
        if primed.rstrip().endswith("<think>") and "<think>" not in text.split("</think>")[0]:
            text = "<think>\n" + text
    return text


def cache_tokenizer(cache: Any) -> Any:
    """The teacher's tokenizer saved with `cache` (a TeacherCache), or a sentence saying why it cannot be loaded."""
    from transformers import AutoTokenizer

    path = cache.tokenizer_path
    if path is None:
        raise DistillError(f"Cache {cache.path} has no saved tokenizer to decode its completions; regenerate it.")
    fix = (
        f"copy the teacher's tokenizer files (tokenizer.json, tokenizer_config.json) into {path}, "
        "or regenerate the cache"
    )
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # OSError, ValueError, JSONDecodeError, the tokenizers library's own: all mean "damaged"
        why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0].rstrip(' :')[:200]}"
        raise DistillError(
            f"Cannot load the tokenizer saved with cache {cache.path} ({why}); its files are missing or damaged: {fix}."
        ) from e
    # Without tokenizer.json, transformers builds a tokenizer of the special tokens alone, which would decode
    # every completion to nothing and let the filter fail every record instead of saying why.
    if all(i in tok.added_tokens_decoder for i in tok.get_vocab().values()):
        raise DistillError(
            f"The tokenizer saved with cache {cache.path} holds special tokens only, no vocabulary "
            f"(is {path / 'tokenizer.json'} missing?): {fix}."
        )
    return tok


def _first_line(e: Exception) -> str:
    """An exception's message as one line (transformers' hub errors run to several)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(" .:")
