"""Atomic placement: everything is written under a hidden name beside its final place and renamed
into place when complete, so no reader, and no later run, ever sees a partial file or dataset.

Aside names carry the writer's host and pid (``.<name>.tmp-<host>-<pid>-<random>``): a leftover of a
killed writer is recognised as such (same host, process gone) and removed by the next writer of the
same path, while a live writer's temporary, even on another host, is never touched.

Durability: :func:`publish` is the one place where something written aside becomes visible. It
flushes the temporary (every file and directory of a tree) to stable storage before the rename and
the directory holding the new name after it, so after a power cut or a host crash a published name
is complete or absent, never short or empty. The flushes of one tree run side by side (the
filesystem commits them together: ~2 journal commits a dataset instead of one per file).
``durable: false`` in the config (:func:`set_durable`) skips them, for scratch storage.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Collection, Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

__all__ = [
    "aside_path",
    "create_exclusive",
    "create_new",
    "durable",
    "flush",
    "link_same",
    "make_dirs",
    "pid_alive",
    "publish",
    "publish_many",
    "remove_leftovers",
    "set_durable",
    "stamp",
    "tree",
    "write_aside",
    "write_atomic",
]

HOST = os.uname().nodename.replace("-", "_")  # '-' separates the fields of an aside name
_durable = True  # the config's `durable`: flush before and after publishing


def set_durable(on: bool) -> None:
    """Whether :func:`publish` flushes (the config's ``durable``, on unless set false)."""
    global _durable
    _durable = bool(on)


def durable() -> bool:
    return _durable


def flush(paths: Iterable[Path]) -> None:
    """Bring ``paths`` (files or directories) to stable storage (``fsync``), side by side: the
    filesystem commits concurrent flushes together, where one after the other costs a commit each.
    Nothing when durability is off."""
    if not _durable:
        return
    paths = list(paths)
    if len(paths) == 1:
        _fsync(paths[0])
    else:
        for _ in _flushers().map(_fsync, paths):  # re-raises the first error
            pass


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # a directory too: its fsync makes its entries durable
    try:
        os.fsync(fd)
    except OSError as error:  # some filesystems cannot flush a directory (as PostgreSQL knows)
        if error.errno not in (errno.EINVAL, errno.EBADF) or not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


@cache
def _flushers() -> ThreadPoolExecutor:
    from concurrent.futures import ThreadPoolExecutor  # 6 ms: only where a tree is flushed

    return ThreadPoolExecutor(16, thread_name_prefix="opchain-flush")


def tree(path: Path, linked: Collection[str] = ()) -> list[Path]:
    """``path`` and, for a directory, every file and directory under it: what publishing it
    flushes. But the files ``linked`` (names of files in ``path`` itself that are hard links of
    published files: their data is durable already, their new entries are ``path``'s)."""
    if not path.is_dir():
        return [path]
    found = [path]
    for folder, dirs, files in os.walk(path):
        top = folder == str(path)
        found += [Path(folder, name) for name in dirs]
        found += [Path(folder, name) for name in files if not (top and name in linked)]
    return found


def publish(
    temporary: Path,
    final: Path,
    *,
    exclusive: bool = False,
    along: Sequence[tuple[Path, Path]] = (),
) -> bool:
    """Give the complete ``temporary`` (a file, or a directory tree) the name ``final``, durably:
    its content is flushed before the rename, the directory of ``final`` after it. Hard-linked
    files count like any other: flushed with their tree, published by its rename. ``exclusive``:
    a hard link that fails if ``final`` exists (then False; ``temporary`` stays), for a file.
    A directory never replaces a finished one (a non-empty ``final``): then False, nothing
    renamed. ``along``: more (temporary, final) pairs renamed just after, in the same two rounds
    of flushes."""
    if not exclusive:
        return final in publish_many([(temporary, final)], along={final: along})
    flush(tree(temporary))
    try:
        os.link(temporary, final)
    except FileExistsError:
        return False
    flush([final.parent])
    return True


def publish_many(
    moves: Sequence[tuple[Path, Path]],
    written: Iterable[Path] | None = None,
    along: Mapping[Path, Sequence[tuple[Path, Path]]] | None = None,
) -> set[Path]:
    """Give many complete temporaries their final names in two rounds of flushes for all of them
    (a round waits for the disk once, however many files it flushes): before the renames,
    ``written`` (what in them is not durable yet; by default every file and directory in them),
    after, the directories holding the new names. ``along``: for a final, more (temporary,
    final) pairs renamed just after it if it was published (a dataset's index entry). Returns
    the finals published: a directory whose final another process finished meanwhile is not
    (its temporary stays). For datasets of hard links of published files (a bulk link), whose
    linked data is durable already, ``written`` is only their directories and own new files."""
    along = along or {}
    if written is None:
        pairs = [*moves, *(pair for _, final in moves for pair in along.get(final, ()))]
        written = [path for aside, _ in pairs for path in tree(aside)] if _durable else []
    flush(written)
    published, names = set(), []
    for temporary, final in moves:
        if _rename(temporary, final):
            published.add(final)
            names.append(final)
            for aside, name in along.get(final, ()):
                os.replace(aside, name)
                names.append(name)
    flush(list(dict.fromkeys(name.parent for name in names)))
    return published


def _rename(temporary: Path, final: Path) -> bool:
    """``os.replace``, except that a directory is not put over a non-empty one (False)."""
    try:
        os.replace(temporary, final)
    except OSError as error:
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST) and temporary.is_dir():
            return False
        raise
    return True


