"""Every result directory under the storage root (``opchain list --all``), and removing those no
configured chain uses (``opchain gc``).

A result directory is a step directory of a chain (``operation_chain_results/<chain>/<step>``) or
of a single operation (``operation_results/<step>``). ``gc`` never removes one the current config
uses, nor anything outside the storage root; it removes the index entries of what it removes
(``.opchain/steps/<fingerprint>``, ``chains/<name>``) but keeps the name claims (``names/``), so a
later run that needs the result again recomputes it into a new directory with a new name. Datasets
hard-linked into other directories (``computed_in``) stay intact there: removing a link never
removes the data another directory links to.

A run in progress is detected by Snakemake's own lock: ``gc`` refuses while the project's
``.snakemake/locks/`` holds a lock (a running ``snakemake``, or one that was killed: then
``snakemake --unlock`` first).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from opchain.errors import OpchainError
from opchain.index import INDEX_DIR
from opchain.plan import Plan
from opchain.storage import CHAINS_DIR, OPERATIONS_DIR
from opchain.table import HISTORY_DIR, history_versions, name_time

__all__ = ["ResultDir", "collect", "refuse_while_running", "result_dirs", "show_all"]

LOCKS = Path(".snakemake/locks")


@dataclass(frozen=True)
class ResultDir:
    path: str  # relative to the storage root
    size: int  # bytes of its files, each hard-linked file once
    used: bool  # by a chain (or the operation) of the current config
    versions: tuple[str, ...]  # chain versions that used it: <chain>@<history version>

    @property
    def time(self) -> tuple[int, ...]:
        return name_time(Path(self.path).name)


def files_of(folder: Path) -> list[os.stat_result]:
    """The stat of every file under ``folder`` (symlinks not followed), each inode once."""
    seen: dict[tuple[int, int], os.stat_result] = {}
    for root, _, files in os.walk(folder):
        for name in files:
            stat = os.lstat(os.path.join(root, name))
            seen.setdefault((stat.st_dev, stat.st_ino), stat)
    return list(seen.values())


def chain_versions(storage: Path) -> dict[str, list[str]]:
    """Step directory -> the chain versions (``<chain>@<version>``) whose chain.yaml named it."""
    used: dict[str, list[str]] = {}
    for chain_dir in sorted(
        (storage / CHAINS_DIR).iterdir() if (storage / CHAINS_DIR).is_dir() else []
    ):
        for version in history_versions(chain_dir):
            manifest = yaml.safe_load(version.read_text(encoding="utf-8")) or {}
            tag = f"{manifest.get('chain')}@{version.stem}"
            for step_dir in {s["dir"] for run in manifest.get("runs", []) for s in run["steps"]}:
                used.setdefault(step_dir, []).append(tag)
    return used


def result_dirs(plan: Plan) -> list[ResultDir]:
    """Every result directory under the storage root, oldest first (by the time in its name)."""
    storage = plan.storage
    used = {step.dir for step in plan.steps.values()}
    versions = chain_versions(storage)
    found = [
        p
        for p in [*storage.glob(f"{CHAINS_DIR}/*/*"), *storage.glob(f"{OPERATIONS_DIR}/*")]
        if p.is_dir() and not p.is_symlink() and name_time(p.name) and p.name != HISTORY_DIR
    ]
    dirs = []
    for path in found:
        relative = path.relative_to(storage).as_posix()
        size = sum(s.st_size for s in files_of(path))
        dirs.append(ResultDir(relative, size, relative in used, tuple(versions.get(relative, []))))
    return sorted(dirs, key=lambda d: (d.time, d.path))


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError  # unreachable


def show_all(plan: Plan) -> int:
    """``opchain list --all``."""
    for d in result_dirs(plan):
        state = "used" if d.used else "unused"
        print(f"{d.path}  {human(d.size)}  {state}  versions: {', '.join(d.versions) or '-'}")
    return 0


def freed_bytes(storage: Path, removed: list[str]) -> int:
    """Bytes the removal frees: files none of whose links survive outside ``removed``."""
    stats = [s for d in removed for s in files_of(storage / d)]
    links = Counter((s.st_dev, s.st_ino) for s in stats)
    unique = {(s.st_dev, s.st_ino): s for s in stats}
    return sum(s.st_size for key, s in unique.items() if s.st_nlink <= links[key])


def drop_index_entries(storage: Path, removed: set[str]) -> None:
    for kind in ("steps", "chains"):
        for entry in (storage / INDEX_DIR / kind).glob("*"):
            if json.loads(entry.read_text(encoding="utf-8")).get("dir") in removed:
                entry.unlink()


def refuse_while_running(command: str) -> None:
    """Refuse ``command`` (which removes results) while Snakemake's lock says a run is going on."""
    locks = sorted(LOCKS.glob("*")) if LOCKS.is_dir() else []
    if locks:
        raise OpchainError(
            f"{locks[0]}: a snakemake run holds this project's lock; {command} waits until it "
            "ends (after a killed run: snakemake --unlock)"
        )


def collect(plan: Plan, keep_last: int, older_than: float | None, *, dry_run: bool) -> int:
    """``opchain gc``: remove the result directories no current chain uses."""
    refuse_while_running("gc")
    storage, root = plan.storage, plan.storage.resolve()
    dirs = result_dirs(plan)
    candidates = [d for d in dirs if not d.used]
    if keep_last > 0:
        candidates = candidates[:-keep_last]
    if older_than is not None:
        cutoff = time.time() - older_than * 86400
        candidates = [d for d in candidates if time.mktime((*d.time[:6], 0, 0, -1)) < cutoff]
    removed = [d.path for d in candidates if (root / d.path).resolve().is_relative_to(root)]
    # A chain directory no current chain uses goes too once no result directory is left in it.
    keep = {chain.dir for chain in plan.chains}
    keep |= {d.path.rsplit("/", 1)[0] for d in dirs if d.path not in removed}
    chains = [
        relative
        for relative in (p.parent.relative_to(storage).as_posix()
                         for p in sorted(storage.glob(f"{CHAINS_DIR}/*/chain.yaml")))
        if relative not in keep and (root / relative).resolve().is_relative_to(root)
    ]  # fmt: skip
    tops = chains + [d for d in removed if d.rsplit("/", 1)[0] not in chains]
    freed = freed_bytes(storage, tops)
    verb = "would remove" if dry_run else "removed"
    for path in removed + chains:
        print(f"{verb} {path}")
    if not dry_run:
        for path in tops:
            shutil.rmtree(storage / path)
        drop_index_entries(storage, set(removed) | set(chains))
    print(f"{verb} {len(removed)} result directories, {human(freed)} freed")
    return 0
