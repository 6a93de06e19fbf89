"""Prompt sources: local files, Hugging Face datasets, built-in benchmark mappings, rendering.

`--prompts` accepts
- a local file: `.jsonl`, `.json`, `.parquet` or `.csv`;
- a built-in name — `gsm8k`, `math500`, `aime24`, `aime25`, `numinamath`, `openr1-math` — with an
  optional split (`gsm8k:train`); these load from the hub through `datasets` and know their fields;
- any hub dataset `org/name` or `org/name:split`;
- an embedded task `task:split` (e.g. `arith:train`) when one is registered in `distill.tasks`.

A built-in mapping can also be applied to a local copy with the same structure (`mapping="gsm8k"`),
which is how the loaders are tested offline. Fields are auto-detected (prompt: prompt / problem /
question; answer: answer / solution; domain: domain) unless named; a missing field is reported with the columns
found. Gold answers travel with each prompt so the teacher stage can store them in record metadata.

A prompt's domain (a `domain` column, `--domain-field` naming another, or the task's own: arith's `add` / `mul`)
travels the same way: `record_meta` keeps it in every record that generate, score and onpolicy write, and eval
reports pass@1 per domain. It is metadata, not part of the prompt set's fingerprint: a cache's key does not change
when a domain column is added or relabelled (the teacher's work does not depend on it).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.errors import DistillError
from distill.tasks import load_task_prompts
from distill.verify.answers import gsm8k_answer, last_boxed

PROMPT_FIELDS = ("prompt", "problem", "question", "input")
ANSWER_FIELDS = ("answer", "solution", "gold", "target")
ID_FIELDS = ("id", "unique_id", "uuid", "problem_id")
DOMAIN_FIELDS = ("domain",)
COMPLETION_FIELDS = ("completion", "response", "generation", "output")
CHAT_FIELDS = ("messages", "conversations")
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


@dataclass(frozen=True)
class Mapping:
    """How one benchmark's rows become prompts."""

    hub_id: str
    split: str
    prompt_field: str
    answer_field: str | None
    config: str | None = None
    parse_answer: Callable[[str], str | None] | None = None


BUILTIN: dict[str, Mapping] = {
    "gsm8k": Mapping("openai/gsm8k", "test", "question", "answer", config="main", parse_answer=gsm8k_answer),
    "math500": Mapping("HuggingFaceH4/MATH-500", "test", "problem", "answer"),
    "aime24": Mapping("HuggingFaceH4/aime_2024", "train", "problem", "answer"),
    "aime25": Mapping("math-ai/aime25", "test", "problem", "answer"),
    "numinamath": Mapping("AI-MO/NuminaMath-CoT", "train", "problem", "solution", parse_answer=last_boxed),
    "openr1-math": Mapping("open-r1/OpenR1-Math-220k", "train", "problem", "answer", config="default"),
}


# ---------------------------------------------------------------------------------------------
# loading rows


def _read_local(path: Path) -> list[dict[str, Any]]:
    """Rows of a local JSONL / JSON / CSV / Parquet file (read directly: cache hits must be fast)."""
    if not path.is_file():
        raise DistillError(f"Prompt file {path} does not exist.")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            return data if isinstance(data, list) else data.get("data", [data])
        if path.suffix == ".csv":
            with open(path, newline="") as f:
                return list(csv.DictReader(f))
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise DistillError(f"Cannot read prompt file {path}: {e}") from e
    raise DistillError(f"Prompt file {path} has an unknown type; use one of .jsonl, .json, .csv, .parquet.")


