"""The abstract daf :class:`Reader` and :class:`Writer`, shared by the files and the HDF5 stores.

A daf dataset holds:

* 0D **items** by name: ``str``, ``int``, ``float``, ``bool``, ``None`` (and ``datetime`` as
  read from YAML), and lists / ``str``-keyed dicts of those.
* **Axes** by name, each a vector of unique, non-empty string entries.
* **1D data** named ``axis#property``: one value per entry of the axis, either binary (bool or
  numbers, see :data:`DTYPES`) or strings where ``None`` marks a missing value.
* **2D data** named ``rows,columns#property``: a matrix with one row per entry of the ``rows``
  axis and one column per entry of the ``columns`` axis: dense binary, CSR sparse binary, or
  strings (``None`` missing).

Names become file names, so no name may be empty, ``.`` or ``..``, or hold ``/`` or NUL, or be
longer than 247 UTF-8 bytes. Axis names may not hold ``,`` or ``#``; item names may not hold ``#``.
The item names ``__daf__``, ``metadata`` and ``input_metadata`` are reserved: the files store keeps
its format version in ``__daf__.yaml``, and the opchain engine puts ``metadata.yaml`` and
``input_metadata.yaml`` inside dataset directories, so readers never list those files as items and
writers refuse those names. String values may not hold NUL characters.

Public methods check names and preconditions and raise :class:`~opchain.errors.DafError` with
uniform messages (``missing axis: cell in the dataset: <path>``), then hand off to the small
abstract ``_methods`` a backend implements. Corrupt data (malformed files, sizes, dtypes or shapes
that don't match, an invalid CSR structure, a damaged HDF5 file) is refused by either store with
one line that starts with the file (and line) at fault: ``<file>[:<line>]: <problem>``.

Binary data comes back memory-mapped and read-only (no copy); string data as read-only object
arrays of ``str`` / ``None``. 2D data stored as ``columns,rows#property`` is found when
``rows,columns#property`` is asked for, and comes back transposed (a view: a transposed CSR matrix
is a CSC matrix). ``data2d_names`` lists matrices in the layout they are stored in.

Writers write a whole dataset aside and rename it into place when :meth:`Writer.close` is called
(see :mod:`opchain.atomic` and :func:`commit`); on an exception inside ``with Writer(...)`` the
aside copy is removed, so a crash never leaves something that passes for a dataset.
"""

from __future__ import annotations

import datetime
import math
import os
import shutil
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeAlias, cast

import numpy as np
import yaml

from opchain.atomic import aside_path, publish
from opchain.daf.mapping import DTYPES, is_sparse, sparse
from opchain.errors import DafError

__all__ = [
    "DTYPES",
    "FORMAT_VERSION",
    "RESERVED_ITEMS",
    "Reader",
    "Writer",
    "check_version",
    "commit",
    "open_reader",
    "split_data1d_name",
    "split_data2d_name",
]

#: The format version written by this implementation; readers accept any ``[1, minor]``.
FORMAT_VERSION: tuple[int, int] = (1, 0)

#: Item names that are never items (see the module docstring).
RESERVED_ITEMS: frozenset[str] = frozenset({"__daf__", "metadata", "input_metadata"})

#: Longest name, in UTF-8 bytes, so that ``<name>.indices`` still fits a 255-byte file name.
MAX_NAME_BYTES = 247

#: Entries a scan of a vector reads at a time (see :meth:`Reader.data1d_chunks`).
CHUNK_ENTRIES = 1 << 20

if TYPE_CHECKING:
    import scipy.sparse as sp

Matrix: TypeAlias = "np.ndarray | sp.spmatrix | sp.sparray"


# Names ------------------------------------------------------------------------------------------


def name_problem(name: object) -> str | None:
    """Why ``name`` can't be a daf name (it becomes a file name), or ``None`` if it can."""
    if not isinstance(name, str):
        return f"not a string: {type(name).__name__}"
    if name in _GOOD_NAMES:  # a batch job checks the same few names for every dataset
        return None
    if name == "":
        return "empty"
    if name in (".", ".."):
        return "reserved by the file system"
    if "/" in name:
        return "holds a /"
    if "\0" in name:
        return "holds a NUL character"
    if not _encodable(name):
        return "not encodable as UTF-8"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} UTF-8 bytes"
    if len(_GOOD_NAMES) < 100_000:
        _GOOD_NAMES.add(name)
    return None


_GOOD_NAMES: set[str] = set()  # names found valid


