"""Every command's settings as one typed, documented, self-validating dataclass.

The config is the interface: the CLI makes each command's options and `--help` from its fields
(types, defaults, `Literal` choices, field docstrings), and the Python API takes the same object:

    from distill.configs import TrainConfig
    from distill.train import run_train
    run_train(TrainConfig(student="arith-student", cache="demo-out/cache", view="correct", max_steps=100))

Constructing a config validates it; every problem is reported in one `DistillError`.
"""

from distill.configs.base import Config, field_docs
from distill.configs.demo import DemoConfig
from distill.configs.experiments import CompareConfig, RunsConfig
from distill.configs.judge import EvalConfig, FilterConfig
from distill.configs.onpolicy import OnPolicyConfig
from distill.configs.student import GRPOConfig, TrainConfig
from distill.configs.teacher import GenerateConfig, ScoreConfig, ServeConfig

__all__ = [
    "CompareConfig",
    "Config",
    "DemoConfig",
    "EvalConfig",
    "FilterConfig",
    "GRPOConfig",
    "GenerateConfig",
    "OnPolicyConfig",
    "RunsConfig",
    "ScoreConfig",
    "ServeConfig",
    "TrainConfig",
    "field_docs",
]
