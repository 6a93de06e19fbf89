"""The configs are the interface: every option declared once, documented, validated in one place."""

from __future__ import annotations

import dataclasses
import typing

import click
import pytest
import typer.main
from typer.testing import CliRunner

from distill.cli import COMMANDS, app
from distill.configs import (
    CompareConfig,
    DemoConfig,
    EvalConfig,
    FilterConfig,
    GenerateConfig,
    GRPOConfig,
    OnPolicyConfig,
    RunsConfig,
    ScoreConfig,
    ServeConfig,
    TrainConfig,
    field_docs,
)
from distill.configs.base import field_choices, option
from distill.errors import DistillError

CONFIGS = {
    "generate": GenerateConfig,
    "score": ScoreConfig,
    "serve": ServeConfig,
    "filter": FilterConfig,
    "train": TrainConfig,
    "grpo": GRPOConfig,
    "onpolicy": OnPolicyConfig,
    "eval": EvalConfig,
    "runs": RunsConfig,
    "compare": CompareConfig,
    "demo": DemoConfig,
}


def _click_command(name: str) -> click.Command:
    group = typer.main.get_command(app)
    return group.commands[name]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_option_is_a_documented_config_field(name: str) -> None:
    """The command's options are exactly the config's fields, each with its docstring as help."""
    config = CONFIGS[name]
    fields = {f.name for f in dataclasses.fields(config) if f.init}
    docs = field_docs(config)
    assert fields <= set(docs), f"{name}: fields without a docstring: {sorted(fields - set(docs))}"
    params = {p.name: p for p in _click_command(name).params if p.name != "help"}
    assert set(params) == fields
    for field_name, param in params.items():
        assert param.help == docs[field_name]  # type: ignore[attr-defined]
    assert set(COMMANDS) == set(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_literal_fields_become_choices(name: str) -> None:
    """`--help` lists a Literal field's values, and the CLI refuses any other value before running anything."""
    runner = CliRunner()
    shown = runner.invoke(app, [name, "--help"]).output
    for field_name, choices in field_choices(CONFIGS[name]).items():
        assert "<" + "|".join(str(c) for c in choices if c is not None) + ">" in shown, field_name
        bad = runner.invoke(app, [name, option(field_name), "bogus"])
        assert bad.exit_code == 2 and "'bogus' is not one of" in bad.output, (field_name, bad.output)


def test_choice_constants_agree_with_the_code_that_uses_them() -> None:
    """The losses and engines keep their own tuples; a new kind must be added in both places."""
    from distill.engines import ENGINES
    from distill.losses import KD_KINDS, LOSS_TYPES, SCALE_REWARDS, TAILS

    hints = typing.get_type_hints(TrainConfig)
    assert typing.get_args(hints["kd"]) == KD_KINDS and typing.get_args(hints["tail"]) == TAILS
    grpo = field_choices(GRPOConfig)
    assert grpo["loss"] == LOSS_TYPES and set(grpo["scale_rewards"]) - {None} == set(SCALE_REWARDS)
    assert field_choices(GenerateConfig)["backend"] == ENGINES


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(DistillError) as e:
        TrainConfig(student="s", alpha=1.5, temperature=0, kd="kl", batch_rows=0)  # type: ignore[arg-type]
    msg = str(e.value)
    assert msg.startswith("Invalid train settings: ")
    for part in (
        "--kd must be one of forward, reverse, jsd, sampled, got 'kl'",
        "--alpha must be in [0, 1]",
        "--temperature must be > 0",
        "exactly one of --cache",
        "--batch-rows and --micro-rows must be ≥ 1",
    ):
        assert part in msg, part  # fmt: skip


def test_batch_rows_must_split_over_the_world(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    TrainConfig(student="s", cache="c", batch_rows=8)
    with pytest.raises(DistillError, match="--batch-rows 6 is not a multiple of the 4 torchrun processes.*4 or 8"):
        TrainConfig(student="s", cache="c", batch_rows=6)


def test_shared_option_groups_mean_the_same_everywhere() -> None:
    """--prompt-field / --answer-field exist wherever prompts are read, with one help text."""
    for name in ("generate", "grpo", "eval"):
        params = {p.name: p for p in _click_command(name).params}
        assert params["prompt_field"].help == field_docs(GenerateConfig)["prompt_field"]  # type: ignore[attr-defined]
        assert "answer_field" in params and "mapping" in params and "limit" in params
