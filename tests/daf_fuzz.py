"""Mutate daf datasets the way disks, truncated copies and careless edits do, and read them back.

Shared by ``tests/test_daf_corrupt.py`` (a small derandomized sample in CI) and
``benchmarks/fuzz.py`` (10,000+ examples and a table of outcomes). The only acceptable outcomes of
reading a mutated dataset are a consistent result or one line of opchain's own error.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.sparse as sp
from hypothesis import strategies as st

from opchain.daf import DTYPES, FilesWriter, H5Writer, Writer, open_reader
from opchain.errors import OpchainError

#: What a files dataset holds, by file kind (the name patterns decide the kind).
FILES_KINDS = ("header", "item", "axis", "sidecar 1D", "sidecar 2D", "array", "indptr",
               "indices", "data", "strings")  # fmt: skip
#: What is mutated in an HDF5 dataset.
H5_KINDS = ("h5 data bytes", "h5 strings", "h5 attrs", "h5 datasets", "h5 file bytes")

#: Bytes that mean something to one of the formats (CSV, YAML, UTF-8, numbers).
SPECIAL_BYTES = b'\x00\x01\xff\x80,"\n\r#-:[{ 9'


def fill(writer: Writer) -> None:
    """A small dataset with every kind of data of both stores."""
    writer.set_item("organism", "human")
    writer.set_item("params", {"k": 3, "a": [1, 2.5], "on": True})
    writer.create_axis("cell", ["c1", "c2", "c3", "c4"])
    writer.create_axis("gene", ["g1", "g2", "g3"])
    writer.set_data1d("cell#score", np.array([1.5, -2.0, 3.25, 0.0], dtype="float32"))
    writer.set_data1d("cell#type", np.array(["T", None, "", "a,b"], dtype=object))
    writer.set_data1d("gene#flag", np.array([True, False, True]))
    writer.set_data2d("cell,gene#UMIs", np.arange(12, dtype="int32").reshape(4, 3))
    writer.set_data2d(
        "cell,gene#sparse",
        sp.csr_matrix(np.array([[0, 1.0, 0], [0, 0, 0], [2.0, 0, 3.0], [0, 0, 4.0]])),
    )
    wide = sp.csr_matrix(np.array([[0, 7, 0, 1], [5, 0, 0, 0], [0, 0, 9, 2]], dtype="uint8"))
    wide.indices = wide.indices.astype("int64")
    wide.indptr = wide.indptr.astype("int64")
    writer.set_data2d("gene,cell#wide", wide)
    writer.set_data2d("gene,gene#gene", np.array([["p", None, "q"]] * 3, dtype=object))
    writer.set_data2d("gene,cell#note", np.array([["a", None, "b", "c"]] * 3, dtype=object))


def make_dataset(store: str, folder: Path) -> Path:
    """Write :func:`fill`'s dataset in ``store`` (``files`` or ``h5``) under ``folder``."""
    path = folder / ("ds" if store == "files" else "ds.h5")
    with (FilesWriter if store == "files" else H5Writer)(path) as writer:
        fill(writer)
    return path


def copy_dataset(source: Path, folder: Path) -> Path:
    target = folder / source.name
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)
    return target


# Mutations --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    """``op`` with ``args`` on the ``pick``-th target of ``kind`` (modulo their number)."""

    kind: str
    pick: int
    op: str
    args: tuple[Any, ...]

    def apply(self, path: Path) -> None:
        if path.is_dir():
            mutate_file(files_of_kind(path, self.kind), self)
        else:
            mutate_h5(path, self)


def file_kind(name: str) -> str | None:
    stem, _, suffix = name.rpartition(".")
    if name == "__daf__.yaml":
        return "header"
    if suffix in ("array", "indptr", "indices", "data"):
        return suffix
    if "#" not in stem:
        return "item" if suffix == "yaml" else None
    left, prop = stem.split("#", 1)
    if suffix == "csv":
        return "axis" if prop == "" else "strings"
    return f"sidecar {1 + left.count(',')}D"


def files_of_kind(path: Path, kind: str) -> list[Path]:
    return sorted(p for p in path.iterdir() if file_kind(p.name) == kind)


