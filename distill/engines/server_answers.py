"""What distill asks a vLLM server (`/v1/completions` bodies) and how it reads the answers back into arrays.

The shapes are vLLM's (vllm/entrypoints/openai/completion/protocol.py and serving.py):

- a generation answer's choice has `token_ids` (with `return_token_ids`) and `logprobs`: per position `tokens`
  ("token_id:N" with `return_tokens_as_token_ids`), `token_logprobs` (the sampled token's) and `top_logprobs`, a
  dict {"token_id:N": logprob} of the sampled token followed by the top-k in rank order — the sampled token once,
  first, when it is itself in the top-k (the dict keeps its first place), so a position has k + 1 or k entries;
- a scoring answer's choice has vLLM's `prompt_logprobs`: per prompt position (None at the first) a dict
  {"N": {"logprob", "rank", "decoded_token"}} of the given token, then the top-k, in the same way, with ranks;
- a −inf logprob is written as −9999 (JSON has no infinity).

The top-k is rebuilt in rank order from that layout: after the first entry when there are k + 1, else with the
first entry put at its rank (scoring) or by its logprob, before lower and first among equal ones (generation,
which gives no ranks: only the order of exactly tied entries can differ from the in-process engine's).
Anything else is an `UnusableAnswer`, which the engine turns into a sentence naming the server.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

TOKEN_ID = "token_id:"
LOGPROB_FLOOR = -9999.0  # vLLM's JSON stand-in for a −inf logprob
MASK_BIAS = -100.0  # the lowest logit bias vLLM's API takes (it clamps to ±100)


class UnusableAnswer(Exception):
    """A server's answer lacks what distill asked for (logprobs, ids): not a vLLM answer to this request."""


def generate_body(
    prompt: list[int],
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    stops: list[int],
    width: int,
    mask: dict[str, float] | None,
) -> dict[str, Any]:
    """One sample of `prompt` (ids), with `width` logprobs per position; `mask`: logit biases of padding rows."""
    return {
        "prompt": [int(t) for t in prompt],
        "max_tokens": int(max_tokens),
        "temperature": float(temperature),
        "top_p": float(top_p),
        # the rest of vLLM's sampling, pinned: a server's defaults (from the model's generation_config) never apply
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "seed": int(seed),
        "stop_token_ids": [int(t) for t in stops],
        "logprobs": width,
        "logit_bias": mask,
        "return_tokens_as_token_ids": True,
        "return_token_ids": True,
    }


def score_body(ids: list[int], width: int) -> dict[str, Any]:
    """`width` prompt logprobs at every position of `ids` (prompt + completion); one greedy token, unused."""
    return {"prompt": [int(t) for t in ids], "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": width}


def read_generated(answer: Any, width: int, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """(T, width) top ids and logprobs in rank order, (T,) completion ids and their logprobs, and the finish reason
    of a generation answer; `rows`: the model's output rows (ids at or above are wrong)."""
    choice = _choice(answer)
    token_ids, lp = choice.get("token_ids"), choice.get("logprobs")
    if not isinstance(token_ids, list) or not isinstance(lp, dict) or not isinstance(lp.get("top_logprobs"), list):
        raise UnusableAnswer("answered without token ids or logprobs (is it vLLM?)")
    if lp.get("tokens") != [f"{TOKEN_ID}{t}" for t in token_ids] or len(lp["top_logprobs"]) != len(token_ids):
        raise UnusableAnswer("answered logprobs of other tokens than the ones it generated")
    entries = []
    for position in lp["top_logprobs"]:
        if not isinstance(position, dict) or not all(k.startswith(TOKEN_ID) for k in position):
            raise UnusableAnswer("answered logprobs not keyed by token id (return_tokens_as_token_ids)")
        entries.append([(int(k[len(TOKEN_ID) :]), v) for k, v in position.items()])
    ids, lps = rank_order(entries, width, None, rows)
    completion = np.asarray(token_ids, np.int32)
    sampled = _numbers(lp.get("token_logprobs"), len(completion))
    return ids, lps, completion, sampled, str(choice.get("finish_reason"))


def read_prompt(
    answer: Any, prompt: list[int], start: int, width: int, rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, width) top ids and logprobs in rank order and (T,) the given tokens' logprobs at prompt positions
    `start`.. of a scoring answer (T = len(prompt) − start)."""
    per_position = _choice(answer).get("prompt_logprobs")
    if not isinstance(per_position, list) or len(per_position) != len(prompt):
        raise UnusableAnswer("answered without prompt logprobs for every position (is it vLLM?)")
    entries, ranks = [], []
    for t in range(start, len(prompt)):
        row = per_position[t]
        if not isinstance(row, dict) or next(iter(row), None) != str(prompt[t]):
            raise UnusableAnswer(f"answered prompt logprobs of another token than {prompt[t]} at position {t}")
        if not all(isinstance(v, dict) for v in row.values()):
            raise UnusableAnswer("answered prompt logprobs without ranks (is it vLLM?)")
        entries.append([(int(k), v.get("logprob")) for k, v in row.items()])
        ranks.append([v.get("rank") for v in row.values()])
    sampled = _numbers([e[0][1] for e in entries], len(entries))
    ids, lps = rank_order(entries, width, ranks, rows)
    return ids, lps, sampled


def rank_order(
    entries: list[list[tuple[int, Any]]], width: int, ranks: list[list[Any]] | None, rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """(T, width) ids and logprobs of each position's top-`width`, from vLLM's {actual, top...} entries (see the
    module docstring); ranks: each entry's rank (scoring), or None (generation: placed by logprob)."""
    out_ids = np.zeros((len(entries), width), np.int64)
    out_lps = []
    for t, row in enumerate(entries):
        if len(row) == width + 1:
            top = row[1:]
        elif len(row) == width:
            if ranks is not None:
                if not all(isinstance(r, int) for r in ranks[t]):
                    raise UnusableAnswer("answered prompt logprobs without ranks (is it vLLM?)")
                order = sorted(range(width), key=lambda i: ranks[t][i])
            else:
                order = _by_logprob(row)
            top = [row[i] for i in order]
        else:
            raise UnusableAnswer(f"answered {len(row)} logprobs at a position, not the {width} asked for")
        out_ids[t] = [i for i, _ in top]
        out_lps.append([v for _, v in top])
    if out_ids.size and (out_ids.min() < 0 or out_ids.max() >= rows):
        raise UnusableAnswer(f"answered token ids outside the model's {rows} rows")
    return out_ids.astype(np.int32), _numbers(out_lps, len(entries)).reshape(len(entries), width)


def _by_logprob(row: list[tuple[int, Any]]) -> list[int]:
    """Entry order by logprob, highest first, the first entry (the actual token) first among equals."""
    try:
        return sorted(range(len(row)), key=lambda i: (-float(row[i][1]), i))
    except (TypeError, ValueError):
        raise UnusableAnswer("answered logprobs that are not numbers") from None


def _choice(answer: Any) -> dict[str, Any]:
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UnusableAnswer("answered without a completion")
    return choices[0]


def _numbers(values: Any, positions: int) -> np.ndarray:
    """float32 logprobs of `positions` positions, −9999 read back as −inf (the in-process engine's)."""
    try:
        lps = np.asarray(values, np.float32)
    except (TypeError, ValueError):
        raise UnusableAnswer("answered logprobs that are not numbers") from None
    if len(lps) != positions or np.isnan(lps).any():
        raise UnusableAnswer("answered logprobs that are not numbers, or not one per position")
    return np.where(lps <= LOGPROB_FLOOR, -math.inf, lps).astype(np.float32)
