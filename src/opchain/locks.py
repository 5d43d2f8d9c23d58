"""Exclusion per result across processes and hosts sharing one storage root.

A lock is a file under ``<storage>/.opchain/locks/`` created exclusively (``O_EXCL``, atomic on
NFS v3 and later too) holding its owner's host, pid and start time. The owner
refreshes its mtime while it works. A lock is stale when its owner is gone: on this host, when the
pid is no longer alive; from another host, when it has not been refreshed for ``STALE_SECONDS``.
A stale lock is broken by renaming it away (one breaker wins the rename), never by deleting a live
owner's lock.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from opchain.atomic import HOST, create_new, pid_alive

__all__ = ["LOCKS_DIR", "hold"]

LOCKS_DIR = ".opchain/locks"
REFRESH_SECONDS = 30
STALE_SECONDS = 300  # ten missed refreshes: the other host's owner died or lost the filesystem


def _stale_owner(lock: Path) -> str | None:
    """The lock's content if its owner is gone, else None."""
    try:
        text = lock.read_text(encoding="utf-8")
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return None  # released meanwhile: try again
    try:
        owner = json.loads(text)
    except ValueError:  # being written (created, not yet filled), or its owner died right then
        return text if age > STALE_SECONDS else None
    if owner.get("host") == HOST:
        return None if pid_alive(int(owner.get("pid", 0))) else text
    return text if age > STALE_SECONDS else None


def _break(lock: Path, stale: str) -> None:
    """Rename a dead owner's lock away; if a new owner took it meanwhile, put theirs back."""
    broken = lock.with_name(f".{lock.name}.stale-{os.urandom(4).hex()}")
    try:
        os.rename(lock, broken)  # of two breakers, one renames; the other finds nothing
    except FileNotFoundError:
        return
    if broken.read_text(encoding="utf-8") != stale:
        with suppress(FileExistsError):
            os.link(broken, lock)
    broken.unlink()


@contextmanager
def hold(storage: Path, name: str, poll: float = 0.05) -> Iterator[None]:
    """Hold the lock ``name`` (a path-like key, '/' allowed) for the duration of the block,
    waiting for a live owner to finish and breaking a dead owner's lock."""
    lock = storage / LOCKS_DIR / name.replace("/", "%")
    owner = json.dumps({"host": HOST, "pid": os.getpid(), "started": time.time()})
    # One cheap create per dataset; a lock seen empty (its owner is writing it) counts as live
    # until it is old.
    while not _create(lock, owner):
        stale = _stale_owner(lock)
        if stale is not None:
            _break(lock, stale)
            continue
        time.sleep(poll)
        poll = min(poll * 2, 1.0)
    _REFRESHER.add(lock)
    try:
        yield
    finally:
        _REFRESHER.discard(lock)
        lock.unlink(missing_ok=True)


def _create(lock: Path, owner: str) -> bool:
    try:
        return create_new(lock, owner)
    except FileNotFoundError:  # no lock folder yet
        lock.parent.mkdir(parents=True, exist_ok=True)
        return create_new(lock, owner)


class _Refresher:
    """One thread per process refreshes every lock the process holds (a job holds one per
    dataset it computes: a thread each would cost more than the dataset's lock)."""

    def __init__(self) -> None:
        self._held: set[Path] = set()
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, lock: Path) -> None:
        with self._mutex:
            self._held.add(lock)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._refresh, daemon=True)
                self._thread.start()

    def discard(self, lock: Path) -> None:
        with self._mutex:
            self._held.discard(lock)

    def _refresh(self) -> None:
        while True:
            time.sleep(REFRESH_SECONDS)
            with self._mutex:
                held = list(self._held)
            for lock in held:
                with suppress(FileNotFoundError):  # released meanwhile
                    os.utime(lock)


_REFRESHER = _Refresher()
# A forked worker holds its own locks: a fresh refresher (the parent's mutex may be held).
os.register_at_fork(after_in_child=_REFRESHER.__init__)
