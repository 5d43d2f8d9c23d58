"""Reading a result back: its data, its metadata, and its datastore (values loaded lazily)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from opchain.daf import Reader, open_reader
from opchain.datastore import DataStore
from opchain.errors import OpchainError

__all__ = ["Result", "load_result"]


@dataclass(frozen=True)
class Result:
    path: Path
    storage: Path  # the storage root the datastore URLs are relative to
    metadata: dict[str, Any]
    data: Reader
    datastore: DataStore


def load_result(path: str | Path, *, allow_pickle: bool = False) -> Result:
    """Open the result dataset at ``path`` (a ``dataset_<k>`` directory, wherever the storage
    root has moved): the storage root is found from the path the metadata records."""
    path = Path(path)
    try:
        metadata = yaml.safe_load((path / "metadata.yaml").read_text(encoding="utf-8"))
        parts = len(Path(metadata["output"]).parts)
    except (OSError, yaml.YAMLError, TypeError, KeyError) as error:
        raise OpchainError(f"{path}: not an opchain result (metadata.yaml: {error})") from None
    storage = path.resolve().parents[parts - 1]
    datastore = DataStore.load(metadata.get("datastore") or {}, storage, allow_pickle=allow_pickle)
    return Result(path, storage, metadata, open_reader(path), datastore)
