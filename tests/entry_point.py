"""Calls an entry point's `main` as the command line does, for tests of its error reporting."""

import pytest

from harmony_jax import errors


def one_line(capsys, call, *args, code: int = errors.USER_EXIT) -> str:
    """Runs `call(*args)` wrapped as every `main` is; asserts the exit status `code` and a single
    `error: ...` line on stderr, and returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        errors.reported_as_one_line(call)(*args)
    assert exit_info.value.code == code
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]