def is_axis_name(name: str) -> bool:
    """Whether ``name`` is a valid axis name."""
    return name_problem(name) is None and "," not in name and "#" not in name


def _check_name(name: object, what: str) -> str:
    problem = name_problem(name)
    if problem is not None:
        raise DafError(f"invalid {what} name: {name!r} ({problem})")
    return cast(str, name)


def check_axis_name(axis: object) -> str:
    """Return ``axis`` if it is a valid axis name, else raise a :class:`DafError`."""
    name = _check_name(axis, "axis")
    if "," in name or "#" in name:
        raise DafError(f"invalid axis name: {name!r} (holds a , or a #)")
    return name


def check_item_name(name: object) -> str:
    """Return ``name`` if it is a valid (and not reserved) item name, else raise."""
    item = _check_name(name, "item")
    if "#" in item:
        raise DafError(f"invalid item name: {item!r} (holds a #)")
    if item in RESERVED_ITEMS:
        raise DafError(f"invalid item name: {item!r} (reserved)")
    return item


def split_data1d_name(name: object) -> tuple[str, str]:
    """Split ``axis#property`` into its axis and property, checking both."""
    if not isinstance(name, str) or "#" not in name:
        raise DafError(f"invalid 1D data name: {name!r} (expected axis#property)")
    axis, prop = name.split("#", 1)
    check_axis_name(axis)
    _check_name(prop, "property")
    _check_name(name, "1D data")
    return axis, prop


def split_data2d_name(name: object) -> tuple[str, str, str]:
    """Split ``rows,columns#property`` into its two axes and property, checking all three."""
    if not isinstance(name, str) or "#" not in name or name.split("#", 1)[0].count(",") != 1:
        raise DafError(f"invalid 2D data name: {name!r} (expected rows,columns#property)")
    axes, prop = name.split("#", 1)
    rows, cols = axes.split(",")
    check_axis_name(rows)
    check_axis_name(cols)
    _check_name(prop, "property")
    _check_name(name, "2D data")
    return rows, cols, prop


def check_version(version: object, where: str) -> None:
    """Check a ``[major, minor]`` format version read from ``where``: major must be 1."""
    if not (
        isinstance(version, list | tuple)
        and len(version) == 2
        and all(isinstance(part, int) and not isinstance(part, bool) for part in version)
        and all(part >= 0 for part in version)
    ):
        raise DafError(f"{where}: malformed daf format version: {version!r}")
    if version[0] != FORMAT_VERSION[0]:
        raise DafError(
            f"{where}: unsupported daf format version: {version[0]}.{version[1]} "
            f"(this reader supports {FORMAT_VERSION[0]}.x)"
        )


# Values -----------------------------------------------------------------------------------------


def _normalize_item(value: Any, what: str) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        value = value.tolist()
    if value is None or isinstance(value, bool | datetime.date):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, list | tuple):
        return [_normalize_item(element, what) for element in value]
    if isinstance(value, dict):
        result = {}
        for key, element in value.items():
            if not isinstance(key, str):
                raise DafError(f"unsupported non-string key: {key!r} in the value of: {what}")
            result[str(key)] = _normalize_item(element, what)
        return result
    raise DafError(f"unsupported value type: {type(value).__name__} for: {what}")


def _same_item(left: Any, right: Any) -> bool:
    if type(left) is not type(right):
        return False
    if isinstance(left, float):
        return left == right or (math.isnan(left) and math.isnan(right))
    if isinstance(left, list):
        return len(left) == len(right) and all(map(_same_item, left, right))
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(_same_item(left[k], right[k]) for k in left)
    return bool(left == right)


def item_to_yaml(value: Any, what: str) -> str:
    """Dump a (normalized) item as the reference does (block style, sorted keys), checking that
    loading it back gives exactly the same value."""
    try:
        text = yaml.safe_dump(value)
        back = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as error:
        raise DafError(f"can't store as YAML the value of: {what} ({error})") from None
    if not _same_item(value, back):
        raise DafError(f"can't store exactly as YAML the value: {value!r} of: {what}")
    return text


def _check_strings(values: np.ndarray, what: str, allow_none: bool) -> np.ndarray:
    """Return an object array of ``str``/``None`` after checking every element."""
    strings = values.astype(object) if values.dtype.kind == "U" else values
    present = strings.reshape(-1).tolist()
    if allow_none:
        present = [value for value in present if value is not None]
    try:
        joined = "".join(present)  # checks all at C speed; the loops below only find the culprit
    except TypeError:
        bad = next(value for value in present if not isinstance(value, str))
        raise DafError(f"unsupported string value: {bad!r} in: {what}") from None
    if "\0" in joined:
        bad = next(value for value in present if "\0" in value)
        raise DafError(f"unsupported NUL character in the string: {bad!r} in: {what}")
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError:
        bad = next(value for value in present if not _encodable(value))
        raise DafError(f"string not encodable as UTF-8: {bad!r} in: {what}") from None
    return strings


