"""The commands in README.md, docs/ and recipes/ work as written, or say what they need.

- Every fenced block names its language. A `bash` or `python` block either runs here — offline, on the bundled
  tiny models; a page's runnable blocks run in order as one script in a fresh directory, so a block can use what
  an earlier one made — or opens with `# needs: X[, Y] (why)`, X one of NEEDS: what this machine cannot give.
- Every `distill` command written anywhere in them (blocks, needs or not; inline code; recipe scripts, arrays
  of options included) exists, with every option it uses, as the CLI builds them from the config dataclasses;
  every `make` target exists; every `scripts/`, `recipes/` or `tests/` path exists; the links of README.md and
  recipes/*.md resolve.
- docs/configuration.md is what scripts/gen_config_reference.py makes from the configs.

The site's own links, anchors and nav are checked by `make docs` (mkdocs build --strict), which `make test` runs.
"""

from __future__ import annotations

import os
import re
import runpy
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

from distill.cli import app

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "recipes").glob("*.md"))]
RECIPES = sorted((REPO / "recipes").glob("*.sh"))
NEEDS = {
    "gpu": "a CUDA GPU",
    "hub": "the Hugging Face hub (models or datasets)",
    "slurm": "a Slurm cluster",
    "demo": "the output of `make demo` in demo-out/",
    "minutes": "runs offline as written, but too long for the test suite",
}
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```", re.M | re.S)
SEPARATORS = {"|", "||", "&&", ";", "&", ">", ">>", "2>", "<", "<<"}


@dataclass
class Block:
    """One fenced block of a page."""

    page: Path
    line: int
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    @property
    def needs(self) -> list[str]:
        """What the block's first line says it needs (`# needs: gpu, hub (why)`), or [] to run it here."""
        first = self.text.lstrip().splitlines()[0] if self.text.strip() else ""
        m = re.match(r"#\s*needs:\s*([^(]*)", first)
        return [n.strip() for n in m.group(1).split(",") if n.strip()] if m else []


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    return [Block(page, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)) for m in FENCE.finditer(text)]


# ---------------------------------------------------------------------------------------------
# the distill commands a text holds, and the CLI's real commands and options


def cli_options() -> dict[str, set[str]]:
    """'train' / 'cache merge' → every option spelling that command takes."""
    root = typer.main.get_command(app)
    out = {}
    for name, command in root.commands.items():
        out[name] = {o for p in command.params for o in [*p.opts, *p.secondary_opts]}
        for sub, cmd in getattr(command, "commands", {}).items():  # a group: distill cache ls, ...
            out[f"{name} {sub}"] = {o for p in cmd.params for o in [*p.opts, *p.secondary_opts]}
    return out


def _arrays(text: str) -> dict[str, list[str]]:
    """Bash arrays of plain words (`ARGS=(--teacher T ...)`, `ARGS+=(--resume)`), to expand `"${ARGS[@]}"`."""
    arrays: dict[str, list[str]] = {}
    for name, body in re.findall(r"(\w+)\+?=\(([^()]*)\)", text):
        arrays.setdefault(name, []).extend(shlex.split(body, comments=True))
    return arrays


def distill_commands(text: str) -> list[list[str]]:
    """Every `distill CMD [SUB] --opt ...` in a shell text, as [command, option, option, ...]."""
    arrays = _arrays(text)
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # a line of a heredoc or prose, not a command
            continue
        expanded = []
        for w in words:
            m = re.fullmatch(r"\$\{(\w+)\[@\]\}", w)
            expanded += arrays.get(m.group(1), []) if m else [w]
        for i, w in enumerate(expanded):
            if not re.fullmatch(r"(.*[/(])?distill|\$\{?DISTILL\}?", w) or i + 1 == len(expanded):
                continue
            rest = [t.strip("[]") for t in expanded[i + 1 :]]
            if rest[0] == "cache" and len(rest) > 1:
                rest = [f"cache {rest[1]}", *rest[2:]]
            if not re.fullmatch(r"[a-z][a-z ]*", rest[0]):  # a placeholder (`distill CMD --help`) or a path
                continue
            cmd = [rest[0]]
            for t in rest[1:]:
                if t in SEPARATORS or t.endswith(")"):
                    break
                if t.startswith("--"):
                    cmd.append(t.split("=")[0])
            found.append(cmd)
    return found


def problems_with(cmds: list[list[str]], where: str, known: dict[str, set[str]]) -> list[str]:
    out = []
    for cmd, *opts in cmds:
        if cmd not in known:
            out.append(f"{where}: `distill {cmd}` is not a command")
            continue
        out += [f"{where}: `distill {cmd}` has no option {o}" for o in opts if o not in known[cmd] | {"--help"}]
    return out


def test_the_check_catches_a_command_or_option_that_does_not_exist() -> None:
    text = "x=$(distill generate --teacher t --top-k 5 | tail -n 1)\ndistill trian --student s\n"
    text += 'A=(--kd reverse --kd-kind x)\ntorchrun --nproc-per-node 2 -m distill train "${A[@]}"\n'
    text += 'distill cache info "$x" --json --verbose\n'
    found = problems_with(distill_commands(text), "t", cli_options())
    assert found == [
        "t: `distill trian` is not a command",
        "t: `distill train` has no option --kd-kind",
        "t: `distill cache info` has no option --verbose",
    ]


