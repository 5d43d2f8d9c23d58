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
    lock.parent.mkdir(parents=True, exist_ok=True)
    owner = json.dumps({"host": HOST, "pid": os.getpid(), "started": time.time()})
    # One cheap create per dataset; a lock seen empty (its owner is writing it) counts as live
    # until it is old.
    while not create_new(lock, owner):
        stale = _stale_owner(lock)
        if stale is not None:
            _break(lock, stale)
            continue
        time.sleep(poll)
        poll = min(poll * 2, 1.0)
    done = threading.Event()
    refresher = threading.Thread(target=_refresh, args=(lock, done), daemon=True)
    refresher.start()
    try:
        yield
    finally:
        done.set()
        lock.unlink(missing_ok=True)


def _refresh(lock: Path, done: threading.Event) -> None:
    while not done.wait(REFRESH_SECONDS):
        try:
            os.utime(lock)
        except FileNotFoundError:
            return
