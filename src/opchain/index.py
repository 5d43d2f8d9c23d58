"""The index under ``<storage>/.opchain/``: which timestamped directory belongs to which fingerprint.

Layout (one small file per entry, so concurrent writers never edit a shared file)::

    .opchain/steps/<fingerprint>   JSON: {"dir": <step dir relative to storage>, "components": {...}}
    .opchain/chains/<chain name>   JSON: {"dir": <chain dir relative to storage>}
    .opchain/names/<dir, / as %>   empty: the claim on a directory name, never reused

Entries are created with O_EXCL: of two planners that reserve the same fingerprint or the same name at
once, exactly one succeeds and the other stops with a message to run again. Names are timestamps in the
seed's form (``2026_11_23_6_5_2``), with ``_1``, ``_2`` … when taken within the same second. The index is
derived data: ``rebuild`` recreates it from the results' ``metadata.yaml`` files.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opchain.errors import PlanError

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


@dataclass
class Index:
    storage: Path
    pending: list[Reservation] = field(default_factory=list)
    # Where the suffix search of each (parent, second) stopped: keeps proposing linear.
    _next_suffix: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.storage / INDEX_DIR

    def lookup(self, kind: str, key: str) -> dict[str, Any] | None:
        """The entry for a fingerprint (``steps``) or chain name (``chains``), or None."""
        try:
            return json.loads((self.root / kind / key).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise PlanError(
                f"{self.root / kind / key}: corrupt index entry ({error}); "
                "run 'opchain index --rebuild'"
            ) from None

    def propose(self, kind: str, key: str, parent: str, entry: dict[str, Any]) -> str:
        """A new directory name under ``parent`` for ``key``, reserved only by :meth:`commit`."""
        base = timestamp_name()
        suffix = self._next_suffix.get((parent, base), 0)
        while True:
            name = f"{base}_{suffix}" if suffix else base
            if not (self._claimed(f"{parent}/{name}") or (self.storage / parent / name).exists()):
                break
            suffix += 1
        self._next_suffix[(parent, base)] = suffix + 1
        relative = f"{parent}/{name}"
        self.pending.append(Reservation(kind, key, relative, {**entry, "dir": relative}))
        return relative

    def commit(self) -> None:
        """Write the pending reservations (Snakemake's onstart: real runs only, main process only)."""
        for reservation in self.pending:
            self._create(
                self.root / "names" / reservation.dir.replace("/", "%"),
                "",
                f"directory name {reservation.dir}",
            )
            self._create(
                self.root / reservation.kind / reservation.key,
                json.dumps(reservation.entry, sort_keys=True),
                f"{reservation.kind[:-1]} {reservation.key}",
            )
        self.pending.clear()
        self._next_suffix.clear()

    def _claimed(self, relative: str) -> bool:
        return (self.root / "names" / relative.replace("/", "%")).exists()

    @staticmethod
    def _create(path: Path, text: str, what: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            raise PlanError(
                f"another opchain run reserved {what} at the same time; "
                "run again to pick up its reservation"
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)

    def rebuild(self) -> int:
        """Recreate the entries from the results' metadata.yaml and the chains' chain.yaml files;
        returns how many steps were found."""
        steps: set[str] = set()
        for metadata in self.storage.glob("operation*_results/**/dataset_*/metadata.yaml"):
            meta = yaml.safe_load(metadata.read_text(encoding="utf-8")) or {}
            if meta["fingerprint"] in steps:  # every dataset of a step records the same entry
                continue
            steps.add(meta["fingerprint"])
            step_dir = metadata.parent.parent.relative_to(self.storage).as_posix()
            self._write(
                self.root / "steps" / meta["fingerprint"],
                {"dir": step_dir, "components": meta["components"]},
            )
            self._write(self.root / "names" / step_dir.replace("/", "%"), None)
        for manifest in self.storage.glob("operation_chain_results/*/chain.yaml"):
            chain_dir = manifest.parent.relative_to(self.storage).as_posix()
            name = (yaml.safe_load(manifest.read_text(encoding="utf-8")) or {})["chain"]
            self._write(self.root / "chains" / name, {"dir": chain_dir})
            self._write(self.root / "names" / chain_dir.replace("/", "%"), None)
        return len(steps)

    @staticmethod
    def _write(path: Path, entry: dict[str, Any] | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "" if entry is None else json.dumps(entry, sort_keys=True), encoding="utf-8"
        )
