"""Where a student's reverse KL to the teacher sits: digits (the arithmetic) against everything else (the phrasing).

Reads the scores cache of a `distill onpolicy --lr 0` run (the student's own samples with the teacher's logprob
of every token), recomputes the student's logprob of the same tokens with transformers, and splits the
one-sample reverse-KL estimate log π_student(x_t) − log π_teacher(x_t) by token class, with the share of each
class's tokens the teacher finds implausible (teacher probability < 10%: mostly arithmetic slips).

    python scripts/rkl_by_token.py NAME=RUN_DIR [NAME=RUN_DIR ...] [--temperature 1.0]

RUN_DIR is the onpolicy run directory (its run.json names the student; OUT/cache holds the scores).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch


def split(run: Path, temperature: float) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.cache import TeacherCache
    from distill.presets import resolve_preset

    student = resolve_preset(json.loads((run / "run.json").read_text())["config"]["student"], "teacher").hub_id
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(student)
    digit = torch.tensor([t.strip("Ġ").isdigit() for t in tok.convert_ids_to_tokens(list(range(len(tok))))])
    cache = TeacherCache(run / "cache")
    sums = {"digit": [0.0, 0, 0], "other": [0.0, 0, 0]}  # KL sum, tokens, implausible tokens
    for rec in cache.records(list(range(len(cache)))):
        ids = torch.tensor([[*rec.prompt_ids.tolist(), *rec.completion_ids.tolist()]])
        p, t = len(rec.prompt_ids), len(rec.completion_ids)
        with torch.no_grad():
            logits = model(ids).logits[0, p - 1 : p + t - 1].float() / temperature  # (T, V)
        target = torch.as_tensor(rec.completion_ids, dtype=torch.long)
        mine = torch.log_softmax(logits, -1).gather(-1, target[:, None])[:, 0]
        theirs = torch.as_tensor(rec.sampled_logprobs)  # raw: the estimate is the τ = 1 one
        for name, on in (("digit", digit[target]), ("other", ~digit[target])):
            sums[name][0] += float((mine - theirs)[on].sum())
            sums[name][1] += int(on.sum())
            sums[name][2] += int((theirs[on] < math.log(0.1)).sum())
    total = sum(s[1] for s in sums.values())
    out = {"tokens": total, "reverse_kl": sum(s[0] for s in sums.values()) / total}
    for name, (kl, n, bad) in sums.items():
        out[f"{name}_share"] = n / total
        out[f"{name}_reverse_kl"] = kl / max(n, 1)
        out[f"{name}_kl_share"] = kl / max(sum(s[0] for s in sums.values()), 1e-9)
        out[f"{name}_implausible"] = bad / max(n, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args()
    print(f"{'':<12}{'tokens':>8}{'RKL':>8}{'digits':>8}{'RKL dig':>9}{'RKL rest':>9}{'bad dig':>9}{'bad rest':>9}")
    for spec in args.runs:
        name, run = spec.split("=", 1)
        r = split(Path(run), args.temperature)
        print(
            f"{name:<12}{r['tokens']:>8}{r['reverse_kl']:8.3f}{r['digit_share']:8.2f}{r['digit_reverse_kl']:9.3f}"
            f"{r['other_reverse_kl']:9.3f}{r['digit_implausible']:9.3f}{r['other_implausible']:9.3f}"
        )


if __name__ == "__main__":
    main()
