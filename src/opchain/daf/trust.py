"""Checks remembered by the files that passed them, so a file linked unchanged from step to step of
a chain is checked once, not by every step that carries it.

Some checks of the files store read a whole file: that an axis file's entries are UTF-8 and unique,
that a string vector's file lists its axis's entries in order, that a CSR matrix's row pointers
and column indices are in range. When one passes, :func:`vouch` records it in an extended
attribute of the file (``user.opchain.checked``, JSON): the facts established, with the file's
inode, size and modification time (ns) at the check. :func:`vouched` returns a fact only while the
file still has that inode, size and time. Hard links share the attribute (a result's carried axis is
the input's file, linked), and any write to the file changes its time; a file is only vouched for
once its time is MIN_AGE_NS old, so that a write within the same tick of a coarse file-system clock
as the check cannot keep it. Where extended attributes are unavailable (not Linux, a file system
without them, a file the user may not annotate), nothing is recorded and every check runs as
before. Only the attribute changes, never a file's bytes or time.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from opchain.atomic import stamp

__all__ = ["MIN_AGE_NS", "stamp", "vouch", "vouched"]

ATTRIBUTE = "user.opchain.checked"

#: A file is vouched for only when last modified this long before its check (FAT's clock ticks
#: every 2 s; Linux file systems every few ms).
MIN_AGE_NS = 2_000_000_000


def _record(path: Path) -> tuple[list[int] | None, dict[str, Any]]:
    """The file's stamp now, and the facts recorded for that stamp (none if it changed)."""
    now = stamp(path)
    try:
        record = json.loads(os.getxattr(path, ATTRIBUTE))
    except (OSError, AttributeError, ValueError):  # none recorded, or no xattrs here
        return now, {}
    if not isinstance(record, dict) or record.get("stamp") != now:
        return now, {}
    facts = record.get("facts")
    return now, facts if isinstance(facts, dict) else {}


def vouched(path: Path, fact: str) -> list[Any]:
    """The value a check recorded as ``fact`` for the file at ``path``, if its content is
    unchanged since (a list, as :func:`vouch` was given it); an empty list if not."""
    value = _record(path)[1].get(fact)
    return value if isinstance(value, list) else []


def vouch(path: Path, fact: str, value: list[Any], before: list[int] | None) -> None:
    """Record that the file at ``path``, whose :func:`stamp` was ``before`` when its content was
    read for the check, passed it, establishing ``value`` (a JSON list). Nothing if the file changed
    since, is too recent (see MIN_AGE_NS), or can't be annotated."""
    now, facts = _record(path)
    if now is None or now != before or time.time_ns() - now[2] < MIN_AGE_NS:
        return
    record = {"stamp": now, "facts": {**facts, fact: value}}
    with contextlib.suppress(OSError, AttributeError):  # not ours to annotate, or no xattrs here
        os.setxattr(path, ATTRIBUTE, json.dumps(record).encode())
