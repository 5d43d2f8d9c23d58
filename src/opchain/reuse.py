"""A grid point computed before, placed in a new step directory: hard links of its files and a
metadata.yaml for its new place, cheap enough that a grown grid costs what its new points cost.

The metadata is made from the earlier dataset's text, not by a YAML round trip of all of it (more
than the rest of a link costs): its top-level keys are blocks of lines (a block-style dump starts
each at column 0), the few that name the new place are written anew as a computed result's are,
the others kept byte for byte, and the digests of the linked files carried from its digest block.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

from opchain import verify
from opchain.table import dump_yaml, entries, load_yaml

__all__ = ["OWN_FILES", "link_files", "linked_files", "linked_metadata"]

OWN_FILES = ("metadata.yaml", "input_metadata.yaml")  # a dataset's own: written for each place


def link_files(source: Path, temporary: Path, names: list[str]) -> list[Path]:
    """Hard links in ``temporary`` of the files ``names`` (paths inside it) of the dataset at
    ``source``; returns what must be flushed before publishing: its directories and any file
    copied instead (across filesystems). A hard link's data is durable already; its new entry is
    its directory's. A file missing at ``source`` raises FileNotFoundError."""
    written = [temporary]
    # Names resolved against open directories: a link costs one lookup, not one per component.
    source_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    target_fd = os.open(temporary, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            folder = name.rpartition("/")[0]
            if folder and not (temporary / folder).is_dir():
                (temporary / folder).mkdir(parents=True)
                written.append(temporary / folder)
            try:
                os.link(name, name, src_dir_fd=source_fd, dst_dir_fd=target_fd)
            except OSError as error:  # another filesystem, or no hard links there: a copy
                if error.errno == errno.ENOENT:
                    raise
                shutil.copy2(source / name, temporary / name)
                written.append(temporary / name)
    finally:
        os.close(source_fd)
        os.close(target_fd)
    return written


def linked_files(source: Path, digests: dict[str, str] | None) -> list[str]:
    """The files of the dataset at ``source`` that a link of it shares: those its digests name
    (every file it holds), or where it has none, those found; not its own two."""
    names = list(digests) if digests is not None else verify.files_of(source)
    return [name for name in names if name not in OWN_FILES]


def linked_metadata(
    body: str,
    digests: dict[str, str] | None,
    place: dict[str, Any],
    temporary: Path,
    input_metadata: str,
) -> str:
    """The sealed metadata.yaml, for its new ``place`` (seed, run, fingerprint, input, output,
    ...), of a dataset linked into ``temporary`` from where it was computed, whose metadata.yaml
    is ``body`` with ``digests`` (:func:`opchain.verify.split_sealed`): ``computed_in`` names
    that place (its ``output``), the datastore's and figures' URLs move to the new ``output``,
    and the digests are those of the linked files (hashed anew where it has none) and of
    ``input_metadata`` (its input_metadata.yaml, written already)."""
    blocks = entries(body)
    old, new = _value(blocks, "output"), place["output"]
    moved = {
        key: {name: url.replace(f"/{old}/", f"/{new}/", 1) for name, url in urls.items()}
        for key in ("datastore", "figures")
        if (urls := _value(blocks, key))
    }
    computed_in = _value(blocks, "computed_in") or old  # a link of a link: the first place
    for key, value in {**place, "computed_in": computed_in, **moved}.items():
        blocks[key] = dump_yaml({key: value})
    if digests is None:  # written before results carried digests
        files = verify.digests(temporary, {})
    else:
        files = {name: d for name, d in digests.items() if name not in OWN_FILES}
        files["input_metadata.yaml"] = verify.text_digest(input_metadata)
    return verify.sealed("".join(blocks.values()), dict(sorted(files.items())))


def _value(blocks: dict[str, str], key: str) -> Any:
    """One top-level entry's value, parsed alone (``{}`` and absent: None)."""
    block = blocks.get(key)
    value = None if block is None else load_yaml(block)[key]
    return None if value == {} else value