def mutate_bytes(data: bytes, op: str, args: tuple[Any, ...]) -> bytes | None:
    """The mutated bytes, or ``None`` to delete the file."""
    if op == "delete":
        return None
    if op == "truncate":
        return data[: int(len(data) * args[0])]
    if op == "extend":
        return data + args[0]
    if not data:
        return data
    at = args[0] % len(data)
    if op == "flip":
        return data[:at] + bytes([data[at] ^ (1 << args[1])]) + data[at + 1 :]
    if op == "set":
        return data[:at] + bytes([args[1]]) + data[at + 1 :]
    if op == "duplicate line":
        lines = data.split(b"\n")
        line = lines[at % len(lines)]
        return b"\n".join([*lines, line])
    raise AssertionError(op)


def mutate_file(candidates: list[Path], mutation: Mutation) -> None:
    target = candidates[mutation.pick % len(candidates)]
    new = mutate_bytes(target.read_bytes(), mutation.op, mutation.args)
    if new is None:
        target.unlink()
    else:
        target.write_bytes(new)


def h5_datasets(file: h5py.File, binary: bool) -> list[h5py.Dataset]:
    found: list[h5py.Dataset] = []
    file.visititems(lambda _, node: found.append(node) if isinstance(node, h5py.Dataset) else None)
    return sorted(
        (d for d in found if (d.dtype.kind in "biuf") == binary and d.name != "/__daf__"),
        key=lambda d: d.name,
    )


def mutate_h5(path: Path, mutation: Mutation) -> None:
    op, args = mutation.op, mutation.args
    if mutation.kind == "h5 file bytes":
        new = mutate_bytes(path.read_bytes(), op, args)
        path.write_bytes(new or b"")
        return
    with h5py.File(path, "r+") as file:
        if mutation.kind == "h5 data bytes":
            dataset = pick(h5_datasets(file, binary=True), mutation.pick)
            offset, size = dataset.id.get_offset(), dataset.id.get_storage_size()
            region = (offset, size) if offset is not None and size else None
        elif mutation.kind == "h5 strings":  # one entry changed, or made a copy of another
            dataset = pick(h5_datasets(file, binary=False), mutation.pick)
            name, shape = dataset.name, dataset.shape
            flat = [value if isinstance(value, bytes) else str(value).encode()
                    for value in dataset[()].reshape(-1).tolist()]  # fmt: skip
            if flat:
                at = args[0] % len(flat) if op in ("flip", "set", "duplicate line") else 0
                if op == "duplicate line":
                    flat[at] = flat[at - 1]
                else:
                    flat[at] = mutate_bytes(flat[at], op, args) or b""
            del file[name]
            strings = np.array(flat, dtype="S").reshape(shape) if flat else np.empty(shape, "S1")
            file.create_dataset(name, data=strings)
            region = None
        elif mutation.kind == "h5 attrs":
            owners = [
                file["__daf__"],
                *(node for node in file.values() if isinstance(node, h5py.Group)),
            ]
            owner = pick(owners, mutation.pick)
            keys = sorted(owner.attrs) or ["extra"]
            key = keys[args[0] % len(keys)]
            if op == "delete":
                del owner.attrs[key]
            else:
                owner.attrs[key] = args[1]
            region = None
        else:  # "h5 datasets": replaced by other contents, or deleted
            dataset = pick(h5_datasets(file, True) + h5_datasets(file, False), mutation.pick)
            name = dataset.name
            del file[name]
            if op != "delete":
                file.create_dataset(name, data=args[0])
            region = None
    if region is not None:  # raw bytes of a contiguous dataset, outside of HDF5's own metadata
        offset, size = region
        with open(path, "r+b") as raw:
            raw.seek(offset)
            chunk = raw.read(size)
            raw.seek(offset)
            raw.write(mutate_bytes(chunk, op, args) or b"")


def pick(values: list[Any], index: int) -> Any:
    return values[index % len(values)]


BYTE_OPS = ("flip", "flip", "set", "set", "truncate", "extend", "duplicate line", "delete")


@st.composite
def byte_ops(draw: st.DrawFn, ops: tuple[str, ...] = BYTE_OPS) -> tuple[str, tuple[Any, ...]]:
    op = draw(st.sampled_from(ops))
    if op == "flip":
        return op, (draw(st.integers(0, 1 << 16)), draw(st.integers(0, 7)))
    if op == "set":
        return op, (draw(st.integers(0, 1 << 16)), draw(st.sampled_from(list(SPECIAL_BYTES))))
    if op == "truncate":
        return op, (draw(st.floats(0, 1, exclude_max=True)),)
    if op == "extend":
        return op, (draw(st.binary(min_size=1, max_size=16)),)
    return op, (draw(st.integers(0, 1 << 16)),)


