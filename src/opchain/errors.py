"""Exceptions whose message is a complete, one-line user-facing explanation."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "DafError",
    "OpchainError",
    "PlanError",
    "SpecError",
    "StorageError",
    "storage_error",
    "storage_errors",
]


class OpchainError(Exception):
    """A user error: the CLI and the Snakefile print its message without a traceback."""


class DafError(OpchainError):
    """A daf dataset is missing, malformed, or was asked for something it does not hold."""


class SpecError(OpchainError):
    """A chain or operation YAML file is malformed or names something that does not exist."""


class PlanError(OpchainError):
    """The plan cannot be made or reserved (e.g. a concurrent planner took the same names)."""


class StorageError(OpchainError):
    """The storage refused a write (full, over quota, read-only): no code change fixes it, and
    its message says what to do, so it goes without a traceback."""


# The storage's own errors, which no code change fixes: what happened, and what to do.
_STORAGE = {
    errno.ENOSPC: ("no space left on device", "free space and run again"),
    errno.EDQUOT: ("disk quota exceeded", "free space or raise the quota and run again"),
    errno.EROFS: ("read-only file system", "make it writable and run again"),
}


def storage_error(error: BaseException, path: Path | str) -> StorageError | None:
    """The one line for a full disk, an exceeded quota or a read-only filesystem met while writing
    ``path`` (whose partial writes the caller removed); None for any other error."""
    if not isinstance(error, OSError) or error.errno not in _STORAGE:
        return None
    what, advice = _STORAGE[error.errno]
    return StorageError(f"{what} writing {path} ({advice}; nothing partial was kept)")


@contextmanager
def storage_errors(where: Path | str) -> Iterator[None]:
    """Raise a full disk, an exceeded quota or a read-only filesystem met inside as its one-line
    :class:`StorageError`, naming the file (else ``where``); other errors pass unchanged."""
    try:
        yield
    except OSError as error:
        full = storage_error(error, error.filename or where)
        if full is None:
            raise
        raise full from None
