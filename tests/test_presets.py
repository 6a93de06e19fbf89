"""Presets: every bundled file validates, short names / paths / hub ids resolve, errors list names."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distill.errors import DistillError
from distill.presets import (
    StudentPreset,
    TeacherPreset,
    load_preset_file,
    preset_dir,
    preset_names,
    resolve_preset,
)

REPO = Path(__file__).resolve().parents[1]
ALL_PRESETS = [("teacher", p) for p in sorted((REPO / "teachers").glob("*.yaml"))] + [
    ("student", p) for p in sorted((REPO / "students").glob("*.yaml"))
]


@pytest.mark.parametrize(("kind", "path"), ALL_PRESETS, ids=[p.stem for _, p in ALL_PRESETS])
def test_every_preset_file_validates(kind: str, path: Path) -> None:
    preset = load_preset_file(path, kind)
    assert preset.name == path.stem  # the short name is the file name
    assert preset.hub_id
    if kind == "teacher":
        assert 1 <= preset.top_k <= 128 and 0 < preset.sampling.temperature <= 2 and 0 < preset.sampling.top_p <= 1
        assert preset.engine.tensor_parallel_size >= 1
    else:
        assert 0 < preset.train.lr < 1e-2 and preset.train.max_length >= 256 and preset.lora.r > 0


def test_required_presets_exist() -> None:
    assert {"r1-distill-qwen-7b", "r1-distill-qwen-32b", "qwq-32b"} <= set(preset_names("teacher"))
    assert {"qwen-0.5b", "qwen-1.5b", "qwen-7b"} <= set(preset_names("student"))
    assert resolve_preset("qwen-1.5b", "student").hub_id == "Qwen/Qwen2.5-Math-1.5B"


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(DistillError, match=r"Unknown model 'qwen-3b'.*qwen-0.5b, qwen-1.5b, qwen-7b"):
        resolve_preset("qwen-3b", "student")


def test_path_directory_and_hub_id_resolve(tmp_path: Path) -> None:
    custom = tmp_path / "mine.yaml"
    custom.write_text("name: mine\nhub_id: org/model\ntop_k: 64\n")
    assert resolve_preset(str(custom), "teacher").top_k == 64
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    assert resolve_preset(str(model_dir), "student").hub_id == str(model_dir.resolve())
    hub = resolve_preset("someorg/some-model", "teacher")
    assert isinstance(hub, TeacherPreset) and hub.hub_id == "someorg/some-model" and hub.top_k == 20


def test_an_old_preset_with_a_retired_field_still_loads(tmp_path: Path) -> None:
    """`tokenizer_family` was required once and never read: old YAMLs carrying it load, the field ignored."""
    old = tmp_path / "old.yaml"
    old.write_text("name: old\nhub_id: org/model\ntokenizer_family: qwen2.5\ntop_k: 8\n")
    preset = load_preset_file(old, "teacher")
    assert preset.top_k == 8 and not hasattr(preset, "tokenizer_family")
    assert resolve_preset(str(old), "teacher").hub_id == "org/model"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nrevision: 3\ntrain: {lr: fast, epochs: 0}\nlora: {dropout: 1.5}\ncolour: blue\n")
    with pytest.raises(DistillError) as err:
        load_preset_file(bad, "student")
    msg = str(err.value)
    for problem in (
        "missing required field 'hub_id'",
        "revision must be str",
        "train.lr must be float",
        "unknown field 'colour'",
        "train.epochs must be in [1, ∞], got 0",
        "lora.dropout must be in [0, 1], got 1.5",
    ):
        assert problem in msg
    assert isinstance(load_preset_file(REPO / "students" / "qwen-7b.yaml", "student"), StudentPreset)


def test_presets_resolve_from_an_installed_wheel(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in ("distill", "teachers", "students"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    wheel = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "w"),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert wheel.returncode == 0, wheel.stderr
    target = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            *map(str, (tmp_path / "w").glob("*.whl")),
        ],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    code = (
        "import distill.presets as p; print(p.preset_dir('teacher')); "
        "print(p.resolve_preset('qwen-1.5b', 'student').hub_id, p.resolve_preset('qwq-32b', 'teacher').hub_id); "
        "from pathlib import Path; print(*(Path(p.resolve_preset(n, k).hub_id, 'model.safetensors').is_file() "
        "for n, k in (('arith-teacher', 'teacher'), ('arith-student', 'student'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    where, ids, bundled = out.stdout.splitlines()
    assert where.startswith(str(target)) and ids == "Qwen/Qwen2.5-Math-1.5B Qwen/QwQ-32B"
    assert bundled == "True True"  # the embedded default's teacher and base student ship their weights
    assert preset_dir("teacher") == REPO / "teachers"  # and the checkout uses its own folder


def test_one_resolver_for_every_kind_of_model_spec(tmp_path: Path) -> None:
    """A name of either kind, a YAML of either kind, a run directory and a hub id resolve alike."""
    student_as_teacher = resolve_preset("arith-student", "teacher")
    assert isinstance(student_as_teacher, TeacherPreset) and student_as_teacher.hub_id.endswith("arith-student")
    teacher_as_student = resolve_preset("arith-teacher", "student")
    assert isinstance(teacher_as_student, StudentPreset) and teacher_as_student.hub_id.endswith("arith-teacher")
    yaml_of_other_kind = resolve_preset(str(preset_dir("student") / "qwen-1.5b.yaml"), "teacher")
    assert isinstance(yaml_of_other_kind, TeacherPreset) and yaml_of_other_kind.hub_id == "Qwen/Qwen2.5-Math-1.5B"
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    assert resolve_preset(str(run), "teacher").hub_id == str((run / "model").resolve())
    assert resolve_preset(str(run / "model"), "student").hub_id == str((run / "model").resolve())
    assert resolve_preset("org/model", "student").hub_id == "org/model"
    with pytest.raises(DistillError, match=r"Unknown model 'nope'.*arith-teacher.*arith-student"):
        resolve_preset("nope", "teacher")


def test_a_model_directory_distill_wrote_keeps_its_presets_defaults(tmp_path: Path) -> None:
    """OUT/model of train / grpo / onpolicy remembers its preset, so `--student OUT/model` gets that preset's
    size-dependent defaults (the bundled student's 512-token rows and lr 3e-3, not 16,384 tokens at 5e-5)."""
    from transformers import AutoTokenizer

    from distill.checkpoints import export_model
    from distill.models.tiny import build_tiny_model

    tiny = build_tiny_model(tmp_path / "tiny", vocab_size=300)
    model = __import__("transformers").AutoModelForCausalLM.from_pretrained(tiny)
    base = resolve_preset("arith-student", "student")
    assert base.origin == "arith-student"
    first = export_model(model, AutoTokenizer.from_pretrained(tiny), tmp_path / "kd" / "model", "r.json", {}, base)
    again = resolve_preset(str(tmp_path / "kd"), "student")  # a run directory: its model/
    assert again.train == base.train and again.lora == base.lora and again.origin == "arith-student"
    assert again.hub_id == str(first.resolve()) and again.name == "kd"
    # a second generation (onpolicy from the KD student) still descends from the bundled preset
    second = export_model(model, AutoTokenizer.from_pretrained(tiny), tmp_path / "opd", "r.json", {}, again)
    assert resolve_preset(str(second), "student").train.max_length == 512
    # as a teacher-kind model (what eval and onpolicy's rollouts read) it keeps its origin too
    assert resolve_preset(str(second), "teacher").origin == "arith-student"
    # a directory without the record, or with one naming a preset that no longer exists: the generic defaults
    assert resolve_preset(str(tiny), "student").train.max_length == 16384
    (second / "distill_preset.json").write_text('{"preset": "no-such-preset"}')
    assert resolve_preset(str(second), "student").train.max_length == 16384


def test_origin_is_not_a_yaml_field(tmp_path: Path) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text("name: p\nhub_id: org/p\norigin: arith-student\n")
    with pytest.raises(DistillError, match="unknown field 'origin'"):
        resolve_preset(str(preset), "student")


@pytest.mark.parametrize("domain", ["add", "mul"])
def test_the_specialist_teachers_are_the_generalists_kind_trained_on_one_domain(domain: str) -> None:
    """arith-teacher-add / -mul: the generalist's settings and tokenizer (so a student distils from any mix of the
    three without --cross-tokenizer), weights of their own, trained on one domain's traces only."""
    import json

    from distill.fingerprint import tokenizer_fingerprint
    from distill.models.tokenizer import load_tokenizer

    generalist = resolve_preset("arith-teacher", "teacher")
    specialist = resolve_preset(f"arith-teacher-{domain}", "teacher")
    settings = lambda p: (p.sampling, p.engine, p.prompt, p.top_k)  # noqa: E731
    assert settings(specialist) == settings(generalist)
    fingerprints = {tokenizer_fingerprint(load_tokenizer(p.hub_id, None)) for p in (generalist, specialist)}
    assert len(fingerprints) == 1
    weights = [(Path(p.hub_id) / "model.safetensors").read_bytes() for p in (generalist, specialist)]
    assert weights[0] != weights[1]
    record = json.loads((Path(specialist.hub_id) / "distill_train.json").read_text())
    assert record["config"]["traces"] == f"runs/arith-teacher-{domain}/traces.jsonl"