def test_every_documented_distill_command_and_option_exists() -> None:
    known, problems, seen = cli_options(), [], 0
    for page in PAGES:
        for b in blocks(page):
            if b.lang == "bash":
                cmds = distill_commands(b.text)
                seen += len(cmds)
                problems += problems_with(cmds, b.where, known)
        spans = re.findall(r"`([^`\n]*\bdistill [^`\n]*)`", FENCE.sub("", page.read_text()))
        for span in spans:
            problems += problems_with(distill_commands(span), str(page.relative_to(REPO)), known)
    for recipe in RECIPES:
        cmds = distill_commands(recipe.read_text())
        seen += len(cmds)
        problems += problems_with(cmds, str(recipe.relative_to(REPO)), known)
    assert seen > 50, f"only {seen} distill commands found: the parser lost them"
    assert not problems, "\n".join(problems)


def test_every_block_names_its_language_and_runs_here_or_says_what_it_needs() -> None:
    problems = []
    for page in PAGES:
        for b in blocks(page):
            if not b.lang:
                problems.append(f"{b.where}: a fenced block without a language (bash, python, text, ...)")
            elif b.lang in ("sh", "shell", "console", "zsh"):
                problems.append(f"{b.where}: write shell blocks as bash")
            unknown = [n for n in b.needs if n not in NEEDS]
            if unknown:
                problems.append(f"{b.where}: unknown needs {unknown}; known: {', '.join(NEEDS)}")
    assert not problems, "\n".join(problems)


def code(path: Path) -> str:
    """The code a page shows (its bash blocks and inline code spans), or a whole recipe script."""
    if path.suffix == ".sh":
        return path.read_text()
    text = path.read_text()
    spans = re.findall(r"`([^`\n]+)`", FENCE.sub("", text))
    return "\n".join([*(b.text for b in blocks(path) if b.lang == "bash"), *spans])


def test_make_targets_paths_and_links_exist() -> None:
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    problems = []
    for path in [*PAGES, *RECIPES]:
        text = code(path)
        problems += [
            f"{path.name}: no make target {t}" for t in re.findall(r"\bmake ([a-z][\w-]*)", text) if t not in targets
        ]
        problems += [
            f"{path.name}: {p} does not exist"
            for p in re.findall(r"\b(?:scripts|recipes|tests)/[\w./-]*\w", text)
            if not (REPO / p).exists()
        ]
    for page in (REPO / "README.md", *(REPO / "recipes").glob("*.md")):  # outside the site mkdocs checks
        for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not link.startswith("http") and not (page.parent / link).exists():
                problems.append(f"{page.relative_to(REPO)} links to {link}, which does not exist")
    assert not problems, "\n".join(problems)


def test_the_recipes_and_the_bash_blocks_parse_as_bash() -> None:
    texts = [(str(r.relative_to(REPO)), r.read_text()) for r in RECIPES]
    texts += [(b.where, b.text) for page in PAGES for b in blocks(page) if b.lang == "bash"]
    problems = []
    for where, text in texts:
        out = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
        problems += [f"{where}: {out.stderr.strip()}"] if out.returncode else []
    assert not problems, "\n".join(problems)


def test_the_configuration_reference_is_what_the_configs_make() -> None:
    generator = runpy.run_path(str(REPO / "scripts" / "gen_config_reference.py"))
    page = (REPO / "docs" / "configuration.md").read_text()
    assert page == generator["render"](), "docs/configuration.md is stale: run python scripts/gen_config_reference.py"
    root = typer.main.get_command(app)
    for name in generator["configs"]():  # every option of every pipeline command, in the order of its --help
        section = page.split(f"## `distill {name}`")[1].split("\n## ")[0]
        listed = re.findall(r"^\| `([^`]+)`", section, re.M)
        params = [p for p in root.commands[name].params if p.name != "help"]
        assert listed == [p.opts[0] if p.opts[0].startswith("--") else p.name.upper() for p in params], name


# ---------------------------------------------------------------------------------------------
# the runnable blocks: one bash script per page


def script(page: Path) -> str:
    """The page's blocks that run here, in order, as one bash script (python blocks as heredocs)."""
    parts = ["set -euo pipefail"]
    for b in blocks(page):
        if b.needs or b.lang not in ("bash", "python"):
            continue
        parts.append(f"# {b.where}")
        parts.append(b.text if b.lang == "bash" else f"python - <<'DISTILL_DOC_PYTHON'\n{b.text}DISTILL_DOC_PYTHON")
    return "\n".join(parts) + "\n" if len(parts) > 1 else ""


RUNNABLE = [p for p in PAGES if script(p)]


def _marks(page: Path) -> list[pytest.MarkDecorator]:
    marks = [pytest.mark.slow, pytest.mark.vllm]
    return marks + [pytest.mark.torchrun] if "torchrun" in script(page) else marks


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One DISTILL_HOME for every page: pages that generate the same cache find it (a cache hit, no engine)."""
    return tmp_path_factory.mktemp("docs-home")


@pytest.mark.parametrize("page", [pytest.param(p, marks=_marks(p), id=str(p.relative_to(REPO))) for p in RUNNABLE])
def test_the_blocks_of_a_page_run_as_written(page: Path, tmp_path: Path, shared_home: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DISTILL_HOME": str(shared_home),
        "OMP_NUM_THREADS": "1",
    }
    for name in ("scripts", "recipes"):  # the pages run commands from the checkout's root
        (tmp_path / name).symlink_to(REPO / name)
    out = subprocess.run(
        ["bash", "-c", script(page)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, f"{page.name}'s blocks failed:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
