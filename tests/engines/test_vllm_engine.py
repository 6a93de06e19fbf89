"""distill.engines.vllm_engine on the real vLLM CPU build: weight sync, the CPU build's seeded prefill, and the
sentence a user gets where vLLM is not installed.

- after `load_weights`, vLLM's logprobs of a perturbed policy match the trainer's (grpo's weight sync);
- 120 seeded GSM8K prompts, more than one prefill step holds, generate without crashing;
- with vLLM unimportable, `distill generate` (vLLM by default) says how to install it and names `--backend hf`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.cache import open_cache
from distill.presets import resolve_preset

TEACHER = Path(resolve_preset("arith-teacher", "teacher").hub_id)
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def distill(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISTILL_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True, text=True, env=env)


SYNC_CHECK = """
import sys, torch
from transformers import AutoModelForCausalLM
from distill.engines import Request, SamplingSpec
from distill.engines.vllm_engine import VLLMEngine

model_dir = sys.argv[1]
engine = VLLMEngine(model_dir, dtype="float32", max_model_len=512, max_logprobs=1)
policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
torch.manual_seed(0)
with torch.no_grad():
    for p in policy.parameters():
        p.add_(0.05 * torch.randn_like(p))

def gap(seed):
    spec = SamplingSpec(1.0, 1.0, 24, 0, [])
    c = next(engine.generate([Request(("p", seed), [5, 9, 14, 20, 31, 7], seed)], spec))
    ids = torch.tensor([list(c.prompt_ids) + list(c.completion_ids)])
    with torch.no_grad():
        lp = torch.log_softmax(policy(ids).logits[0, len(c.prompt_ids) - 1 : -1], -1)
    mine = lp.gather(-1, torch.tensor(c.completion_ids).long()[:, None])[:, 0]
    return (mine - torch.tensor(c.sampled_logprobs)).abs().max().item()

before = gap(1)
engine.load_weights(policy.state_dict())
print(before, gap(2))
"""


@pytest.mark.vllm
def test_vllm_logprobs_match_the_trainer_after_load_weights() -> None:
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.run([sys.executable, "-c", SYNC_CHECK, str(TEACHER)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = map(float, proc.stdout.split()[-2:])
    assert before > 0.1  # the perturbation is visible to the engine's old weights...
    assert after < 1e-4  # ...and gone once the new ones are loaded


@pytest.mark.vllm
def test_many_seeded_prompts_beyond_one_prefill_batch(tiny_model: Path, tmp_path: Path) -> None:
    """Regression: 120 GSM8K prompts (~36k prompt tokens) overflow vLLM's 4,096-token step budget; with
    chunked prefill the CPU build crashed on seeded requests ("CPU Generator does not use offset")."""
    out = distill(
        "generate",
        "--teacher",
        str(tiny_model),
        "--prompts",
        str(DATA / "gsm8k_test.jsonl"),
        "--mapping",
        "gsm8k",
        "--limit",
        "120",
        "--max-new-tokens",
        "2",
        "--top-k",
        "2",
        "--dtype",
        "float32",
        home=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(open_cache(Path(out.stdout.strip().splitlines()[-1]))) == 120


@pytest.mark.slow
def test_missing_vllm_says_how_to_install_and_mentions_hf(tiny_model: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "4"}) + "\n")
    code = (
        "import sys; sys.modules['vllm'] = None; sys.argv = ['distill', 'generate', '--teacher', sys.argv[1], "
        "'--prompts', sys.argv[2]]; import distill.cli; distill.cli.main()"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tiny_model), str(prompts)],
        capture_output=True,
        text=True,
        env={**os.environ, "DISTILL_HOME": str(tmp_path)},
    )
    assert out.returncode == 1 and "vLLM is not installed" in out.stderr and "--backend hf" in out.stderr
    assert not list((tmp_path / "caches").glob("*/index.json"))  # nothing that looks like a cache