def first_duplicate(values: Iterable[Any]) -> Any:
    """The first value that occurs a second time, if any (else ``None``)."""
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def as_dtype(dtype: object, what: str) -> np.dtype:
    """Return the little-endian numpy dtype of one of the :data:`DTYPES`, else raise."""
    try:
        name = np.dtype(dtype).name  # type: ignore[call-overload]
    except TypeError:
        name = repr(dtype)
    if name not in DTYPES:
        raise DafError(
            f"unsupported dtype: {name} for: {what} (expected one of: {', '.join(DTYPES)})"
        )
    return np.dtype(name).newbyteorder("<")


def _as_array(value: Any) -> np.ndarray:
    """``np.asarray``, except that strings not already in an array become an object array (numpy's
    fixed-width ``str`` dtype would silently drop trailing NUL characters)."""
    # A memory-mapped vector or matrix stays one, so that a writer can link its file whole
    # (np.asarray would hand it a plain view of the map, which it then copies byte by byte).
    array = value if isinstance(value, np.memmap) else np.asarray(value)
    if array.dtype.kind == "U" and not isinstance(value, np.ndarray):
        array = np.array(value, dtype=object)
    return array


def _kind_of(array: np.ndarray, what: str) -> str:
    """Return ``"str"`` or ``"binary"`` for a dense array, else raise."""
    if array.dtype.kind in "UO":
        return "str"
    as_dtype(array.dtype, what)
    return "binary"


# Atomic placement -------------------------------------------------------------------------------


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def is_empty_dir(path: Path) -> bool:
    """Whether ``path`` is a real (not symlinked) directory with nothing in it."""
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def commit(temp: Path, final: Path, overwrite: bool) -> None:
    """Move the complete dataset ``temp`` to ``final``.

    A missing ``final`` (or an empty directory) is simply replaced. An existing one is refused
    unless ``overwrite``, in which case it is renamed aside, ``temp`` renamed in, and the old one
    removed last: ``final`` is never a partial dataset (it is the old one, then for an instant
    nothing, then the new one; if the second rename fails the old one is put back). Published with
    :func:`opchain.atomic.publish`: flushed to stable storage before and after the rename.
    """
    exists = final.exists() or final.is_symlink()
    if exists and not is_empty_dir(final):
        if not overwrite:
            raise DafError(f"refuse to overwrite the existing dataset: {final}")
        old = aside_path(final, "old")
        os.rename(final, old)
        try:
            if not publish(temp, final):
                raise DafError(f"another process wrote the dataset meanwhile: {final}")
        except BaseException:
            os.rename(old, final)
            raise
        _remove(old)
        return
    try:
        if temp.is_dir():
            if not publish(temp, final):  # final became a non-empty directory meanwhile
                raise DafError(f"refuse to overwrite the existing dataset: {final}")
            return
        try:
            # A link fails if final appeared meanwhile: no silent clobbering.
            if not publish(temp, final, exclusive=True):
                raise DafError(f"refuse to overwrite the existing dataset: {final}")
        except OSError:  # a file system without hard links
            publish(temp, final)
        else:
            temp.unlink()
    except OSError as error:
        raise DafError(f"can't move the dataset into place: {final} ({error.strerror})") from None


# Reader -----------------------------------------------------------------------------------------