def load_rows(source: str) -> tuple[list[dict[str, Any]], str]:
    """Rows of the source as dicts, and a description of where they came from."""
    path = Path(source).expanduser()
    if path.suffix in LOCAL_SUFFIXES or path.exists():
        return _read_local(path), str(path.resolve())
    name, _, split = source.partition(":")
    if name in BUILTIN:
        mapping = BUILTIN[name]
        hub_id, config, split = mapping.hub_id, mapping.config, split or mapping.split
    elif "/" in name:
        hub_id, config, split = name, None, split or "train"
    else:
        known = ", ".join([*BUILTIN, "task:split"])
        raise DistillError(
            f"Prompt source {source!r} is not a file, a built-in set ({known}) or a hub dataset org/name."
        )
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # datasets raises many types; all mean "not loadable here"
        raise DistillError(
            f"Cannot load dataset {hub_id} (split {split}) from the Hugging Face hub: {e}. Without hub access, "
            "download it elsewhere and pass the local file."
        ) from e
    return list(ds), f"{hub_id}:{split}"


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, source: str) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise DistillError(f"{what} field {wanted!r} is not in {source}; columns found: {', '.join(columns)}.")
        return wanted
    return next((c for c in candidates if c in columns), None)


def load_prompts(
    source: str,
    prompt_field: str | None = None,
    answer_field: str | None = None,
    mapping: str | None = None,
    limit: int | None = None,
    domain_field: str | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """Prompts as dicts {id, prompt, answer} (and domain, where the source has one), and a description of the
    source.

    Ids come from an id column when there is one, else from the row number, so they are stable
    under `--limit` and under `--shard-index/--num-shards` slicing.
    """
    if mapping is not None and mapping not in BUILTIN:
        raise DistillError(f"Unknown mapping {mapping!r}; known: {', '.join(BUILTIN)}.")
    task_prompts = load_task_prompts(source)
    if task_prompts is not None:
        given = [
            o
            for o, v in (
                ("--prompt-field", prompt_field),
                ("--answer-field", answer_field),
                ("--mapping", mapping),
                ("--domain-field", domain_field),
            )
            if v
        ]
        if given:  # a task's prompts have no columns to pick: the option would be silently ignored
            raise DistillError(f"{', '.join(given)} apply to prompt files and datasets, not to the task {source!r}.")
        rows, where = task_prompts, source
        mapped = None
    else:
        mapped = BUILTIN.get(mapping) if mapping else BUILTIN.get(source.partition(":")[0])
        rows, where = load_rows(source)
    return prompts_from_rows(rows, where, prompt_field, answer_field, mapped, limit, domain_field), where


def prompts_from_rows(
    rows: list[dict[str, Any]],
    where: str,
    prompt_field: str | None = None,
    answer_field: str | None = None,
    mapped: Mapping | None = None,
    limit: int | None = None,
    domain_field: str | None = None,
) -> list[dict[str, Any]]:
    """`load_prompts` on rows already read: {id, prompt, answer} each, and domain where the rows have one."""
    if not rows:
        raise DistillError(f"Prompt source {where} is empty; nothing to generate.")
    columns = list(rows[0].keys())
    pf = _pick(columns, prompt_field or (mapped.prompt_field if mapped else None), PROMPT_FIELDS, "Prompt", where)
    if pf is None:
        raise DistillError(
            f"No prompt field found in {where} (looked for {', '.join(PROMPT_FIELDS)}); columns found: "
            f"{', '.join(columns)}. Name it with --prompt-field."
        )
    af = _pick(columns, answer_field or (mapped.answer_field if mapped else None), ANSWER_FIELDS, "Answer", where)
    idf = next((c for c in ID_FIELDS if c in columns), None)
    df = _pick(columns, domain_field, DOMAIN_FIELDS, "Domain", where)
    parse = mapped.parse_answer if mapped else None
    prompts = []
    for i, row in enumerate(rows[:limit] if limit else rows):
        gold = row.get(af) if af else None
        if gold is not None:
            gold = parse(str(gold)) if parse else str(gold)
        q = {"id": str(row[idf]) if idf else str(i), "prompt": str(row[pf]), "answer": gold}
        if df is not None and row.get(df) not in (None, ""):
            q["domain"] = str(row[df])
        prompts.append(q)
    return prompts


def load_traces(
    source: str,
    prompt_field: str | None = None,
    completion_field: str | None = None,
    limit: int | None = None,
    domain_field: str | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """Existing traces as dicts {id, prompt, answer, completion} (and domain, where the rows have one), and a
    description of the source.

    A row has a prompt and a completion column, or is a chat: a `messages` list of {role, content}
    or a ShareGPT `conversations` list of {from, value}, whose last assistant turn is the completion
    and the user turn before it the prompt.
    """
    rows, where = load_rows(source)
    rows = rows[:limit] if limit else rows
    if not rows:
        raise DistillError(f"Trace source {where} is empty; nothing to train on or score.")
    columns = list(rows[0])
    chat = next((c for c in CHAT_FIELDS if c in columns), None)
    field = completion_field or next((c for c in COMPLETION_FIELDS if c in columns), None)
    if chat and field is None:
        rows = [{**row, **chat_turns(row[chat], f"row {i} of {where}")} for i, row in enumerate(rows)]
        field = "completion"
    elif field is None or field not in columns:
        raise DistillError(
            f"No completion field in {where} (looked for {completion_field or ', '.join(COMPLETION_FIELDS)}, "
            f"or chat rows in {' or '.join(CHAT_FIELDS)}); columns found: {', '.join(columns)}. "
            "Rename the column to 'completion' (or pass --completion-field to distill score)."
        )
    traces = prompts_from_rows(rows, where, prompt_field, domain_field=domain_field)
    for q, row in zip(traces, rows, strict=True):
        q["completion"] = str(row[field])
    return traces, where


def chat_turns(messages: Any, where: str) -> dict[str, str]:
    """{prompt, completion} of a chat: the last assistant turn and the user turn before it.

    System turns are dropped: the teacher preset's own system prompt and instruction apply.
    """
    turns = []
    for m in messages if isinstance(messages, list) else []:
        if isinstance(m, dict):
            role = ROLES.get(str(m.get("role", m.get("from", ""))).lower())
            turns.append((role, str(m.get("content", m.get("value", "")))))
    last = max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=0)  # 0: none
    user = max((i for i, (role, _) in enumerate(turns[:last]) if role == "user"), default=None)
    if user is None:
        raise DistillError(
            f"The chat in {where} has no user turn followed by an assistant turn; give each row a list of "
            '{"role": "user" | "assistant", "content": ...} messages.'
        )
    return {"prompt": turns[user][1], "completion": turns[last][1]}


def record_meta(q: dict[str, Any]) -> dict[str, Any]:
    """What a trace record keeps of its prompt: for the verifiers the gold answer and the question (lang judges
    the reasoning against the question's script); the domain where the prompt has one (routing, per-domain
    metrics)."""
    meta = {"answer": q.get("answer"), "question": q["prompt"]}
    if q.get("domain") is not None:
        meta["domain"] = q["domain"]
    return meta


def shard_slice(prompts: list[dict[str, Any]], shard_index: int, num_shards: int) -> list[dict[str, Any]]:
    """The disjoint part of `prompts` that worker `shard_index` of `num_shards` handles (round robin)."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise DistillError(f"--shard-index must be in [0, {num_shards}) and --num-shards ≥ 1, got {shard_index}.")
    return prompts[shard_index::num_shards]


# ---------------------------------------------------------------------------------------------
# rendering


def render_prompt(tokenizer: Any, problem: str, instruction: str, system_prompt: str | None, think_prefix: str) -> str:
    """The teacher's input text: chat template, R1 instruction, response primed with `think_prefix`."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise DistillError(
            "The teacher's tokenizer has no chat template; add one to its tokenizer_config.json "
            "(or chat_template.jinja) so prompts are rendered the way the model was trained."
        )
    content = problem if not instruction or instruction in problem else f"{problem.rstrip()}\n{instruction}"
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": content}
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # templates of R1-style models often prime "<think>\n" themselves; never add it twice
    if think_prefix and not re.search(re.escape(think_prefix.strip()) + r"\s*$", text):
        text += think_prefix
    return text