def make_dirs(path: Path) -> None:
    """``mkdir -p path``, each directory it creates flushed into its parent (so a published entry
    in it cannot vanish with it after a crash)."""
    if path.is_dir():
        return
    make_dirs(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return
    flush([path.parent])


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
    temporary = write_aside(path, data)
    try:
        publish(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def create_exclusive(path: Path, data: bytes | str) -> bool:
    """Create ``path`` with ``data`` unless it exists (then False), all or nothing: the content is
    written aside and hard-linked into place (``link`` fails if the name exists), so a kill never
    leaves an empty or partial file. Where hard links are not supported, O_EXCL then write."""
    temporary = write_aside(path, data)
    try:
        return publish(temporary, path, exclusive=True)
    except OSError:  # no hard links on this filesystem
        if not create_new(path, data):
            return False
        flush([path])
        flush([path.parent])
        return True
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


def write_aside(path: Path, data: bytes | str) -> Path:
    """``data`` in a new hidden sibling of ``path`` (see :func:`aside_path`), to publish."""
    temporary = aside_path(path)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def link_same(source: str | Path, target: str | Path, data: bytes) -> bool:
    """Hard-link ``source`` as the new file ``target`` if it holds exactly ``data``; ``False``
    (nothing made) if not, or if it can't be linked. Creating a file costs a filesystem an inode,
    a journal entry and a flush when published (~1 ms on this project's VM), a link ~0.03 ms,
    and a result carries many small files unchanged. The link is compared after it is made, so
    a file replaced meanwhile is never kept: by its bytes the first time, then by its inode,
    size and modification time, as long as they are those of the file that held ``data`` (a
    batch job links the same files of its input into every result)."""
    key = os.fspath(source)
    known = _LINKED_SAME.get(key)
    if known is None or known[1] != data:
        if _head(source, len(data)) != data:
            return False
        known = None
    try:
        os.link(source, target)
    except OSError:  # another file system, or no hard links there
        return False
    if known is not None and stamp(target) == known[0]:
        return True
    if _head(target, len(data)) == data:
        found = stamp(target)
        if found is not None:
            _LINKED_SAME[key] = (found, data)
        return True
    os.unlink(target)
    return False


# Per source file: the stamp of the file it was and the bytes it held when last linked.
_LINKED_SAME: dict[str, tuple[list[int], bytes]] = {}


def stamp(path: str | Path) -> list[int] | None:
    """The file's inode, size and modification time (ns); None if it can't be read."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return [status.st_ino, status.st_size, status.st_mtime_ns]


def _head(path: str | Path, size: int) -> bytes | None:
    """The first ``size + 1`` bytes of the file ``path`` (so a longer file compares unequal to
    ``size`` bytes), or ``None`` if it can't be read."""
    try:
        with open(path, "rb") as file:
            return file.read(size + 1)
    except OSError:
        return None
