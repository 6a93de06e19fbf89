"""SIGTERM is a clean stop, like Ctrl-C: what Slurm and Kubernetes send on preemption and at the time limit.

- `Interrupted`: the KeyboardInterrupt of a stop, saying which signal and what the run kept; its exit code is
  128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM), as a shell reports a process the signal ended;
- `stop_on_sigterm`: the CLI calls it first, so SIGTERM raises `Interrupted` wherever the process is, as Ctrl-C
  raises KeyboardInterrupt: every `with` block closes as for Ctrl-C (a cache writer saves its finished records,
  a run's manifest says `interrupted`, trackers end their runs);
- `StopRequest`: around a training loop, the first SIGINT or SIGTERM only asks to stop: the step in progress
  finishes, the loop writes a checkpoint and raises `Interrupted` (`stop_now`), so `--resume` continues exactly
  there; a second signal stops at once (the last checkpoint stays);
- `stopped_error`: the one sentence the CLI prints for a stop, with the command that continues the run
  (`rerun_advice`, which a run ended by a full disk gets too).

Handlers can only be set in the main thread; elsewhere (a run inside a thread) these do nothing.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from types import FrameType
from typing import Any

from distill.errors import DistillError

NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class Interrupted(KeyboardInterrupt):
    """A stop by `signum`; `kept` says what the run kept ("after step 3, its checkpoint written")."""

    def __init__(self, signum: int = signal.SIGINT, kept: str = "") -> None:
        self.signum, self.kept = signum, kept
        super().__init__(f"interrupted by {NAMES.get(signum, f'signal {signum}')}" + (f" {kept}" if kept else ""))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises `Interrupted`, as Ctrl-C raises KeyboardInterrupt (the CLI's first act)."""
    if _main_thread():
        signal.signal(signal.SIGTERM, _raise)


class StopRequest:
    """Around a loop of steps: the first SIGINT/SIGTERM sets `signum` (the loop stops after its step); a second one
    raises `Interrupted` at once.

        with StopRequest() as stop:
            while step < total:
                ...one step, then its checkpoint if due...
                if stop.signum is not None:
                    save a checkpoint (unless just saved); raise stop.stop_now(f"after step {step}, ...")
    """

    def __init__(self, until: str = "after this step, with a checkpoint", enabled: bool = True) -> None:
        """until: when the loop stops, as the note on the first signal says it."""
        self.until = until
        self.enabled = enabled and _main_thread()
        self.signum: int | None = None
        self._before: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if self.enabled:
            self._before = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise Interrupted(signum, "at once, the second time (what was saved before stays)")
        self.signum = signum
        name = NAMES.get(signum, f"signal {signum}")
        print(f"\n{name}: stopping {self.until}; send it again to stop at once", file=sys.stderr)

    def stop_now(self, kept: str) -> Interrupted:
        """The exception that ends the loop, its checkpoint written."""
        return Interrupted(self.signum or signal.SIGINT, kept)

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._before.items():
            signal.signal(s, handler)


def stopped_error(error: KeyboardInterrupt, argv: list[str], resumable: bool, continues: bool = False) -> DistillError:
    """The sentence for a run stopped by a signal: what happened, what it kept, the command that continues it (the
    same command with --resume for a training run with a checkpoint; the same command where it `continues`, as
    generate and score do), with
    exit code 128 + the signal's number."""
    why = str(error) or "interrupted by Ctrl-C (SIGINT)"
    out = DistillError(f"{why}; {rerun_advice(argv, resumable, continues)}")
    out.exit_code = error.exit_code if isinstance(error, Interrupted) else 128 + signal.SIGINT
    return out


def rerun_advice(argv: list[str], resumable: bool, continues: bool = False) -> str:
    """What to run after a run ended early (a stop, a full disk): the same command with --resume for a training run
    with a checkpoint; the same command where it `continues` (generate, score); else a fresh start."""
    if resumable:
        again = argv if "--resume" in argv else [*argv, "--resume"]
        return f"continue it with: {shlex.join(again)}"
    if continues:
        return f"what was finished is kept, and the same command continues it: {shlex.join(argv)}"
    return "nothing was kept: run it again to start over"
