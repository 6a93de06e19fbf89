"""The `distill` command line: one typed function per command, registered in one table.

    distill generate   teacher traces + top-k logprobs into a cache      (vLLM)
    distill score      teacher-forced logprobs over existing traces       (vLLM)
    distill serve      a teacher behind vLLM's server, for --teacher-url
    distill filter     keep verified-correct traces (a view of a cache)
    distill train      student on CE + KL to the cached teacher
    distill grpo       polish the student with verifier rewards
    distill eval       pass@1 / cons@n with the same verifiers
    distill runs       every recorded run: settings, losses, scores, status
    distill compare    runs side by side: settings that differ, curves, accuracy
    distill cache      ls | info | verify | gc
    distill demo       the whole pipeline on the embedded default

The pipeline commands are made from their configs (distill/configs): every option is a config field,
declared once with its type, default, choices and docstring, which becomes its `--help`. A command
builds its config (which validates itself, reporting every problem at once) before importing its
stage, so heavy imports (torch, vllm, transformers) happen only in the command that needs them and
`distill --help` is instant. A `DistillError` is printed as one sentence with a non-zero exit.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from distill.atomic import TMP_SUFFIX
from distill.configs import (
    CompareConfig,
    Config,
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
from distill.configs.base import field_default
from distill.errors import DistillError
from distill.outputs import Output, check_outputs, is_out_of_space, write_failed_error
from distill.runs.manifest import command_line
from distill.stopping import rerun_advice, stop_on_sigterm, stopped_error

app = typer.Typer(
    help="Distil the reasoning of a large teacher model into a small student.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
cache_app = typer.Typer(help="Inspect and maintain teacher caches.", no_args_is_help=True)


# ---------------------------------------------------------------------------------------------
# commands made from their configs: each option is a config field, its help the field's docstring


def config_command(config: type[Config], run: str) -> Callable[..., None]:
    """A command whose options are `config`'s fields; it builds (validates) the config, then imports
    and calls `run` ("module:function") with it, so bad input fails before any heavy import."""
    hints = typing.get_type_hints(config)
    docs = field_docs(config)
    params = []
    for f in dataclasses.fields(config):
        if not f.init:
            continue
        make = typer.Argument if f.metadata.get("argument") else typer.Option
        default = field_default(f)
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if default is dataclasses.MISSING else default,
                annotation=Annotated[hints[f.name], make(help=docs.get(f.name, ""))],
            )
        )
    own = inspect.get_annotations(config)  # the fields this config declares itself, not its groups
    # required options first, then the command's own, then the shared groups', each as declared
    params.sort(key=lambda p: (p.default is not inspect.Parameter.empty, p.name not in own))

    def command(ctx: typer.Context, **options: Any) -> None:
        cfg = config(**options)
        cfg.set_given(typed_options(ctx, options))  # what --resume must not bring back from the run's first settings
        check_outputs(cfg.outputs())  # before any work: a bad --out costs nothing and leaves nothing
        module, function = run.split(":")
        continues = config.COMMAND in RERUN_CONTINUES
        try:
            getattr(importlib.import_module(module), function)(cfg)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (stop_on_sigterm): one sentence, exit 130 / 143
            raise stopped_error(e, command_line(), resumable=_has_checkpoint(cfg), continues=continues) from None
        except OSError as e:  # a full disk, quota or file-size limit midway: the file, and what continues the run
            if not is_out_of_space(e):
                raise
            resumable = _has_checkpoint(cfg)
            again = rerun_advice(command_line(), resumable=resumable, continues=continues)
            if hasattr(cfg, "resume") and not resumable:  # a training run's --out refuses a fresh start until emptied
                again = f"no checkpoint was written: remove {cfg.out} and run it again"
            raise write_failed_error(e, getattr(cfg, "out", None), again) from None

    # typer hands the click context to a parameter annotated typer.Context: it knows which options were typed
    context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    command.__signature__ = inspect.Signature([context, *params])  # type: ignore[attr-defined]
    command.__doc__ = config.__doc__
    command.__name__ = config.COMMAND
    return command


RERUN_CONTINUES = ("generate", "score")  # commands whose rerun skips what a stopped run finished


def _has_checkpoint(cfg: Config) -> bool:
    """Whether a stopped run can be continued with --resume (a training run with a checkpoint in its --out)."""
    out = getattr(cfg, "out", None)
    if not hasattr(cfg, "resume") or out is None:
        return False
    return any(not p.name.endswith(TMP_SUFFIX) for p in (Path(out) / "checkpoints").glob("step-*"))


def typed_options(ctx: typer.Context, options: dict[str, Any]) -> set[str]:
    """The names of the options the user typed on the command line (not those left at their defaults)."""
    defaulted = ("DEFAULT", "DEFAULT_MAP")  # click's ParameterSource names (typer bundles its own click)
    return {name for name in options if (source := ctx.get_parameter_source(name)) and source.name not in defaulted}


# ---------------------------------------------------------------------------------------------
# cache


def cache_ls(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list instead of a table.")] = False,
) -> None:
    """List caches: size, records, tokens, teacher.

    Caches live under $DISTILL_HOME/caches (default ~/.cache/distill/caches).
    """
    from distill.cache.admin import list_caches
    from distill.paths import cache_root

    rows = list_caches(cache_root())
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no caches under {cache_root()}")
        return
    typer.echo(f"{'key':<22}{'size':>10}{'records':>10}{'tokens':>12}  {'state':<10}teacher")
    for r in rows:
        if "error" in r:
            typer.echo(f"{r['key']:<22}{'?':>10}{'?':>10}{'?':>12}  {'unreadable':<10}{r['error']}")
            continue
        state = "complete" if r["complete"] else "partial"
        typer.echo(
            f"{r['key']:<22}{_human_bytes(r['bytes_on_disk']):>10}{r['records']:>10}{r['tokens']:>12}  "
            f"{state:<10}{r['teacher']}"
        )


def cache_info(
    path: Annotated[str, typer.Argument(help="Cache directory, or a cache key (prefix) under the cache root.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (format_version, records, tokens, ...).")] = False,
) -> None:
    """Summarise one cache.

    Records, tokens, top-k, bytes per token, teacher, tokenizer, views, and the runs trained on it (--json for
    scripts).
    """
    from distill.cache.admin import cache_info as info
    from distill.runs import Registry
    from distill.runs.table import format_table, run_json, run_rows

    d = info(path)
    runs = Registry().runs(cache_key=d["key"])
    if as_json:
        typer.echo(json.dumps({**d, "runs": [run_json(m, p) for m, p in runs]}, indent=2))
        return
    for key in ("path", "key", "complete", "records", "tokens", "top_k", "precision", "vocab_size", "shards"):
        typer.echo(f"{key:<22}{d[key]}")
    typer.echo(f"{'bytes_on_disk':<22}{_human_bytes(d['bytes_on_disk'])} ({d['bytes_per_token']} bytes/token)")
    typer.echo(f"{'teacher':<22}{d['teacher']}")
    typer.echo(f"{'tokenizer':<22}{d['tokenizer_fingerprint']}")
    if d["provenance"].get("padding"):
        from distill.recording import padding_line

        typer.echo(padding_line(d["provenance"]["padding"]))
    views = ", ".join(f"{k} ({v} kept)" for k, v in d["views"].items()) or "none"
    typer.echo(f"{'views':<22}{views}")
    shared = sum(len(m.cache_keys) > 1 for m, _ in runs)
    among = f" ({shared} of them with other caches too)" if shared else ""
    typer.echo(f"{'runs':<22}{len(runs)} trained on this cache{among}" + (":" if runs else ""))
    if runs:
        typer.echo(format_table(run_rows(runs)))


def cache_verify(
    path: Annotated[str, typer.Argument(help="Cache directory, or a cache key (prefix) under the cache root.")],
) -> None:
    """Check sizes, checksums and every record.

    Exits 1 naming each broken shard.
    """
    from distill.cache.reader import TeacherCache

    cache = TeacherCache(path, allow_incomplete=True, check=False)
    problems = cache.verify()
    if not cache.complete:
        problems.append(f"{cache.path} is incomplete: its generation was interrupted (rerun it to finish)")
    if problems:
        for p in problems:
            typer.echo(f"FAIL {p}", err=True)
        raise typer.Exit(1)
    typer.echo(f"OK {cache.path}: {len(cache)} records, {cache.num_tokens} tokens, {len(cache.index.shards)} shards")


def cache_gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    incomplete: Annotated[
        bool, typer.Option("--incomplete", help="Also remove unfinished caches (interrupted generations).")
    ] = False,
) -> None:
    """Remove leftovers of crashed writers.

    Temp files and shards no index lists; caches being written are skipped.
    """
    from distill.cache.admin import garbage, remove
    from distill.paths import cache_root

    found = garbage(cache_root(), incomplete=incomplete)
    for p in found:
        typer.echo(f"{'would remove' if dry_run else 'remove'} {p}")
    if not dry_run:
        typer.echo(f"freed {_human_bytes(remove(found))}")


def cache_merge(
    caches: Annotated[list[str], typer.Argument(help="Caches made by slices of one run (--shard-index/--num-shards).")],
    out: Annotated[Path | None, typer.Option(help="Merged cache directory [$DISTILL_HOME/caches/KEY].")] = None,
) -> None:
    """Join slices of one run into one cache.

    The slices' fingerprints must agree; the last line printed is the merged cache.
    """
    from distill.cache.admin import cache_info, merge_caches

    if out is not None:
        check_outputs([Output(out)])
    path = merge_caches(caches, out)
    info = cache_info(path)
    typer.echo(f"merged {len(caches)} caches: {info['records']} records, {info['tokens']} tokens")
    typer.echo(str(path))


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ---------------------------------------------------------------------------------------------
# the table

# name → command; the order is the order of `distill --help`
COMMANDS = {
    "generate": config_command(GenerateConfig, "distill.generate:run_generate"),
    "score": config_command(ScoreConfig, "distill.score:run_score"),
    "serve": config_command(ServeConfig, "distill.serve:run_serve"),
    "filter": config_command(FilterConfig, "distill.filter:run_filter"),
    "train": config_command(TrainConfig, "distill.train:run_train"),
    "grpo": config_command(GRPOConfig, "distill.grpo:run_grpo"),
    "onpolicy": config_command(OnPolicyConfig, "distill.onpolicy:run_onpolicy"),
    "eval": config_command(EvalConfig, "distill.evaluate:run_eval"),
    "runs": config_command(RunsConfig, "distill.experiments:run_runs"),
    "compare": config_command(CompareConfig, "distill.experiments:run_compare"),
    "demo": config_command(DemoConfig, "distill.demo:run_demo"),
}
CACHE_COMMANDS = {"ls": cache_ls, "info": cache_info, "verify": cache_verify, "gc": cache_gc, "merge": cache_merge}
for name, fn in COMMANDS.items():
    app.command(name)(fn)
for name, fn in CACHE_COMMANDS.items():
    cache_app.command(name)(fn)
app.add_typer(cache_app, name="cache")


def main() -> None:
    """Entry point of the `distill` console script."""
    code: int | str | None
    stop_on_sigterm()  # preemption and time limits stop a run as Ctrl-C does, cleanly
    try:
        app()
    except DistillError as e:
        typer.echo(f"error: {e}", err=True)
        code = e.exit_code
    except SystemExit as e:  # click ends every run with one
        code = e.code
    else:
        code = 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _leave_rank(code)
    sys.exit(code)


def _leave_rank(code: int | str | None) -> NoReturn:
    """End a torchrun rank without interpreter teardown.

    FSDP2's process group outlives `destroy_process_group` (DTensor's caches hold its device
    mesh), so its gloo worker threads still run while Python shuts down. A worker that then frees
    a collective's buffer needs the GIL, and the rank dies with SIGABRT ("terminate called without
    an active exception") after all its work is done. Every file is closed by now: flush the
    streams and leave.
    """
    if isinstance(code, str):
        print(code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)
