"""Where datasets live: the storage root (config or $OPCHAIN_STORAGE), the confinement of every
path to it, the datasets of an input summary, an input's fingerprint by stat, and the finished
datasets of a step directory. Everything that looks at the storage root's files while planning."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from opchain.errors import SpecError

__all__ = [
    "CHAINS_DIR",
    "OPERATIONS_DIR",
    "dataset_files",
    "existing_datasets",
    "find_datasets",
    "inside_storage",
    "storage_root",
]

CHAINS_DIR = "operation_chain_results"
OPERATIONS_DIR = "operation_results"


def existing_datasets(step_dir: Path) -> frozenset[str]:
    """The finished datasets of a step: one directory listing (hidden temporaries excluded)."""
    try:
        return frozenset(n for n in os.listdir(step_dir) if n.startswith("dataset_"))
    except FileNotFoundError:
        return frozenset()


def inside_storage(storage: Path, relative: str, where: Path) -> Path:
    """``storage/relative``, refusing anything (.., absolute paths, symlinks) that leaves the root."""
    if "\0" in relative:
        raise SpecError(f"{where}: path {relative!r} contains a NUL character")
    root = storage.resolve()
    path = (root / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(root):
        raise SpecError(f"{where}: '{relative}' leaves the storage root {storage}")
    return path


def find_datasets(storage: Path, summary: str, where: Path) -> list[str]:
    """The datasets of a summary (at any depth), as sorted paths relative to the storage root."""
    top = inside_storage(storage, summary, where)
    if not top.is_dir():
        raise SpecError(
            f"{where}: input_path '{summary}' is not a folder under the storage root {storage}"
        )
    root = storage.resolve()
    found: list[str] = []
    skipped: list[str] = []
    for folder, subfolders, files in os.walk(top):
        for name in subfolders + files:  # os.walk does not follow links: say which were skipped
            entry = Path(folder) / name
            if entry.is_symlink() and not entry.resolve().is_relative_to(root):
                skipped.append(f"{entry.relative_to(root)} (a symlink leaving the storage root)")
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        if "__daf__.yaml" in files or "data.h5" in files:
            found.append(Path(folder).relative_to(root).as_posix())
            subfolders.clear()
            continue
        found += [
            (Path(folder) / f).relative_to(root).as_posix()
            for f in files
            if f.endswith((".h5", ".hdf5")) and not f.startswith(".")
        ]
    if not found:
        why = f"; skipped {', '.join(skipped)}" if skipped else ""
        raise SpecError(
            f"{where}: input_path '{summary}' holds no datasets (daf folders or .h5 files){why}"
        )
    return sorted(found)


def dataset_files(storage: Path, dataset: str) -> list[list[Any]]:
    """A dataset's files' paths, sizes and mtimes (what its fingerprint hashes: touching or
    editing one reruns it)."""
    path = storage / dataset
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    entries = []
    for file in files:
        stat = file.stat()
        entries.append([file.relative_to(storage).as_posix(), stat.st_size, stat.st_mtime_ns])
    return entries


def storage_root(config: dict[str, Any]) -> Path:
    """The storage root: $OPCHAIN_STORAGE, else the config's ``storage``."""
    return Path(os.environ.get("OPCHAIN_STORAGE") or config.get("storage", "storage"))
