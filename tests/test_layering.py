"""The import graph keeps data flowing one way (STYLE.md): enforced by parsing every module.

- core modules (cache, presets, verify, models, ...) never import a stage;
- stages never import each other; only the CLI imports stages;
- only the engine adapter (distill.engines) imports vllm;
- the losses are pure torch: distill.losses imports torch, the standard library and itself (tokens, text and
  alignment live in distill.alignment and distill.retokenize);
- the CLI imports nothing heavy at module level, so `distill --help` stays instant.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "distill"
STAGES = {"generate", "score", "serve", "filter", "train", "grpo", "onpolicy", "evaluate", "demo", "experiments"}
HEAVY = {"torch", "vllm", "transformers", "numpy", "datasets", "peft", "safetensors"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "distill" and parts[1] in STAGES else None


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_core_never_imports_a_stage_and_stages_never_import_each_other() -> None:
    bad = []
    for mod, path in MODULES.items():
        if mod in ("distill.cli", "distill.__main__"):
            continue
        mine = stage_of(mod)
        for imp in imports(path):
            theirs = stage_of(imp)
            if theirs and theirs != mine:
                bad.append(f"{mod} imports {imp}")
    assert not bad, "layering violations: " + "; ".join(bad)


def test_losses_import_torch_the_standard_library_and_themselves_only() -> None:
    import sys

    allowed = {"torch", "__future__", *sys.stdlib_module_names}
    bad = [
        f"{m} imports {i}"
        for m, p in MODULES.items()
        if m.startswith("distill.losses")
        for i in imports(p)
        if not i.startswith("distill.losses") and i.split(".")[0] not in allowed
    ]
    assert not bad, "; ".join(bad)


def test_only_the_engine_adapter_imports_vllm() -> None:
    bad = [
        m
        for m, p in MODULES.items()
        if not m.startswith("distill.engines") and any(i.split(".")[0] == "vllm" for i in imports(p))
    ]
    assert not bad


def test_cli_imports_nothing_heavy_at_module_level() -> None:
    heavy = {i for i in imports(MODULES["distill.cli"], top_level_only=True) if i.split(".")[0] in HEAVY}
    assert not heavy
    for mod in ("distill", "distill.errors"):
        assert not {i for i in imports(MODULES[mod], top_level_only=True) if i.split(".")[0] in HEAVY}


def test_the_checker_sees_violations(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from distill.train import loop\n")
    assert stage_of("distill.train.loop") == "train" and "distill.train" in imports(bad)


def _layer(module: str) -> str:
    """A module's node in the package graph: a subpackage (distill.cache, distill.losses, ...) counts as one."""
    parts = module.split(".")
    if len(parts) > 2 and (PACKAGE / parts[1]).is_dir():
        return ".".join(parts[:2])
    return module if module in MODULES else ".".join(parts[:2])


def test_no_import_runs_back_up_the_layers() -> None:
    """The graph of distill's modules and subpackages (each subpackage one node) has no cycle: no lower module
    imports one that imports it back (fingerprint used to import the cache format, whose admin imported it)."""
    graph: dict[str, set[str]] = {}
    for mod, path in MODULES.items():
        if mod in ("distill", "distill.__main__"):
            continue
        deps = {_layer(i) for i in imports(path) if i.startswith("distill.") and _layer(i) in MODULES}
        graph.setdefault(_layer(mod), set()).update(deps - {_layer(mod)})
    seen, cycles = {}, []

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if seen.get(dep) == "open":
                cycles.append(" → ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in seen:
                visit(dep, [*stack, dep])
        seen[node] = "done"

    for node in sorted(graph):
        if node not in seen:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(cycles)
