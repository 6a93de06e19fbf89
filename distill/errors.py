"""The one exception type the user sees.

A `DistillError` carries a sentence written for the person at the terminal: what is wrong, with
which file, field or value, and what to do about it. The CLI prints its message and exits
non-zero without a traceback; anything else that escapes is a bug and keeps its traceback.
"""


class DistillError(Exception):
    """A problem with the user's input or files, explained in one sentence."""

    exit_code: int = 1