#: Values an HDF5 attribute or a replacing dataset may get.
H5_VALUES = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(np.int64),
    st.floats(allow_nan=True).map(np.float64),
    st.text(st.characters(blacklist_characters="\0"), max_size=8),
    st.binary(min_size=1, max_size=16).map(np.void),
    st.lists(st.integers(-5, 10), min_size=0, max_size=4).map(lambda v: np.array(v, "int64")),
    st.sampled_from((*DTYPES, "complex64", "S3")).map(lambda d: np.zeros(3, dtype=d)),
    st.sampled_from([(4,), (3,), (2,), (4, 3), (3, 4), (5,)]).map(
        lambda shape: np.ones(shape, dtype="int32")
    ),
)


@st.composite
def mutations(draw: st.DrawFn, store: str) -> Mutation:
    """One mutation of a dataset of ``store``."""
    kinds = FILES_KINDS if store == "files" else H5_KINDS
    kind = draw(st.sampled_from(kinds))
    pick_index = draw(st.integers(0, 20))
    if kind == "h5 attrs":
        op = draw(st.sampled_from(["set", "set", "delete"]))
        return Mutation(kind, pick_index, op, (draw(st.integers(0, 10)), draw(H5_VALUES)))
    if kind == "h5 datasets":
        op = draw(st.sampled_from(["replace", "replace", "delete"]))
        return Mutation(kind, pick_index, op, (draw(H5_VALUES),))
    op, args = draw(byte_ops(("flip", "set") if kind == "h5 data bytes" else BYTE_OPS))
    return Mutation(kind, pick_index, op, args)


# Reading ----------------------------------------------------------------------------------------


def read_everything(path: Path) -> None:
    """Read all a dataset holds through :func:`open_reader` and check that it is consistent,
    using every matrix as an operation would (products, transposes); raise ``AssertionError`` on
    an inconsistent result."""
    reader = open_reader(path)
    for name in reader.item_names():
        reader.get_item(name)
    axes = reader.axis_names()
    sizes = {axis: reader.axis_size(axis) for axis in axes}
    for axis in axes:
        entries = reader.axis_entries(axis).tolist()
        assert len(entries) == sizes[axis] == len(set(entries)), axis
        assert all(isinstance(entry, str) and entry for entry in entries), axis
        for name in reader.data1d_names(axis):
            check_values(reader.get_data1d(name), (sizes[axis],), name)
    for rows in axes:
        for columns in axes:
            for name in reader.data2d_names(rows, columns):
                shape = (sizes[rows], sizes[columns])
                check_values(reader.get_data2d(name), shape, name)
                flipped = f"{columns},{rows}#{name.split('#', 1)[1]}"
                check_values(reader.get_data2d(flipped), shape[::-1], flipped)
    reader.close()


def check_values(values: Any, shape: tuple[int, ...], name: str) -> None:
    assert tuple(values.shape) == shape, name
    if sp.issparse(values):
        csr = values.tocsr()
        csr.check_format(full_check=True)
        ones = np.ones(shape[1], dtype=csr.dtype)
        assert (csr @ ones).shape == (shape[0],), name
        assert csr.toarray().shape == shape, name
    elif values.dtype == object:
        assert all(value is None or isinstance(value, str) for value in values.reshape(-1))
    else:
        assert values.dtype.name in DTYPES, name
        np.asarray(values).sum()


def outcome(path: Path) -> tuple[str, str]:
    """``("correct", "")``, ``("opchain error", message)`` or ``("other", what was raised)``."""
    try:
        read_everything(path)
    except OpchainError as error:
        message = str(error)
        if "\n" in message or not message:
            return "other", f"multi-line OpchainError: {message!r}"
        return "opchain error", message
    except Exception as error:  # everything else is a defect: report it, don't stop the fuzzing
        return "other", f"{type(error).__name__}: {error}"
    return "correct", ""


def run_one(template: Path, folder: Path, mutation: Mutation) -> tuple[str, str]:
    """Copy ``template`` into the empty ``folder``, apply ``mutation`` and read it back."""
    path = copy_dataset(template, folder)
    mutation.apply(path)
    return outcome(path)
