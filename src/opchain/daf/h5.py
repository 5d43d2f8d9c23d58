"""The daf **HDF5** store: a dataset is one HDF5 file (h5py), in the reference implementation's
``h5fs`` layout (tanaylab/daf ``daf.storage.h5fs``), with the daf names as HDF5 paths::

    /__daf__                int8 dataset [1, 0] (the format version; readers accept [1, minor]);
                            its attributes are the 0D items
    /<axis>#                the axis entries: fixed-length UTF-8 bytes
    /<axis>#<prop>          1D data: a numeric/bool dataset, or fixed-length UTF-8 bytes
    /<rows>,<cols>#<prop>   2D data: a row-major numeric/bool or bytes dataset, or a group with
                            the CSR datasets ``data``, ``indices``, ``indptr`` and a ``shape``
                            attribute (two integers)

Items: ``str``, ``bool``, ``int`` (within int64) and ``float`` are stored as native attributes;
anything else (``None``, lists, dicts, dates, strings holding NUL, huge ints) as an opaque
attribute holding its YAML text. Strings are stored UTF-8 encoded in fixed-length byte strings;
as in the reference, the one-byte string ``"\\x01"`` stands for a missing value (``None``), so
that exact string value is refused by the writer. Readers also accept variable-length strings.

Binary datasets are written contiguous (no chunking, no compression, storage allocated when
created) straight at their file offset, and read by memory-mapping that region of the file
(``dataset.id.get_offset()`` + a read-only ``numpy.memmap``): no copy. Datasets that can't be
mapped (chunked, compressed, big-endian) are read into memory instead. Other objects in the file
are ignored. Written bytes depend only on the data (no timestamps). What h5py raises on a damaged
file becomes a :class:`~opchain.errors.DafError` naming the file and the HDF5 object.

Compared with the files store: one file (one descriptor, easy to move around) but opaque to
plain tools, and the whole file is rewritten to change anything.

:class:`H5Writer` writes ``.<name>.tmp-<8 hex digits>`` beside ``path`` and renames it into place
on :meth:`~opchain.daf.interface.Writer.close`; with ``atomic=False`` it writes ``path`` directly.
:class:`H5Reader` also accepts an open ``h5py.Group`` holding a dataset.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from opchain.atomic import aside_path
from opchain.daf.interface import (
    RESERVED_ITEMS,
    Matrix,
    Reader,
    Writer,
    check_version,
    commit,
    first_duplicate,
    frozen_copy,
    is_axis_name,
    item_to_yaml,
    name_problem,
)
from opchain.daf.mapping import (
    DTYPES,
    INDEX_DTYPES,
    RowsMemmap,
    frozen,
    is_sparse,
    make_csr,
    map_region,
    write_array,
)
from opchain.errors import DafError

__all__ = ["NONE_BYTES", "H5Reader", "H5Writer"]

#: The stored form of a missing string value (``None``), as in the reference.
NONE_BYTES = b"\x01"

INT64_RANGE = (-(2**63), 2**63 - 1)


def _valid_item(name: str) -> bool:
    return name_problem(name) is None and "#" not in name and name not in RESERVED_ITEMS


def _decode_item(value: Any, what: str) -> Any:
    if isinstance(value, np.void):
        try:
            return yaml.safe_load(value.tobytes().decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError) as error:
            problem = " ".join(str(error).split())
            raise DafError(f"{what}: malformed YAML item ({problem})") from None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray | np.generic):
        value = value.tolist()
    if isinstance(value, list):
        return [_decode_item(element, what) for element in value]
    return value


@contextmanager
def _h5_errors(what: str, problem: str = "unreadable HDF5 data") -> Iterator[None]:
    """Turn what h5py raises on a damaged file (``OSError`` from HDF5 mostly, but also
    ``KeyError``, ``ValueError``, ``TypeError`` or ``RuntimeError``) into one line naming it."""
    try:
        yield
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as error:
        detail = " ".join(str(error).split())
        raise DafError(f"{what}: {problem} ({type(error).__name__}: {detail})") from None


def _encode_item(value: Any, what: str) -> Any:
    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, int) and INT64_RANGE[0] <= value <= INT64_RANGE[1]:
        return np.int64(value)
    if isinstance(value, float):
        return np.float64(value)
    if isinstance(value, str) and "\0" not in value:
        return value
    return np.void(item_to_yaml(value, what).encode("utf-8"))


def _decode_strings(raw: np.ndarray, what: str) -> np.ndarray:
    if raw.dtype.kind == "S":
        try:
            values = raw.astype("U").astype(object)  # the common, ASCII case at numpy speed
        except UnicodeDecodeError:
            pass
        else:
            values[raw == NONE_BYTES] = None
            return values
    values = np.empty(raw.shape, dtype=object)
    flat = values.reshape(-1)
    for index, value in enumerate(raw.reshape(-1)):
        if isinstance(value, bytes):
            if value == NONE_BYTES:
                flat[index] = None
                continue
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise DafError(f"{what}: string not UTF-8") from None
        flat[index] = value
    return values


def _encode_strings(values: np.ndarray, what: str) -> np.ndarray:
    flat = values.reshape(-1).tolist()
    if "\x01" in flat:
        raise DafError(f"the string '\\x01' is reserved for None in the HDF5 store: {what}")
    if None not in flat and "".join(flat).isascii():  # the common case at numpy speed
        encoded = np.array(flat, dtype="S") if flat else np.empty(0, dtype="S1")
    else:
        as_bytes = [NONE_BYTES if value is None else value.encode("utf-8") for value in flat]
        encoded = np.array(as_bytes, dtype="S") if as_bytes else np.empty(0, dtype="S1")
    width = encoded.dtype.itemsize
    return encoded.astype(h5py.string_dtype("utf-8", width)).reshape(values.shape)


class H5Reader(Reader):
    """Read the daf HDF5 dataset in the file ``path`` (or an open ``h5py.Group``)."""

    format = "h5"

    def __init__(self, path: str | os.PathLike[str] | h5py.Group) -> None:
        if isinstance(path, h5py.Group):
            super().__init__(f"{path.file.filename}:{path.name}")
            self._file: h5py.File | None = None
            self._start(path)
        else:
            super().__init__(str(path))
            where = Path(path)
            if not where.is_file():
                problem = "not a file" if where.exists() else "missing"
                raise DafError(f"{where}: {problem} HDF5 dataset")
            with _h5_errors(str(where), "not a readable HDF5 file"):
                self._file = h5py.File(where, "r")
            self._start(self._file)
        with _h5_errors(self.path):
            self._scan()

    def _start(self, group: h5py.Group) -> None:
        self._group = group
        self._filename = group.file.filename
        self._items: dict[str, None] = {}
        self._axes: dict[str, h5py.Dataset] = {}
        self._vectors: dict[str, dict[str, h5py.Dataset]] = {}
        self._matrices: dict[tuple[str, str], dict[str, h5py.Dataset | h5py.Group]] = {}

    def _release(self) -> None:
        if self._file is not None:
            self._file.close()

    def _scan(self) -> None:
        header = self._group.get("__daf__")
        if not isinstance(header, h5py.Dataset):
            raise DafError(f"{self.path}: not a daf dataset (no /__daf__)")
        version = header[()]
        if not (isinstance(version, np.ndarray) and version.dtype.kind in "iu"):
            raise DafError(f"{self.path}:/__daf__: malformed daf format version: {version!r}")
        check_version(version.tolist(), f"{self.path}:/__daf__")
        self._items = {name: None for name in header.attrs if _valid_item(name)}
        data: list[tuple[tuple[str, ...], str, h5py.Dataset | h5py.Group]] = []
        for name, node in self._group.items():
            if "#" not in name:
                continue
            left, prop = name.split("#", 1)
            axes = tuple(left.split(","))
            if len(axes) > 2 or not all(map(is_axis_name, axes)):
                continue
            if prop == "":
                if isinstance(node, h5py.Dataset) and len(axes) == 1:
                    self._axes[left] = node
                continue
            is_sparse = isinstance(node, h5py.Group) and all(
                isinstance(node.get(part), h5py.Dataset) for part in ("data", "indices", "indptr")
            )
            if (len(axes) == 1 and isinstance(node, h5py.Dataset)) or (
                len(axes) == 2 and (isinstance(node, h5py.Dataset) or is_sparse)
            ):
                data.append((axes, prop, node))
        for axes, prop, node in data:
            for axis in axes:
                if axis not in self._axes:
                    raise DafError(f"{self.path}:{node.name}: missing axis: /{axis}#")
            if len(axes) == 1:
                self._vectors.setdefault(axes[0], {})[prop] = node
            else:
                self._matrices.setdefault((axes[0], axes[1]), {})[prop] = node

    # Reading

    def _item_names(self) -> dict[str, None]:
        return self._items

    def _get_item(self, name: str) -> Any:
        what = f"{self.path}:/__daf__@{name}"
        with _h5_errors(what):
            return _decode_item(self._group["__daf__"].attrs[name], what)

    def _axis_names(self) -> dict[str, h5py.Dataset]:
        return self._axes

    def _axis_size(self, axis: str) -> int:
        return int(self._axis_dataset(axis).shape[0])

    def _axis_dataset(self, axis: str) -> h5py.Dataset:
        dataset = self._axes[axis]
        if dataset.ndim != 1 or dataset.dtype.kind not in "SO":
            raise DafError(f"{self.path}:{dataset.name}: malformed axis (not a vector of strings)")
        return dataset

    def _axis_entries(self, axis: str) -> np.ndarray:
        dataset = self._axis_dataset(axis)
        what = f"{self.path}:{dataset.name}"
        with _h5_errors(what):
            entries = _decode_strings(dataset[()], what)
        unique = set(entries.tolist())
        if "" in unique or None in unique:
            raise DafError(f"{what}: empty or missing axis entry")
        if len(unique) != len(entries):
            raise DafError(f"{what}: duplicate axis entry: {first_duplicate(entries)!r}")
        return frozen_copy(entries)

    def _data1d_names(self, axis: str) -> dict[str, h5py.Dataset]:
        return self._vectors.get(axis, {})

    def _get_data1d(self, axis: str, prop: str) -> np.ndarray:
        dataset = self._vectors[axis][prop]
        with _h5_errors(f"{self.path}:{dataset.name}"):
            return self._read_dense(dataset, (axis,))

    def _data2d_names(self, rows: str, columns: str) -> dict[str, Any]:
        return self._matrices.get((rows, columns), {})

    def _get_data2d(self, rows: str, columns: str, prop: str) -> Matrix:
        node = self._matrices[(rows, columns)][prop]
        with _h5_errors(f"{self.path}:{node.name}"):
            if isinstance(node, h5py.Dataset):
                return self._read_dense(node, (rows, columns))
            return self._read_sparse(node, (rows, columns))

    def _read_sparse(self, node: h5py.Group, axes: tuple[str, str]) -> Matrix:
        what = f"{self.path}:{node.name}"
        shape = np.asarray(node.attrs.get("shape"))
        sizes = (self.axis_size(axes[0]), self.axis_size(axes[1]))
        if shape.shape != (2,) or shape.dtype.kind not in "iu":
            raise DafError(f"{what}: malformed or missing shape attribute: {shape.tolist()!r}")
        if tuple(shape.tolist()) != sizes:
            raise DafError(
                f"{what}: shape {shape.tolist()} does not match the axes {','.join(axes)} with "
                f"{list(sizes)} entries"
            )
        parts = {}
        for part, allowed in (
            ("data", DTYPES),
            ("indices", INDEX_DTYPES),
            ("indptr", INDEX_DTYPES),
        ):
            dataset = node[part]
            if dataset.ndim != 1 or dataset.dtype.name not in allowed:
                raise DafError(f"{what}/{part}: unsupported dtype: {dataset.dtype}")
            parts[part] = self._map(dataset)
        names = {part: f"{what}/{part}" for part in parts}
        return make_csr(parts["data"], parts["indices"], parts["indptr"], sizes, names)

    def _read_dense(self, dataset: h5py.Dataset, axes: tuple[str, ...]) -> np.ndarray:
        what = f"{self.path}:{dataset.name}"
        sizes = tuple(self.axis_size(axis) for axis in axes)
        if dataset.shape != sizes:
            raise DafError(
                f"{what}: shape {list(dataset.shape or ())} does not match the axes "
                f"{','.join(axes)} with {list(sizes)} entries"
            )
        if dataset.dtype.kind in "SO":
            return frozen(_decode_strings(dataset[()], what))
        if dataset.dtype.name not in DTYPES:
            raise DafError(f"{what}: unsupported dtype: {dataset.dtype}")
        return self._map(dataset)

    def _map(self, dataset: h5py.Dataset) -> np.ndarray:
        """Memory-map a contiguous, allocated, little-endian dataset; else read it."""
        dtype = np.dtype(dataset.dtype.str)  # drops h5py's metadata (e.g. the bool enum)
        if dataset.size == 0:
            return frozen(np.empty(dataset.shape, dtype=dtype.newbyteorder("<")))
        plist = dataset.id.get_create_plist()
        offset = dataset.id.get_offset()
        if (
            plist.get_layout() != h5py.h5d.CONTIGUOUS
            or plist.get_nfilters() != 0
            or offset is None
            or dtype.byteorder == ">"
            or dataset.file.driver not in ("sec2", "stdio")
        ):
            return frozen(np.ascontiguousarray(dataset[()], dtype=dtype.newbyteorder("<")))
        if dataset.file.mode != "r":
            dataset.file.flush()
        end = offset + dataset.size * dtype.itemsize
        found = os.path.getsize(self._filename)
        if found < end:
            raise DafError(
                f"{self._filename}:{dataset.name}: truncated HDF5 file: {found} bytes, but the "
                f"data ends at {end}"
            )
        return map_region(self._filename, dtype, dataset.shape, offset)


class H5Writer(H5Reader, Writer):
    """Write a new daf HDF5 dataset to the file ``path`` (see the module docstring).

    An existing file at ``path`` is refused unless ``overwrite=True``; it is then replaced only
    when the new one is complete. With ``atomic=False`` the file is written at ``path`` directly.
    """

    def __init__(
        self, path: str | os.PathLike[str], overwrite: bool = False, *, atomic: bool = True
    ) -> None:
        Writer.__init__(self, str(path))
        final = Path(path)
        self._final = final
        self._overwrite = overwrite
        self._atomic = atomic
        if final.exists() and (not final.is_file() or not overwrite):
            raise DafError(f"refuse to overwrite the existing file: {final}")
        if final.exists() and not h5py.is_hdf5(final):
            raise DafError(f"refuse to replace a file that is not HDF5: {final}")
        target = aside_path(final) if atomic else final
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            self._file = h5py.File(target, "w")
        except OSError as error:
            raise DafError(f"can't create the dataset: {final} ({error})") from None
        self._target = target
        self._finalizer = weakref.finalize(self, _discard, self._file, target if atomic else None)
        self._file.create_dataset("__daf__", data=np.array([1, 0], dtype="int8"), track_times=False)
        self._start(self._file)

    def _commit(self) -> None:
        assert self._file is not None
        self._file.close()
        if self._atomic:
            commit(self._target, self._final, self._overwrite)

    # Writing

    def _set_item(self, name: str, value: Any) -> None:
        what = f"the item: {name} in the dataset: {self.path}"
        self._group["__daf__"].attrs[name] = _encode_item(value, what)
        self._items[name] = None

    def _create_axis(self, axis: str, entries: np.ndarray) -> None:
        what = f"the axis: {axis} in the dataset: {self.path}"
        self._axes[axis] = self._group.create_dataset(
            f"{axis}#", data=_encode_strings(entries, what), track_times=False
        )
        self._cache[("axis", axis)] = entries

    def _set_data1d(self, axis: str, prop: str, vector: np.ndarray) -> None:
        self._vectors.setdefault(axis, {})[prop] = self._write_dense(
            self._group, f"{axis}#{prop}", vector
        )

    def _set_data2d(self, rows: str, columns: str, prop: str, matrix: Matrix) -> None:
        name = f"{rows},{columns}#{prop}"
        if is_sparse(matrix):
            group = self._group.create_group(name)
            group.attrs["shape"] = np.array(matrix.shape, dtype="int64")
            for part in ("data", "indices", "indptr"):
                self._write_dense(group, part, getattr(matrix, part))
            node: h5py.Dataset | h5py.Group = group
        else:
            node = self._write_dense(self._group, name, matrix)
        self._matrices.setdefault((rows, columns), {})[prop] = node

    @contextmanager
    def _create_dense_in_rows(
        self, rows: str, columns: str, prop: str, dtype: np.dtype, shape: tuple[int, int]
    ) -> Iterator[np.ndarray]:
        name = f"{rows},{columns}#{prop}"
        with self._filled(self._group, name, dtype, shape) as (array, dataset):
            yield array
        self._matrices.setdefault((rows, columns), {})[prop] = dataset

    @contextmanager
    def _create_sparse(
        self,
        rows: str,
        columns: str,
        prop: str,
        dtype: np.dtype,
        shape: tuple[int, int],
        indptr: np.ndarray,
        indices: np.ndarray | np.dtype,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        name = f"{rows},{columns}#{prop}"
        group = self._group.create_group(name)
        nnz = int(indptr[-1])
        try:
            group.attrs["shape"] = np.array(shape, dtype="int64")
            self._write_dense(group, "indptr", indptr)
            with ExitStack() as filling:
                if isinstance(indices, np.dtype):
                    indices, _ = filling.enter_context(
                        self._filled(group, "indices", indices, (nnz,))
                    )
                else:
                    self._write_dense(group, "indices", indices)
                values, _ = filling.enter_context(self._filled(group, "data", dtype, (nnz,)))
                yield values, indices
        except BaseException:
            del self._group[name]
            raise
        self._matrices.setdefault((rows, columns), {})[prop] = group

    @contextmanager
    def _filled(
        self, parent: h5py.Group, name: str, dtype: np.dtype, shape: tuple[int, ...]
    ) -> Iterator[tuple[np.ndarray, h5py.Dataset]]:
        """A new dataset ``name`` mapped as a writable :class:`RowsMemmap`; removed if the block
        raises."""
        dataset = self._create_contiguous(parent, name, shape, dtype)
        offset = dataset.id.get_offset()
        file = None
        if offset is None:
            array: np.ndarray = np.zeros(shape, dtype)
        else:
            self._file.flush()  # the file now covers the dataset's storage
            array = RowsMemmap(self._target, dtype, "r+", offset=offset, shape=shape)
            file = open(self._target, "r+b", buffering=0)  # noqa: SIM115 - closed below
            array.attach(file, offset)
        try:
            yield array, dataset  # no msync: like every other write, the data is in the page cache
        except BaseException:
            del parent[name]
            raise
        finally:
            if file is not None:
                array.attach(None)  # type: ignore[attr-defined]
                file.close()

    def _write_dense(self, parent: h5py.Group, name: str, array: np.ndarray) -> h5py.Dataset:
        what = f"{parent.name}/{name} in the dataset: {self.path}"
        if array.dtype == object:
            return parent.create_dataset(name, data=_encode_strings(array, what), track_times=False)
        dtype = np.dtype(array.dtype.name).newbyteorder("<")
        dataset = self._create_contiguous(parent, name, array.shape, dtype)
        offset = dataset.id.get_offset()
        if offset is not None:
            self._file.flush()
            with open(self._target, "r+b", buffering=0) as file:
                file.seek(offset)
                write_array(file, array, dtype)
        return dataset

    @staticmethod
    def _create_contiguous(
        parent: h5py.Group, name: str, shape: tuple[int, ...], dtype: np.dtype
    ) -> h5py.Dataset:
        """A contiguous dataset whose storage is allocated now and never filled by HDF5, so its
        bytes can be written (or mapped) directly at ``get_offset()``."""
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        return parent.create_dataset(
            name, shape=shape, dtype=dtype, dcpl=dcpl, fill_time="never", track_times=False
        )


def _discard(file: h5py.File, temp: Path | None) -> None:
    """The cleanup of an unfinished writer: close the file and remove it if it was aside."""
    try:
        file.close()
    finally:
        if temp is not None:
            temp.unlink(missing_ok=True)
