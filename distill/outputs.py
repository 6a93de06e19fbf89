"""Where a command writes, checked before it starts, and a write that fails midway, as one sentence.

- `Output`: one place a command writes (a directory, or eval's JSON file) and the option that named it;
- `output_problems` / `check_outputs`: every output that exists as the wrong kind (a file where a directory goes,
  a directory where a file goes), sits under a file, cannot be written (permissions, a read-only file system) or
  lies on a full file system. The CLI checks a command's outputs (`Config.outputs`) before importing its stage,
  so a bad `--out` costs nothing and leaves nothing behind, instead of failing after the work (eval used to
  evaluate everything and then lose the results to `--out DIR`);
- `write_failed_error`: a disk, quota or file-size limit hit while writing (ENOSPC, EDQUOT, EFBIG) as the sentence
  the user sees, naming the file and the command that continues. Writers keep finished work valid on their own
  (temp file, then rename), so what was finished stays.

Nothing here creates anything: a check that made directories would leave them behind when it refuses.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from distill.errors import DistillError

# the errors of a full disk or quota, and of a file-size limit (`ulimit -f`, with SIGXFSZ ignored)
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@dataclass(frozen=True)
class Output:
    """A path a command will write: `kind` is what it must be; `named_by` says where the user set it ("--out"), and
    `fix` what to do when it cannot be written."""

    path: Path
    named_by: str = "--out"
    kind: Literal["directory", "file"] = "directory"
    fix: str = "give another --out"  # the end of the sentence: what to do


def _writable(directory: Path) -> bool:
    # os.access asks the kernel, so a read-only file system (EROFS) is refused for root too
    return os.access(directory, os.W_OK | os.X_OK)


def _full(directory: Path) -> bool:
    try:
        fs = os.statvfs(directory)
    except OSError:
        return False
    return fs.f_blocks > 0 and fs.f_bavail == 0  # pseudo file systems report no blocks at all


def output_problem(output: Output) -> str | None:
    """The sentence for an output that cannot be written as it must be, or None."""
    named = f"{output.named_by} {output.path}"
    path = Path(output.path).expanduser()
    try:
        path = path.resolve()  # a symlink counts as what it points to
    except OSError:
        path = path.absolute()
    if path.exists():
        if output.kind == "directory" and not path.is_dir():
            return f"{named} is a file, not a directory; {output.fix} or remove the file"
        if output.kind == "file" and path.is_dir():
            return f"{named} is a directory; it names the file to write: give a file name such as {path / 'eval.json'}"
        folder = path if output.kind == "directory" else path.parent
    else:
        folder = next(p for p in path.parents if p.exists())  # "/" exists: the loop ends
        if not folder.is_dir():
            return f"{named} cannot be created: {folder} is a file, not a directory; {output.fix}"
    if not _writable(folder):
        return (
            f"{named} cannot be written: {folder} is not writable (permissions or a read-only file system); "
            f"{output.fix}"
        )
    if _full(folder):
        return f"{named} cannot be written: the file system of {folder} is full; free space or {output.fix}"
    return None


def output_problems(outputs: list[Output]) -> list[str]:
    """One sentence per output that cannot be written (none: all can)."""
    return [p for o in outputs if (p := output_problem(o)) is not None]


def check_outputs(outputs: list[Output]) -> None:
    """Raise one `DistillError` naming every output that cannot be written; creates nothing."""
    problems = output_problems(outputs)
    if problems:
        raise DistillError("; ".join(problems) + ".")


def is_out_of_space(error: BaseException) -> bool:
    """Whether `error` is a write that hit a full disk, a quota or a file-size limit."""
    return isinstance(error, OSError) and error.errno in SPACE_ERRNOS


def write_failed_error(error: OSError, where: Path | None, again: str) -> DistillError:
    """The sentence for a write that failed for want of space: which file (or, when the error does not say, the
    output `where`), why, and `again` (what to run once there is room, from distill.stopping.rerun_advice)."""
    path = error.filename or where or "the output"
    why = os.strerror(error.errno) if error.errno else str(error)
    return DistillError(f"Writing {path} failed: {why} (a full disk, a quota or a file-size limit); {again}")
