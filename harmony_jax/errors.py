"""User and environment errors, and how every entry point reports them: one line, no traceback.

A mistake in what the user gave (a config value, a flag, a data folder, a checkpoint) raises a
`UserError` subclass whose message names the file, key, shape or flag at fault; the entry points'
`main` is wrapped in `reported_as_one_line`, which prints `error: <message>` on stderr and exits
with status 2. An environment error (`OSError`: a full disk, a read-only or missing path) is
reported the same way with status 1. Anything else is a bug and keeps its traceback;
`HARMONY_TRACEBACK=1` shows the traceback of user and environment errors too.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

TRACEBACK_ENV = "HARMONY_TRACEBACK"
USER_EXIT = 2  # the input is at fault
ENVIRONMENT_EXIT = 1  # the disk, the permissions, a path that vanished

F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """Something the user gave cannot be used; the message names it and says what would do."""


class ConfigError(UserError, ValueError):
    """A config value of the right type but not an allowed one (an unknown name, 0 steps, ...)."""


class FlagError(UserError, ValueError):
    """A command-line flag that cannot be right (`--steps 0`, `--s_v nan`, an `--out` under a
    file, ...), found before any model is loaded."""


class DataError(UserError, ValueError):
    """A data folder or its captions file that cannot feed the run."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read, or one that could not be written."""


class DiskError(OSError):
    """The disk cannot take what the run must write: too little free space for a checkpoint,
    or a save that failed (ENOSPC, EIO, ...); an environment error (exit status 1)."""


def one_line(error: BaseException) -> str:
    """The error's message on one line: the first line of a multi-line message, or the
    exception's type when it has no message."""
    text = str(error).strip()
    if isinstance(error, OSError) and error.strerror and error.filename:
        text = f"{error.filename}: {error.strerror}"
    return text.splitlines()[0] if text else type(error).__name__


def exit_code(error: BaseException) -> int | None:
    """USER_EXIT / ENVIRONMENT_EXIT for errors reported in one line; None for a bug."""
    if isinstance(error, UserError):
        return USER_EXIT
    if isinstance(error, OSError):
        return ENVIRONMENT_EXIT
    return None


def reported_as_one_line(main: F) -> F:
    """Wraps an entry point's `main`: user and environment errors print `error: <one line>` on
    stderr and exit non-zero; other exceptions propagate with their traceback."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except Exception as e:
            code = exit_code(e)
            if code is None or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
                raise
            print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
            sys.exit(code)

    return wrapper  # type: ignore[return-value]