class Reader(ABC):
    """Read-only access to a daf dataset. See the module docstring for the model."""

    #: The store kind, ``"files"`` or ``"h5"``.
    format: ClassVar[str]

    def __init__(self, path: str) -> None:
        #: The dataset's path, used in every message.
        self.path = path
        self._cache: dict[tuple[str, ...], Any] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the store's handles; arrays already returned stay valid."""
        if not self._closed:
            self._closed = True
            self._release()

    def _release(self) -> None:  # noqa: B027 - optional hook
        """Release handles (backends with open handles override this)."""

    def _check_open(self) -> None:
        if self._closed:
            raise DafError(f"the dataset is closed: {self.path}")

    def _cached(self, key: tuple[str, ...], load: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    # Items

    def item_names(self) -> list[str]:
        """The names of the 0D items, sorted."""
        self._check_open()
        return sorted(self._item_names())

    def has_item(self, name: str) -> bool:
        """Whether the item ``name`` exists."""
        self._check_open()
        return check_item_name(name) in self._item_names()

    def get_item(self, name: str) -> Any:
        """The value of the item ``name`` (a fresh copy each time)."""
        if not self.has_item(name):
            raise DafError(f"missing item: {name} in the dataset: {self.path}")
        return self._get_item(name)

    # Axes

    def axis_names(self) -> list[str]:
        """The names of the axes, sorted."""
        self._check_open()
        return sorted(self._axis_names())

    def has_axis(self, axis: str) -> bool:
        """Whether the axis exists."""
        self._check_open()
        return check_axis_name(axis) in self._axis_names()

    def _require_axis(self, axis: str) -> None:
        if not self.has_axis(axis):
            raise DafError(f"missing axis: {axis} in the dataset: {self.path}")

    def axis_entries(self, axis: str) -> np.ndarray:
        """The entries of ``axis``: a read-only object array of unique, non-empty ``str``."""
        self._require_axis(axis)
        return self._cached(("axis", axis), lambda: self._axis_entries(axis))

    def axis_size(self, axis: str) -> int:
        """The number of entries of ``axis``."""
        self._require_axis(axis)
        return self._axis_size(axis)

    # 1D data

    def data1d_names(self, axis: str) -> list[str]:
        """The ``axis#property`` names of the 1D data of ``axis``, sorted."""
        self._require_axis(axis)
        return sorted(f"{axis}#{prop}" for prop in self._data1d_names(axis))

    def has_data1d(self, name: str) -> bool:
        """Whether the 1D data ``axis#property`` exists."""
        axis, prop = split_data1d_name(name)
        self._require_axis(axis)
        return prop in self._data1d_names(axis)

    def get_data1d(self, name: str) -> np.ndarray:
        """The 1D data ``axis#property`` in axis order: memory-mapped if binary, else an object
        array of ``str``/``None``; read-only either way."""
        if not self.has_data1d(name):
            raise DafError(f"missing 1D data: {name} in the dataset: {self.path}")
        axis, prop = split_data1d_name(name)
        return self._cached(("1d", axis, prop), lambda: self._get_data1d(axis, prop))

    def data1d_chunks(self, name: str) -> Iterator[np.ndarray]:
        """The 1D data ``axis#property`` in axis order, as consecutive pieces (read-only): all
        a scan of a vector (comparing, grouping) needs. A string vector is then never held as
        a string per entry: of 10 million entries, that would be a gigabyte."""
        if not self.has_data1d(name):
            raise DafError(f"missing 1D data: {name} in the dataset: {self.path}")
        axis, prop = split_data1d_name(name)
        if ("1d", axis, prop) not in self._cache:
            chunks = self._data1d_chunks(axis, prop)
            if chunks is not None:
                return chunks
        vector = self.get_data1d(name)
        starts = range(0, len(vector), CHUNK_ENTRIES)
        return (vector[start : start + CHUNK_ENTRIES] for start in starts)

    # 2D data

    def data2d_names(self, rows: str, columns: str) -> list[str]:
        """The ``rows,columns#property`` names of the 2D data stored in this layout, sorted."""
        self._require_axis(rows)
        self._require_axis(columns)
        return sorted(f"{rows},{columns}#{prop}" for prop in self._data2d_names(rows, columns))

    def has_data2d(self, name: str) -> bool:
        """Whether the 2D data exists, in this layout or transposed."""
        rows, cols, prop = split_data2d_name(name)
        self._require_axis(rows)
        self._require_axis(cols)
        return prop in self._data2d_names(rows, cols) or prop in self._data2d_names(cols, rows)

    def get_data2d(self, name: str) -> Matrix:
        """The 2D data ``rows,columns#property``: a read-only memory-mapped row-major array, a
        ``csr_matrix`` over memory-mapped buffers, or an object array of ``str``/``None``. Data
        stored as ``columns,rows#property`` comes back transposed (a view)."""
        if not self.has_data2d(name):
            raise DafError(f"missing 2D data: {name} in the dataset: {self.path}")
        rows, cols, prop = split_data2d_name(name)
        if prop in self._data2d_names(rows, cols):
            return self._cached(
                ("2d", rows, cols, prop), lambda: self._get_data2d(rows, cols, prop)
            )
        stored = self._cached(("2d", cols, rows, prop), lambda: self._get_data2d(cols, rows, prop))
        return stored.T

    # Summary

    def description(self) -> dict[str, Any]:
        """A small YAML-friendly summary: path, format, axes with sizes, item names, and the
        dtype (``str`` for strings) and shape of every 1D/2D data."""
        axes = {axis: self.axis_size(axis) for axis in self.axis_names()}
        data1d: dict[str, Any] = {}
        data2d: dict[str, Any] = {}
        for axis in axes:
            for name in self.data1d_names(axis):
                dtype = self._data1d_dtype(*split_data1d_name(name))
                data1d[name] = {"dtype": dtype, "shape": [axes[axis]]}
            for columns in axes:
                for name in self.data2d_names(axis, columns):
                    matrix = self.get_data2d(name)
                    entry: dict[str, Any] = {
                        "dtype": _dtype_name(matrix),
                        "shape": [int(size) for size in matrix.shape],
                        "layout": "sparse" if is_sparse(matrix) else "dense",
                    }
                    if is_sparse(matrix):
                        entry["nnz"] = int(matrix.nnz)
                    data2d[name] = entry
        return {
            "path": self.path,
            "format": self.format,
            "axes": axes,
            "items": self.item_names(),
            "data1d": data1d,
            "data2d": data2d,
        }

    # What a backend implements

    @abstractmethod
    def _item_names(self) -> Iterable[str]: ...

    @abstractmethod
    def _get_item(self, name: str) -> Any: ...

    @abstractmethod
    def _axis_names(self) -> Iterable[str]: ...

    @abstractmethod
    def _axis_entries(self, axis: str) -> np.ndarray: ...

    def _axis_size(self, axis: str) -> int:
        return len(self.axis_entries(axis))

    @abstractmethod
    def _data1d_names(self, axis: str) -> Iterable[str]: ...

    @abstractmethod
    def _get_data1d(self, axis: str, prop: str) -> np.ndarray: ...

    def _data1d_chunks(self, axis: str, prop: str) -> Iterator[np.ndarray] | None:
        """The pieces :meth:`data1d_chunks` gives, if the store reads them better than slicing
        the whole vector; ``None`` if not."""
        return None

    def _data1d_dtype(self, axis: str, prop: str) -> str:
        """The 1D data's dtype name (``str`` for strings), as :meth:`description` gives it: a
        store that knows it without reading the vector says so (10 million strings take a
        gigabyte to read)."""
        return _dtype_name(self.get_data1d(f"{axis}#{prop}"))

    @abstractmethod
    def _data2d_names(self, rows: str, columns: str) -> Iterable[str]: ...

    @abstractmethod
    def _get_data2d(self, rows: str, columns: str, prop: str) -> Matrix: ...


def _dtype_name(data: Any) -> str:
    return "str" if data.dtype == object else str(data.dtype.name)


# Writer -----------------------------------------------------------------------------------------


class Writer(Reader):
    """Create a new daf dataset; also a :class:`Reader` of what was written so far.

    Use as a context manager (``with FilesWriter(path) as w:``), or call :meth:`close` to
    complete the dataset (:meth:`abort` discards it). Each name can be written once.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._pending: set[tuple[str, str, str]] = set()
        self._finalizer: weakref.finalize | None = None

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def close(self) -> None:
        """Complete the dataset and move it into place. Further use raises a :class:`DafError`."""
        if not self._closed:
            if self._pending:
                raise DafError(f"close() while 2D data is being filled in the dataset: {self.path}")
            self._closed = True
            try:
                self._commit()
            except BaseException:
                if self._finalizer is not None:
                    self._finalizer()
                raise
            if self._finalizer is not None:
                self._finalizer.detach()

    def abort(self) -> None:
        """Discard the dataset being written (the aside copy, if any, is removed)."""
        if not self._closed:
            self._closed = True
            if self._finalizer is not None:
                self._finalizer()

    def _check_writable(self) -> None:
        if self._closed:
            raise DafError(f"the writer is closed: {self.path}")

    def set_item(self, name: str, value: Any) -> None:
        """Set the 0D item ``name``: ``str``, ``int``, ``float``, ``bool``, ``None``, or lists /
        ``str``-keyed dicts of those."""
        self._set_item(name, self._new_item(name, value))

    def copy_item(self, reader: Reader, name: str) -> None:
        """Set the item ``name`` to its value in ``reader``, as ``set_item`` would; between files
        datasets its file is linked as it is (however the other store wrote it)."""
        value = self._new_item(name, reader.get_item(name))
        if not self._copy_item_file(reader, name):
            self._set_item(name, value)

    def _new_item(self, name: str, value: Any) -> Any:
        """``value`` as the new item ``name`` stores it, checked."""
        self._check_writable()
        if self.has_item(name):
            raise DafError(f"existing item: {name} in the dataset: {self.path}")
        return _normalize_item(value, f"the item: {name} in the dataset: {self.path}")

    def _copy_item_file(self, reader: Reader, name: str) -> bool:
        """Link the file of the item ``name`` in ``reader``, if the stores can."""
        return False

    def create_axis(self, axis: str, entries: Iterable[str] | np.ndarray) -> None:
        """Create ``axis`` with unique, non-empty string ``entries``."""
        self._check_writable()
        if self.has_axis(axis):
            raise DafError(f"existing axis: {axis} in the dataset: {self.path}")
        what = f"the entries of the axis: {axis} in the dataset: {self.path}"
        if isinstance(entries, np.ndarray):
            if entries.ndim != 1 or (entries.size and entries.dtype.kind not in "UO"):
                raise DafError(f"expected a 1D vector of strings for {what}")
            strings = entries.astype(object)  # a copy: the caller may change theirs
        else:
            strings = np.fromiter(entries, dtype=object)
        _check_strings(strings, what, allow_none=False)
        unique = set(strings.tolist())
        if "" in unique:
            raise DafError(f"empty entry in {what}")
        if len(unique) != len(strings):
            raise DafError(f"duplicate entry: {first_duplicate(strings)!r} in {what}")
        strings.flags.writeable = False
        self._create_axis(axis, strings)

    def copy_axis(self, reader: Reader, axis: str, take: np.ndarray | None = None) -> None:
        """Create ``axis`` with its entries in ``reader`` (with ``take``, those at these increasing
        positions), as ``create_axis`` would, but without checking them again, and, between files
        datasets, without holding them: the axis file is checked and linked, or its lines taken
        (an axis of millions of entries as Python strings would cost more memory than a
        streaming step)."""
        self._check_writable()
        if self.has_axis(axis):
            raise DafError(f"existing axis: {axis} in the dataset: {self.path}")
        if not self._copy_axis_file(reader, axis, take):
            entries = reader.axis_entries(axis)
            self._create_axis(axis, entries if take is None else entries[take])

    def _copy_axis_file(self, reader: Reader, axis: str, take: np.ndarray | None) -> bool:
        """Copy ``axis`` from ``reader`` file to file, if the stores can; ``False`` if not."""
        return False

    def copy_data1d(self, reader: Reader, name: str, take: np.ndarray | None = None) -> None:
        """Set the 1D data ``name`` to its values in ``reader`` (with ``take``, those at these
        increasing positions, as :meth:`copy_axis` took the axis), as ``set_data1d`` would;
        between files datasets a string vector listing the axis's entries in order is checked
        and linked, or its lines taken, not read into strings, and a whole vector of numbers is
        checked and linked."""
        self._check_writable()
        axis, prop = split_data1d_name(name)
        if self.has_data1d(name):
            raise DafError(f"existing 1D data: {name} in the dataset: {self.path}")
        if not self._copy_vector_files(reader, axis, prop, take):
            values = reader.get_data1d(name)
            self.set_data1d(name, values if take is None else values[take])

    def _copy_vector_files(
        self, reader: Reader, axis: str, prop: str, take: np.ndarray | None
    ) -> bool:
        """Copy the vector ``axis#prop`` from ``reader`` file to file, if the stores can and it
        needs no reading; ``False`` if not."""
        return False

    def set_data1d(self, name: str, vector: Any) -> None:
        """Set the 1D data ``axis#property``: numbers/bool (see :data:`DTYPES`) or strings
        (``None`` for missing), one per axis entry in axis order."""
        self._check_writable()
        axis, prop = split_data1d_name(name)
        if self.has_data1d(name):
            raise DafError(f"existing 1D data: {name} in the dataset: {self.path}")
        what = f"the 1D data: {name} in the dataset: {self.path}"
        if is_sparse(vector):
            raise DafError(f"sparse 1D data is not supported: {what}")
        array = _as_array(vector)
        if array.ndim != 1:
            raise DafError(f"expected a 1D vector, got {array.ndim} dimensions: {what}")
        size = self.axis_size(axis)
        if array.shape[0] != size:
            raise DafError(
                f"wrong length: {array.shape[0]} (the axis: {axis} has {size} entries) of {what}"
            )
        if _kind_of(array, what) == "str":
            array = _check_strings(array, what, allow_none=True)
        self._set_data1d(axis, prop, array)

    def set_data2d(self, name: str, matrix: Any) -> None:
        """Set the 2D data ``rows,columns#property``: a dense row-major array (numbers/bool or
        strings with ``None`` for missing) or a ``scipy.sparse`` matrix (stored as CSR)."""
        self._check_writable()
        rows, cols, prop = self._check_new_data2d(name)
        what = f"the 2D data: {name} in the dataset: {self.path}"
        shape = (self.axis_size(rows), self.axis_size(cols))
        if is_sparse(matrix):
            if matrix.ndim != 2:
                raise DafError(f"expected a 2D matrix: {what}")
            as_dtype(matrix.dtype, what)
            # keep a csr_matrix as is: scipy caches whether it is canonical (else an O(nnz) scan)
            csr = matrix if isinstance(matrix, sparse().csr_matrix) else sparse().csr_matrix(matrix)
            if not csr.has_canonical_format:
                csr = csr.copy()
                csr.sum_duplicates()
            data: Matrix = csr
        else:
            data = _as_array(matrix)
            if data.ndim != 2:
                raise DafError(f"expected a 2D matrix, got {data.ndim} dimensions: {what}")
            if _kind_of(data, what) == "str":
                data = _check_strings(data, what, allow_none=True)
        if tuple(data.shape) != shape:
            raise DafError(
                f"wrong shape: {list(data.shape)} (the axes: {rows},{cols} have {list(shape)} "
                f"entries) of {what}"
            )
        self._set_data2d(rows, cols, prop, data)

    @contextmanager
    def create_dense_in_rows(self, name: str, dtype: Any) -> Iterator[np.ndarray]:
        """Create a dense ``rows,columns#property`` matrix of ``dtype`` and yield it as a writable
        row-major array mapped straight onto its storage (zero-filled), so it can be filled block
        by block (``m[i:j] = block``) whatever its size. It is complete when the block exits
        without an exception; otherwise it is removed."""
        with (
            self._new_data2d(name, dtype) as (rows, cols, prop, element, shape),
            self._create_dense_in_rows(rows, cols, prop, element, shape) as array,
        ):
            yield array

    @contextmanager
    def create_sparse_values(self, name: str, like: Any, dtype: Any) -> Iterator[np.ndarray]:
        """Create a CSR ``rows,columns#property`` matrix of ``dtype`` with the structure (indices
        and row pointers) of the CSR matrix ``like``, and yield its ``like.nnz`` values as a
        writable 1D array mapped onto storage, to fill by slices (``v[i:j] = block``) whatever
        their number. The structure is linked, not copied, where the store can (a memory-mapped
        file of a files dataset). Complete when the block exits without an exception; otherwise
        removed."""
        with self._new_data2d(name, dtype) as (rows, cols, prop, element, shape):
            if not isinstance(like, sparse().csr_matrix) or tuple(like.shape) != shape:
                raise DafError(
                    f"expected a CSR matrix of shape {list(shape)} as the structure of the 2D "
                    f"data: {name} in the dataset: {self.path}"
                )
            structure = (like.indptr, like.indices)
            with self._create_sparse(rows, cols, prop, element, shape, *structure) as (values, _):
                yield values

    @contextmanager
    def create_sparse_in_rows(
        self, name: str, indptr: Any, dtype: Any
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Create a CSR ``rows,columns#property`` matrix of ``dtype`` with the row pointers
        ``indptr``, and yield its values and column indices (int32 while they fit, as scipy
        chooses) as writable 1D arrays mapped onto storage, to fill by slices (``v[i:j] = block``)
        in row order, sorted within each row, whatever their number. Complete when the block
        exits without an exception; otherwise removed."""
        with self._new_data2d(name, dtype) as (rows, cols, prop, element, shape):
            indptr = np.asarray(indptr)
            if (
                indptr.shape != (shape[0] + 1,)
                or indptr.dtype.kind not in "iu"
                or indptr[0] != 0
                or (np.diff(indptr) < 0).any()
            ):
                raise DafError(
                    f"expected {shape[0] + 1} increasing row pointers from 0 for the 2D data: "
                    f"{name} in the dataset: {self.path}"
                )
            index = np.dtype(np.int32 if max(int(indptr[-1]), shape[1]) < 2**31 else np.int64)
            pointers = indptr.astype(index)
            with self._create_sparse(rows, cols, prop, element, shape, pointers, index) as arrays:
                yield arrays

    @contextmanager
    def _new_data2d(
        self, name: str, dtype: Any
    ) -> Iterator[tuple[str, str, str, np.dtype, tuple[int, int]]]:
        """Reserve the new 2D data ``name`` while it is being filled."""
        self._check_writable()
        rows, cols, prop = self._check_new_data2d(name)
        element = as_dtype(dtype, f"the 2D data: {name} in the dataset: {self.path}")
        shape = (self.axis_size(rows), self.axis_size(cols))
        key = (rows, cols, prop)
        self._pending.add(key)
        try:
            yield rows, cols, prop, element, shape
        finally:
            self._pending.discard(key)

    def _check_new_data2d(self, name: str) -> tuple[str, str, str]:
        rows, cols, prop = split_data2d_name(name)
        if self.has_data2d(name) or (rows, cols, prop) in self._pending:
            raise DafError(f"existing 2D data: {name} in the dataset: {self.path}")
        if (cols, rows, prop) in self._pending:
            raise DafError(f"existing 2D data: {name} in the dataset: {self.path}")
        return rows, cols, prop

    def copy_from(self, reader: Reader) -> None:
        """Copy everything ``reader`` holds into this dataset (binary data streams from its
        memory-mapped source in bounded blocks)."""
        for name in reader.item_names():
            self.set_item(name, reader.get_item(name))
        axes = reader.axis_names()
        for axis in axes:
            self.copy_axis(reader, axis)
        for axis in axes:
            for name in reader.data1d_names(axis):
                self.copy_data1d(reader, name)
        for rows in axes:
            for cols in axes:
                for name in reader.data2d_names(rows, cols):
                    self.set_data2d(name, reader.get_data2d(name))

    # What a backend implements

    @abstractmethod
    def _set_item(self, name: str, value: Any) -> None: ...

    @abstractmethod
    def _create_axis(self, axis: str, entries: np.ndarray) -> None: ...

    @abstractmethod
    def _set_data1d(self, axis: str, prop: str, vector: np.ndarray) -> None:
        """``vector`` is either binary (one of the :data:`DTYPES`) or an object array."""

    @abstractmethod
    def _set_data2d(self, rows: str, columns: str, prop: str, matrix: Matrix) -> None:
        """``matrix`` is a canonical ``csr_matrix``, a binary ndarray or an object ndarray."""

    @abstractmethod
    def _create_dense_in_rows(
        self, rows: str, columns: str, prop: str, dtype: np.dtype, shape: tuple[int, int]
    ) -> AbstractContextManager[np.ndarray]: ...

    @abstractmethod
    def _create_sparse(
        self,
        rows: str,
        columns: str,
        prop: str,
        dtype: np.dtype,
        shape: tuple[int, int],
        indptr: np.ndarray,
        indices: np.ndarray | np.dtype,
    ) -> AbstractContextManager[tuple[np.ndarray, np.ndarray]]:
        """Yield the writable values and the column indices of a new CSR matrix: ``indices``,
        an array, is kept as it is (linked where the store can, like ``indptr``); a dtype makes
        new writable indices."""

    @abstractmethod
    def _commit(self) -> None:
        """Complete the dataset (and move it into place)."""


