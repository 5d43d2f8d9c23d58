"""Atomic placement: everything is written under a hidden name beside its final place and renamed
into place when complete, so no reader, and no later run, ever sees a partial file or dataset.

Aside names carry the writer's host and pid (``.<name>.tmp-<host>-<pid>-<random>``): a leftover of a
killed writer is recognised as such (same host, process gone) and removed by the next writer of the
same path, while a live writer's temporary, even on another host, is never touched.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = [
    "aside_path",
    "create_exclusive",
    "create_new",
    "pid_alive",
    "remove_leftovers",
    "write_atomic",
]

HOST = os.uname().nodename.replace("-", "_")  # '-' separates the fields of an aside name


def aside_path(final: Path, tag: str = "tmp") -> Path:
    """A hidden sibling of ``final``: ``.<name>.<tag>-<host>-<pid>-<8 random hex digits>``."""
    return final.parent / f".{final.name}.{tag}-{HOST}-{os.getpid()}-{os.urandom(4).hex()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_leftovers(final: Path, tag: str = "tmp") -> None:
    """Remove the aside copies of ``final`` left by killed writers on this host (never a live
    writer's, never another host's: their liveness cannot be known from here)."""
    prefix = f".{final.name}.{tag}-"
    try:
        names = [n for n in os.listdir(final.parent) if n.startswith(prefix)]
    except FileNotFoundError:
        return
    for name in names:
        host, _, pid = name[len(prefix) :].rpartition("-")[0].rpartition("-")
        if host == HOST and pid.isdigit() and not pid_alive(int(pid)):
            leftover = final.parent / name
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | str, *, clean: bool = True) -> None:
    """Replace ``path`` with ``data`` (str as UTF-8): readers see the old or the new file, never a
    part. Created with mode 0666 minus the umask, like any new file. ``clean=False`` skips the
    search for killed writers' leftovers (a listing of the folder: too dear in the index's large
    folders, whose leftovers are hidden and dropped by a rebuild)."""
    if clean:
        remove_leftovers(path)
    temporary = _write_aside(path, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def create_exclusive(path: Path, data: bytes | str) -> bool:
    """Create ``path`` with ``data`` unless it exists (then False), all or nothing: the content is
    written aside and hard-linked into place (``link`` fails if the name exists), so a kill never
    leaves an empty or partial file. Where hard links are not supported, O_EXCL then write."""
    temporary = _write_aside(path, data)
    try:
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links on this filesystem
        return create_new(path, data)
    finally:
        temporary.unlink(missing_ok=True)


def create_new(path: Path, data: bytes | str) -> bool:
    """Create ``path`` with ``data`` unless it exists (then False): O_EXCL, atomic on local
    filesystems and NFS v3+, in one file operation; the content is written just after, so a reader
    may briefly see the file empty (:func:`create_exclusive` never shows it so)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as out:
        out.write(data.encode() if isinstance(data, str) else data)
    return True


def _write_aside(path: Path, data: bytes | str) -> Path:
    temporary = aside_path(path)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary
