"""Config of `distill demo`: the whole pipeline on the embedded default."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from distill.configs.base import Config, at_least


@dataclass(kw_only=True)
class DemoConfig(Config):
    """The whole pipeline on the embedded default.

    Generate, filter, train a KD and an SFT student from the same cache (and with --onpolicy polish the KD student
    on-policy), evaluate them and the teacher, write a report.
    """

    COMMAND = "demo"

    out: Path = Path("demo-out")
    """Directory for the demo's cache, students, evals and report."""
    seed: int = 0
    """Seed for generation, training and evaluation."""
    prompts: int = 4000
    """arith:distill prompts the teacher answers (one sample each)."""
    steps: int = 3000
    """Training steps of each student (4 rows each; the two train side by side): what the 10-minute demo affords
    on 2 CPU cores."""
    eval_problems: int = 200
    """arith:test problems to evaluate on (4 samples each)."""
    kd_temperature: float = 1.0
    """KD temperature τ of the KD student: 1 (the standard setting, where the tail bucket is exact and the teacher's
    entropy at its forks is what KD passes on); other values use the renormalised top-20."""
    kd_alpha: float = 0.5
    """α of the KD student (weight of CE; 1 − α weighs KD). The SFT student has α = 1. Reverse KL alone (α = 0)
    puts no pressure where the base student has no mass, so the CE term is what pulls it onto the teacher's
    support."""
    kd: Literal["forward", "reverse", "jsd"] = "reverse"
    """Divergence of the KD student over the teacher's top-20 + tail: reverse (KL(student ‖ teacher), mode-seeking:
    the student need not cover every fork the teacher keeps open), forward or jsd."""

    onpolicy: bool = False
    """Also polish the KD student on-policy (`distill onpolicy` with its defaults for the bundled student: it samples
    arith:train, the teacher grades every token it wrote) and evaluate it as a fourth student, KD → on-policy."""
    onpolicy_steps: int = 600
    """--onpolicy: steps of the on-policy polish (completions per step: the student preset's batch size)."""

    def problems(self) -> list[str]:
        out = at_least(self.prompts, 1, "--prompts") + at_least(self.steps, 1, "--steps")
        out += at_least(self.onpolicy_steps, 1, "--onpolicy-steps")
        out += at_least(self.eval_problems, 1, "--eval-problems")
        if not 0 <= self.kd_alpha <= 1:
            out.append(f"--kd-alpha must be in [0, 1], got {self.kd_alpha}")
        if not self.kd_temperature > 0:
            out.append(f"--kd-temperature must be > 0, got {self.kd_temperature}")
        return out