def frozen_copy(array: np.ndarray) -> np.ndarray:
    """A read-only copy of a small array (axis entries, strings)."""
    copy = np.array(array, dtype=object)
    copy.flags.writeable = False
    return copy


# Opening ----------------------------------------------------------------------------------------


def open_reader(path: str | os.PathLike[str]) -> Reader:
    """Open the daf dataset at ``path`` with the store it was written with.

    A directory holding ``__daf__.yaml`` is a files dataset; a ``.h5``/``.hdf5`` file, or a
    directory that holds no ``__daf__.yaml`` but a ``data.h5`` file, is an HDF5 dataset.
    """
    from opchain import daf  # the stores import this module; h5py loads only for HDF5 data

    where = Path(path)
    if where.is_dir():
        if (where / "__daf__.yaml").is_file():
            return daf.FilesReader(where)
        if (where / "data.h5").is_file():
            return daf.H5Reader(where / "data.h5")
        raise DafError(f"{where}: not a daf dataset (no __daf__.yaml nor data.h5)")
    if where.is_file() and where.suffix in (".h5", ".hdf5"):
        return daf.H5Reader(where)
    if not where.exists():
        raise DafError(f"{where}: missing daf dataset")
    raise DafError(f"{where}: not a daf dataset (neither a directory nor a .h5/.hdf5 file)")
