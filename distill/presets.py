"""Teacher and student presets: YAML data files looked up by short name.

`--teacher r1-distill-qwen-7b` reads `teachers/r1-distill-qwen-7b.yaml`; `--student qwen-1.5b`
reads `students/qwen-1.5b.yaml`. A path to a YAML file, a local model directory or a hub id also
works (a model without a preset gets the defaults below). Every field is typed and documented
here; a preset is validated once, on load, and every problem is reported in one message.

The preset folders are the repository's top-level `teachers/` and `students/`; an installed wheel
carries them as the packages `distill.teachers` / `distill.students`, so lookups work both ways.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distill.errors import DistillError

R1_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class EngineArgs:
    """How vLLM runs the teacher."""

    tensor_parallel_size: int = 1
    """GPUs one engine spans (vLLM tensor parallelism). Data parallelism in-process is one `distill generate`
    per GPU group with --shard-index/--num-shards, then `distill cache merge`; served, `data_parallel_size`."""
    data_parallel_size: int = 1
    """Engine replicas `distill serve` runs behind one URL (vLLM data parallelism), each on
    `tensor_parallel_size` GPUs."""
    max_model_len: int | None = None
    """Longest prompt + completion in tokens (None: the model's own limit)."""
    dtype: str = "auto"
    """Weight dtype: auto, bfloat16, float16 or float32."""
    gpu_memory_utilization: float = 0.9
    """Fraction of GPU memory vLLM may take."""


@dataclass
class Sampling:
    """Default sampling for generation (the R1 evaluation settings)."""

    temperature: float = 0.6
    """Sampling temperature (0: greedy)."""
    top_p: float = 0.95
    """Nucleus sampling threshold."""
    max_new_tokens: int = 32768
    """Completion length limit; longer traces end with finish reason 'length'."""
    samples_per_prompt: int = 1
    """Completions drawn per prompt."""


@dataclass
class PromptStyle:
    """How a problem becomes the teacher's input."""

    instruction: str = R1_INSTRUCTION
    """Appended to every problem that does not already contain it (R1 convention)."""
    system_prompt: str | None = None
    """System message; R1-style teachers are used without one."""
    think_prefix: str = "<think>\n"
    """Text the response is primed with, unless the chat template already ends with it."""


@dataclass
class TeacherPreset:
    """A teacher model and how to run it."""

    name: str
    """Short name used on the command line."""
    hub_id: str
    """Hugging Face hub id, or a directory (relative to the preset file) for bundled teachers."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); part of the cache key."""
    top_k: int = 20
    """Teacher logprobs kept per position."""
    engine: EngineArgs = field(default_factory=EngineArgs)
    """vLLM engine arguments."""
    sampling: Sampling = field(default_factory=Sampling)
    """Default sampling parameters."""
    prompt: PromptStyle = field(default_factory=PromptStyle)
    """Prompt convention."""
    description: str = ""
    """One line for listings."""
    origin: str | None = None
    """Set by lookup, never in YAML: the preset (bundled name or YAML path) whose defaults this model has: its own
    name, or, for a model directory distill wrote, the preset of the model it was trained from."""


@dataclass
class TrainDefaults:
    """Default optimisation settings for a student."""

    lr: float = 5e-5
    """Peak learning rate (AdamW)."""
    max_length: int = 16384
    """Longest packed training row in tokens."""
    epochs: int = 3
    """Passes over the training records."""
    warmup_ratio: float = 0.05
    """Fraction of steps spent warming up the learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""


@dataclass
class OnPolicyDefaults:
    """Default `distill onpolicy` settings for a student: the ones that depend on its size."""

    lr: float = 1e-6
    """AdamW learning rate (1e-6: 1.5B-class students trained in full)."""
    batch_size: int = 64
    """Completions per step."""
    warmup_steps: int = 0
    """Steps over which the learning rate rises linearly to its peak."""
    iterations: int = 1
    """μ: optimiser steps per batch of rollouts (1: one pass over each batch, as Tinker's recipe)."""


@dataclass
class LoraDefaults:
    """Default LoRA settings (used with --lora)."""

    r: int = 64
    """Rank of the adapters."""
    alpha: int = 128
    """Scaling numerator (effective scale alpha / r)."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names that get adapters."""


@dataclass
class StudentPreset:
    """A student model and its training defaults."""

    name: str
    """Short name used on the command line."""
    hub_id: str
    """Hugging Face hub id, or a directory (relative to the preset file)."""
    revision: str | None = None
    """Hub revision."""
    train: TrainDefaults = field(default_factory=TrainDefaults)
    """Training defaults."""
    onpolicy: OnPolicyDefaults = field(default_factory=OnPolicyDefaults)
    """On-policy distillation defaults."""
    lora: LoraDefaults = field(default_factory=LoraDefaults)
    """LoRA defaults."""
    init: str = "pretrained"
    """Start from the hub weights ('pretrained') or from the config alone ('random')."""
    description: str = ""
    """One line for listings."""
    origin: str | None = None
    """Set by lookup, never in YAML (as TeacherPreset.origin)."""


KINDS: dict[str, type] = {"teacher": TeacherPreset, "student": StudentPreset}
# (lowest, highest) allowed value of numeric preset fields, by class (None: unbounded)
RANGES: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "EngineArgs": {
        "tensor_parallel_size": (1, None),
        "data_parallel_size": (1, None),
        "max_model_len": (1, None),
        "gpu_memory_utilization": (0, 1),
    },
    "Sampling": {
        "temperature": (0, None),
        "top_p": (0, 1),
        "max_new_tokens": (1, None),
        "samples_per_prompt": (1, None),
    },
    "TeacherPreset": {"top_k": (0, None)},
    "TrainDefaults": {"lr": (0, None), "max_length": (2, None), "epochs": (1, None), "warmup_ratio": (0, 1)},
    "LoraDefaults": {"r": (1, None), "dropout": (0, 1)},
    "OnPolicyDefaults": {"lr": (0, None), "batch_size": (1, None), "warmup_steps": (0, None)},
}
_FOLDERS = {"teacher": "teachers", "student": "students"}
# In a model directory distill wrote (OUT/model of train, grpo, onpolicy): {"preset": ORIGIN}, the preset whose
# size-dependent defaults (learning rate, context, batch) the model keeps when a later command starts from it.
PRESET_RECORD = "distill_preset.json"
_SET_BY_LOOKUP = frozenset({"origin"})
# Fields older presets carry that nothing reads any more: skipped on load, so such a YAML still works.
# (tokenizer_family: whether two tokenizers agree is checked on the tokenizers themselves, distill.vocab.)
RETIRED_FIELDS = frozenset({"tokenizer_family"})


# ---------------------------------------------------------------------------------------------
# building typed presets from YAML, collecting every problem


def _build(cls: type, data: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(data, dict):
        problems.append(f"{where} must be a mapping, got {type(data).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields or key in _SET_BY_LOOKUP:
            known = ", ".join(f for f in fields if f not in _SET_BY_LOOKUP)
            problems.append(f"{where}: unknown field {key!r} (known: {known})")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{where}: missing required field {name!r}")
            continue
        kwargs[name] = _coerce(hints[name], data[name], f"{where}.{name}", problems)
    try:
        built = cls(**kwargs)
    except TypeError:
        return None
    # a value of the right type can still be out of range: the engine would fail on it much later
    for name, (low, high) in RANGES.get(cls.__name__, {}).items():
        v = getattr(built, name)
        if isinstance(v, int | float) and ((low is not None and v < low) or (high is not None and v > high)):
            problems.append(f"{where}.{name} must be in [{low}, {high if high is not None else '∞'}], got {v!r}")
    return built


def _coerce(hint: Any, value: Any, where: str, problems: list[str]) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, problems)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, args[0]) for v in value):
            problems.append(f"{where} must be a list of {args[0].__name__}, got {value!r}")
        return value
    ok = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        problems.append(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def load_preset_file(path: Path, kind: str) -> Any:
    """Load and validate one preset YAML file; raises DistillError listing every problem."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DistillError(f"Cannot read {kind} preset {path}: {e}") from e
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in RETIRED_FIELDS}
    problems: list[str] = []
    preset = _build(KINDS[kind], data, Path(path).name, problems)
    if problems:
        raise DistillError(f"{kind.capitalize()} preset {path} is invalid: " + "; ".join(problems) + ".")
    # a relative hub_id that names a bundled directory is relative to the preset file
    # a hub_id without "org/" names a directory beside the preset file (bundled models)
    local = Path(path).parent / preset.hub_id
    if not Path(preset.hub_id).is_absolute() and (local.is_dir() or "/" not in preset.hub_id):
        preset.hub_id = str(local.resolve())
    return preset


# ---------------------------------------------------------------------------------------------
# lookup


def preset_dir(kind: str) -> Path:
    """The folder holding `kind` presets: the checkout's top-level folder, or the wheel's package."""
    here = Path(__file__).resolve().parent
    source = here.parent / _FOLDERS[kind]
    in_checkout = (here.parent / "pyproject.toml").is_file() and source.is_dir()
    return source if in_checkout else here / _FOLDERS[kind]


def preset_names(kind: str) -> list[str]:
    """Short names of every bundled preset of this kind."""
    return sorted(p.stem for p in preset_dir(kind).glob("*.yaml"))


def resolve_preset(spec: str, kind: str) -> Any:
    """The `kind` preset of a model, the same way in every command.

    `spec` is a preset name (of this kind, else of the other kind: a student preset can be evaluated
    and a teacher preset can be a student), a preset YAML, a model directory, a run directory (a
    `distill train` / `grpo` OUT, whose model/ is used) or a hub id (org/name). A model found under
    the other kind keeps its name, weights and revision and gets this kind's defaults.
    """
    other = "student" if kind == "teacher" else "teacher"
    path = Path(spec).expanduser()
    bare = "/" not in spec and os.sep not in spec  # a name joined onto preset_dir must not escape it
    for k in (kind, other):
        named = preset_dir(k) / f"{spec}.yaml"
        if bare and named.is_file():
            return dataclasses.replace(_as_kind(load_preset_file(named, k), kind), origin=spec)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        try:
            preset = load_preset_file(path, kind)
        except DistillError as first:
            try:
                preset = _as_kind(load_preset_file(path, other), kind)
            except DistillError:
                raise first from None
        return dataclasses.replace(preset, origin=str(path.resolve()))
    if path.is_dir():
        model = path / "model" if (path / "model" / "config.json").is_file() else path
        base = _origin_preset(model, kind)
        if base is not None:  # a model distill wrote keeps the defaults of the preset it was trained from
            return dataclasses.replace(base, name=path.name, hub_id=str(model.resolve()), revision=None)
        return KINDS[kind](name=path.name, hub_id=str(model.resolve()))
    parts = spec.split("/")
    if len(parts) == 2 and all(parts) and not path.exists():
        return KINDS[kind](name=spec, hub_id=spec)
    raise DistillError(
        f"Unknown model {spec!r}: not a preset name, a preset YAML, a model or run directory, or a hub id "
        f"(org/name). Known presets: {', '.join(preset_names('teacher') + preset_names('student'))}."
    )


def _origin_preset(model: Path, kind: str) -> Any:
    """The preset named by `model`'s PRESET_RECORD, as a `kind` preset; None when it has none or it no longer
    resolves (a preset file since moved: the model then gets the generic defaults, as any directory does)."""
    record = model / PRESET_RECORD
    try:
        origin = json.loads(record.read_text())["preset"] if record.is_file() else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(origin, str) or Path(origin).resolve() == model.resolve():
        return None
    try:
        return resolve_preset(origin, kind)
    except DistillError:
        return None


def write_preset_record(model: Path, preset: Any) -> None:
    """Remember in the model directory `model` (being written by an export) the preset `preset` came from."""
    if getattr(preset, "origin", None):
        (Path(model) / PRESET_RECORD).write_text(json.dumps({"preset": preset.origin}) + "\n")


def _as_kind(preset: Any, kind: str) -> Any:
    """A preset of the other kind as a `kind` preset: same model, this kind's defaults."""
    if isinstance(preset, KINDS[kind]):
        return preset
    return KINDS[kind](
        name=preset.name,
        hub_id=preset.hub_id,
        revision=preset.revision,
        description=preset.description,
        origin=preset.origin,
    )
