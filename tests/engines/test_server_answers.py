"""distill.engines.server_answers: vLLM's /v1/completions answers read back into the in-process engine's arrays.

The answers are in the layout vLLM 0.32 writes (copied from a real server's answers, then cut down): per
position the actual token first, then the top-k in rank order without it, so a position has k + 1 entries, or
k when the actual token is among its top-k. The top-k must come back in rank order either way, with the ids of a
padded vocabulary checked, −9999 read as −inf, and a foreign answer refused with a reason.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from distill.engines.server_answers import UnusableAnswer, read_generated, read_prompt

ROWS = 512

# three generated tokens at logprobs=3: the sampled token is the best (k entries), the second best (k entries),
# and outside the top-3 (k + 1 entries)
GENERATED = {
    "choices": [
        {
            "index": 0,
            "text": "  =2",
            "logprobs": {
                "text_offset": [0, 12, 24],
                "token_logprobs": [-0.2665524482727051, -1.1205432415008545, -2.7178878784179688],
                "tokens": ["token_id:225", "token_id:283", "token_id:22"],
                "top_logprobs": [
                    {"token_id:225": -0.2665524482727051, "token_id:273": -2.142660617828369, "token_id:21": -9999.0},
                    {"token_id:283": -1.1205432415008545, "token_id:286": -0.8572471141815186, "token_id:26": -1.92},
                    {
                        "token_id:22": -2.7178878784179688,
                        "token_id:21": -1.6128751039505005,
                        "token_id:350": -1.9856868982315063,
                        "token_id:346": -1.988622784614563,
                    },
                ],
            },
            "finish_reason": "length",
            "token_ids": [225, 283, 22],
        }
    ]
}

# prompt [5, 6, 7, 8] with prompt_logprobs=2: the given token ranks 431st (outside), 2nd (inside), 1st (inside)
PROMPT = [5, 6, 7, 8]
SCORED = {
    "choices": [
        {
            "prompt_logprobs": [
                None,
                {
                    "6": {"logprob": -12.2005615234375, "rank": 431, "decoded_token": '"'},
                    "225": {"logprob": -0.3562702536582947, "rank": 1, "decoded_token": " "},
                    "273": {"logprob": -1.881784439086914, "rank": 2, "decoded_token": " +"},
                },
                {
                    "7": {"logprob": -1.7981994152069092, "rank": 2, "decoded_token": "#"},
                    "225": {"logprob": -0.38552117347717285, "rank": 1, "decoded_token": " "},
                },
                {
                    "8": {"logprob": -0.3135049343109131, "rank": 1, "decoded_token": "$"},
                    "273": {"logprob": -1.9957020282745361, "rank": 2, "decoded_token": " +"},
                },
            ],
        }
    ]
}


def test_generated_top_k_comes_back_in_rank_order_wherever_the_sampled_token_ranks() -> None:
    ids, lps, completion, sampled, reason = read_generated(GENERATED, 3, ROWS)
    assert completion.tolist() == [225, 283, 22] and reason == "length"
    assert ids.tolist() == [[225, 273, 21], [286, 283, 26], [21, 350, 346]]
    assert np.allclose(lps[1], [-0.8572471141815186, -1.1205432415008545, -1.92])
    assert lps[0, 2] == -math.inf  # vLLM's −9999 is −inf again
    assert np.allclose(sampled, [-0.2665524482727051, -1.1205432415008545, -2.7178878784179688])
    assert ids.dtype == np.int32 and lps.dtype == np.float32


def test_prompt_logprobs_come_back_in_rank_order_after_the_prompt() -> None:
    ids, lps, given = read_prompt(SCORED, PROMPT, 1, 2, ROWS)
    assert ids.tolist() == [[225, 273], [225, 7], [8, 273]]
    assert np.allclose(given, [-12.2005615234375, -1.7981994152069092, -0.3135049343109131])
    ids, _, given = read_prompt(SCORED, PROMPT, 3, 2, ROWS)  # only the last position (a completion of 1 token)
    assert ids.tolist() == [[8, 273]] and len(given) == 1


def _broken(answer: dict, edit) -> dict:
    out = copy.deepcopy(answer)
    edit(out["choices"][0])
    return out


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda c: c.pop("logprobs"), "without token ids or logprobs"),
        (lambda c: c.pop("token_ids"), "without token ids or logprobs"),
        (lambda c: c.update(token_ids=[225, 283, 23]), "other tokens than the ones it generated"),
        (lambda c: c["logprobs"].update(tokens=[" ", "=", "2"]), "other tokens than the ones it generated"),
        (lambda c: c["logprobs"]["top_logprobs"][0].pop("token_id:21"), "2 logprobs at a position, not the 3"),
        (lambda c: c["logprobs"]["top_logprobs"][1].update({"token_id:26": None}), "not numbers"),
        (lambda c: c["logprobs"].update(token_logprobs=[None, None, None]), "not numbers"),
    ],
)
def test_an_answer_without_what_was_asked_is_refused_with_a_reason(edit, reason: str) -> None:
    with pytest.raises(UnusableAnswer, match=reason):
        read_generated(_broken(GENERATED, edit), 3, ROWS)


def test_ids_beyond_the_models_rows_and_foreign_prompt_logprobs_are_refused() -> None:
    with pytest.raises(UnusableAnswer, match="outside the model's 300 rows"):
        read_generated(GENERATED, 3, 300)
    with pytest.raises(UnusableAnswer, match="another token than 9 at position 1"):
        read_prompt(SCORED, [5, 9, 7, 8], 1, 2, ROWS)
    with pytest.raises(UnusableAnswer, match="prompt logprobs for every position"):
        read_prompt(SCORED, [5, 6, 7, 8, 9], 1, 2, ROWS)
    with pytest.raises(UnusableAnswer, match="without a completion"):
        read_generated({"object": "error"}, 3, ROWS)
