"""Atomic placement: everything is written under a hidden name beside its final place and renamed
into place when complete, so no reader, and no later run, ever sees a partial file or dataset."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["aside_path", "write_atomic"]


def aside_path(final: Path, tag: str = "tmp") -> Path:
    """A hidden sibling of ``final``: ``.<name>.<tag>-<8 random hex digits>``."""
    return final.parent / f".{final.name}.{tag}-{os.urandom(4).hex()}"


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (str as UTF-8): readers see the old or the new file, never a
    part. Created with mode 0666 minus the umask, like any new file."""
    temporary = aside_path(path)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
