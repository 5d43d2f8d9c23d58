"""A grid point computed before, placed in a new step directory: hard links of its files and a
metadata.yaml for its new place, cheap enough that a grown grid costs what its new points cost.

The metadata is made from the earlier dataset's text, not by a YAML round trip (parsing a
result's metadata.yaml costs ~1 ms even with libyaml, more than the rest of a link): its top-level
keys are blocks of lines (a block-style dump starts each at column 0), the few that name the new
place are rewritten as JSON (valid YAML), the others kept byte for byte, and the digests of the
linked files carried from its digest block.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from opchain import verify

__all__ = ["OWN_FILES", "link_files", "linked_metadata"]

OWN_FILES = ("metadata.yaml", "input_metadata.yaml")  # a dataset's own: written for each place
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def link_files(source: Path, temporary: Path) -> list[Path]:
    """Hard links in ``temporary`` of the files of the dataset at ``source`` but its own; returns
    what must be flushed before publishing: its directories and any file copied instead (across
    filesystems). A hard link's data is durable already; its new entry is its directory's."""
    written = []
    for folder, _, files in os.walk(source):
        target = temporary / Path(folder).relative_to(source)
        target.mkdir(exist_ok=True)
        written.append(target)
        for name in files:
            if folder == str(source) and name in OWN_FILES:
                continue
            try:
                os.link(os.path.join(folder, name), target / name)
            except OSError:  # another filesystem, or no hard links there
                shutil.copy2(os.path.join(folder, name), target / name)
                written.append(target / name)
    return written


def linked_metadata(text: str, place: dict[str, Any], temporary: Path, input_metadata: str) -> str:
    """The sealed metadata.yaml of a dataset linked from the one whose metadata.yaml is ``text``
    into ``temporary``: its entries, with ``place`` (seed, run, fingerprint, input, output, ...)
    for its new place, ``computed_in`` where it was first computed, the datastore's and figures'
    URLs moved to the new ``output``, and the digests of the linked files (hashed anew if it has
    none) and of ``input_metadata`` (its input_metadata.yaml, written already)."""
    body, digests = verify.split_sealed(text)
    blocks = _blocks(body)
    old = _value(blocks, "output")
    moved = {
        key: {
            name: url.replace(f"/{old}/", f"/{place['output']}/", 1) for name, url in urls.items()
        }
        for key in ("datastore", "figures")
        if (urls := _value(blocks, key))
    }
    computed_in = _value(blocks, "computed_in") or old
    for key, value in {**place, "computed_in": computed_in, **moved}.items():
        blocks[key] = f"{key}: {json.dumps(value, ensure_ascii=False)}\n"
    if digests is None:  # written before results carried digests
        files = verify.digests(temporary, {})
    else:
        files = {name: d for name, d in digests.items() if name not in OWN_FILES}
        files["input_metadata.yaml"] = hashlib.sha256(input_metadata.encode()).hexdigest()
    return verify.sealed("".join(blocks.values()), dict(sorted(files.items())))


def _blocks(body: str) -> dict[str, str]:
    """A block-style YAML mapping's text by top-level key, in order."""
    blocks: dict[str, str] = {}
    key = ""
    for line in body.splitlines(keepends=True):
        if line[:1] not in (" ", "-", "\n", ""):  # a key at column 0 starts an entry
            key = line.split(":", 1)[0]
            blocks[key] = ""
        blocks[key] += line
    return blocks


def _value(blocks: dict[str, str], key: str) -> Any:
    """One top-level entry's value, parsed alone (``{}`` and absent: None)."""
    block = blocks.get(key)
    if block is None or block == f"{key}: {{}}\n":
        return None
    return yaml.load(block, Loader=_LOADER)[key]
