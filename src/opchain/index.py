"""The index under ``<storage>/.opchain/``: which timestamped directory belongs to which fingerprint.

Layout (one small file per entry, so concurrent writers never edit a shared file)::

    .opchain/steps/<fingerprint>      JSON: {"dir": <step dir relative to storage>, ...}
    .opchain/chains/<chain name>      JSON: {"dir": <chain dir>, "origin": <chain file>}
    .opchain/names/<dir, / as %>      empty: the claim on a directory name, never reused
    .opchain/datasets/<fingerprint>   JSON: {"path": <dataset dir>}: where a point was computed

Entries are created all-or-nothing and exclusively (:func:`opchain.atomic.create_exclusive`), so a
kill never leaves an empty one, and flushed before and after they are published, so a host crash
does not either. Of two runs that reserve the same fingerprint at once, the second
adopts the first's directory; of two that claim the same name, the second takes the next suffix.
Names are timestamps in the seed's form (``2026_11_23_6_5_2``), with ``_1``, ``_2`` … when taken
within the same second. The index is derived data: :meth:`Index.rebuild` recreates it from the
results' ``metadata.yaml`` and ``chain.yaml`` files, whatever state the index is in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from opchain.atomic import create_exclusive, make_dirs, publish, write_aside, write_atomic
from opchain.errors import PlanError, storage_errors

__all__ = ["Index", "Reservation", "timestamp_name"]

INDEX_DIR = ".opchain"


def timestamp_name(now: float | None = None) -> str:
    """``year_month_day_hour_minute_second`` in local time, without zero padding (as pySPACE)."""
    return "_".join(str(part) for part in time.localtime(now)[:6])


@dataclass(frozen=True)
class Reservation:
    kind: str  # "steps" or "chains"
    key: str  # fingerprint or chain name
    dir: str  # relative to the storage root
    entry: dict[str, Any]
    replace: bool = False  # a forced rerun: the fingerprint gets this new directory


@dataclass
class Index:
    storage: Path
    pending: list[Reservation] = field(default_factory=list)
    # Where the suffix search of each (parent, second) stopped: keeps proposing linear.
    _next_suffix: dict[tuple[str, str], int] = field(default_factory=dict)

    @cached_property
    def root(self) -> Path:
        return self.storage / INDEX_DIR

    def lookup(self, kind: str, key: str) -> dict[str, Any] | None:
        """The entry for a fingerprint (``steps``, ``datasets``) or chain name, or None."""
        path = self.root / kind / key
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise PlanError(
                f"{path}: corrupt index entry ({error}); run 'opchain index --rebuild'"
            ) from None

    def propose(
        self, kind: str, key: str, parent: str, entry: dict[str, Any], *, replace: bool = False
    ) -> str:
        """A new directory name under ``parent`` for ``key``, reserved only by :meth:`commit`
        (``replace``: even though ``key`` has a directory already, which stays until gc)."""
        relative = self._free_name(parent)
        self.pending.append(Reservation(kind, key, relative, {**entry, "dir": relative}, replace))
        return relative

    def _free_name(self, parent: str) -> str:
        base = timestamp_name()
        suffix = self._next_suffix.get((parent, base), 0)
        while True:
            name = f"{base}_{suffix}" if suffix else base
            taken = os.path.exists(os.path.join(self.storage, parent, name))
            if not (taken or self._claimed(f"{parent}/{name}")):
                break
            suffix += 1
        self._next_suffix[(parent, base)] = suffix + 1
        return f"{parent}/{name}"

    def commit(self) -> list[tuple[Reservation, str, str]]:
        """Reserve the pending names (Snakemake's onstart: real runs, main process). Returns each
        reservation with its final directory and key: the proposed ones; or, if another run
        reserved the same fingerprint meanwhile, its directory (adopted); or a fresh name if
        another run claimed ours; or, for a chain another project created meanwhile under the same
        name, a key of its own (``name@<hash of its file>``): never another project's chain.yaml."""
        with storage_errors(self.root):  # a full disk or a read-only root: one line
            return self._commit()

    def _commit(self) -> list[tuple[Reservation, str, str]]:
        final = []
        moved: dict[str, str] = {}  # proposed -> final, for the steps under a moved chain dir
        for reservation in self.pending:
            name, key = reservation.dir, reservation.key
            parent = name.rpartition("/")[0]
            if moved.get(parent, parent) != parent:
                name = self._free_name(moved[parent])
            while True:
                while not create_exclusive(self._name_path(name), ""):
                    name = self._free_name(name.rpartition("/")[0])
                entry = json.dumps({**reservation.entry, "dir": name}, sort_keys=True)
                path = self.root / reservation.kind / key
                make_dirs(path.parent)
                if reservation.replace:
                    write_atomic(path, entry)
                    break
                if create_exclusive(path, entry):
                    break
                found = self.lookup(reservation.kind, key) or {}
                if found.get("origin") == reservation.entry.get("origin"):
                    name = found["dir"]  # the same step (or chain): adopt its directory
                    break
                origin = str(reservation.entry.get("origin")).encode()
                key = f"{reservation.key}@{hashlib.sha256(origin).hexdigest()[:8]}"
                name = self._free_name(name.rpartition("/")[0])
            moved[reservation.dir] = name
            final.append((reservation, name, key))
        self.pending.clear()
        self._next_suffix.clear()
        return final

    def record_dataset(self, fingerprint: str, path: str) -> None:
        """Remember where a grid point was computed, for later grids that contain it."""
        publish(*self.dataset_entry(fingerprint, path))

    def dataset_entry(self, fingerprint: str, path: str) -> tuple[Path, Path]:
        """The entry of :meth:`record_dataset` written aside: (temporary, entry), to publish
        along with the dataset it names."""
        target = self.root / "datasets" / fingerprint
        make_dirs(target.parent)
        return write_aside(target, json.dumps({"path": path})), target

    def computed_at(self, fingerprint: str) -> str | None:
        """Where a grid point was computed, if anywhere. An unreadable entry counts as none: it
        only spares work, so a damaged one costs a recomputation, never an error."""
        try:
            with open(os.path.join(self.root, "datasets", fingerprint), "rb") as entry:
                return json.loads(entry.read())["path"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _name_path(self, relative: str) -> Path:
        path = self.root / "names" / relative.replace("/", "%")
        make_dirs(path.parent)
        return path

    def _claimed(self, relative: str) -> bool:
        return os.path.exists(os.path.join(self.root, "names", relative.replace("/", "%")))

    def rebuild(self) -> int:
        """Recreate the steps, chains and datasets entries from the results' metadata.yaml and the
        chains' chain.yaml files (name claims are kept: a name is never handed out twice);
        returns how many steps were found. Unreadable files are skipped, not fatal."""
        for kind in ("steps", "chains", "datasets"):
            shutil.rmtree(self.root / kind, ignore_errors=True)
        steps: set[str] = set()
        for metadata in self.storage.glob("operation*_results/**/dataset_*/metadata.yaml"):
            meta = _read_yaml(metadata)
            dataset = metadata.parent.relative_to(self.storage).as_posix()
            if not meta.get("fingerprint"):
                continue
            if meta.get("dataset_fingerprint") and not meta.get("computed_in"):
                self.record_dataset(meta["dataset_fingerprint"], dataset)
            if meta["fingerprint"] in steps:  # every dataset of a step records the same entry
                continue
            steps.add(meta["fingerprint"])
            step_dir = metadata.parent.parent.relative_to(self.storage).as_posix()
            self._write("steps", meta["fingerprint"], {"dir": step_dir})
            self._write("names", step_dir.replace("/", "%"), None)
        for manifest in self.storage.glob("operation_chain_results/*/chain.yaml"):
            chain = _read_yaml(manifest)
            if chain.get("chain"):
                chain_dir = manifest.parent.relative_to(self.storage).as_posix()
                key = chain.get("key") or chain["chain"]
                self._write("chains", key, {"dir": chain_dir, "origin": chain.get("origin")})
                self._write("names", chain_dir.replace("/", "%"), None)
        return len(steps)

    def _write(self, kind: str, key: str, entry: dict[str, Any] | None) -> None:
        path = self.root / kind / key
        make_dirs(path.parent)
        write_atomic(path, "" if entry is None else json.dumps(entry, sort_keys=True))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}
