"""The daf **files** store: a dataset is a directory of plain files, byte-compatible with the
reference implementation (tanaylab/daf ``daf.storage.files``).

Directory layout (every name is the daf name, so names must be valid file names)::

    __daf__.yaml                 the bytes "version:\\n- 1\\n- 0\\n"; readers accept any [1, minor]
                                 (extra keys ignored) and refuse another major version
    <item>.yaml                  a 0D item, as PyYAML's safe_dump writes it (block style, sorted
                                 keys), e.g. "human\\n...\\n"
    <axis>#.csv                  an axis: one column, header = the axis name, one entry per line
    <axis>#<prop>.csv            1D strings: header "<axis>,<prop>" ("<prop>.value" when prop is
                                 the axis name); rows in axis order, missing (None) entries left out
    <axis>#<prop>.yaml/.array    1D binary: the sidecar and the raw data
    <rows>,<cols>#<prop>.csv     2D strings: header "<rows>,<cols>,<prop>" (".value" when the
                                 prop equals an axis name; ".row"/".column" suffixes when the
                                 axes are the same, then ".value" again when the prop equals one
                                 of those headers); rows in row-major order, None left out
    <rows>,<cols>#<prop>.yaml    2D binary sidecar, with either the row-major dense data
          .array                 ... or the CSR sparse data:
          .data/.indices/.indptr

Binary sidecars are block-style YAML with sorted keys, e.g. a dense vector::

    dtype: float32
    shape:
    - 3
    version:
    - 1
    - 0

and a sparse matrix: ``data_dtype``, ``indices_dtype``, ``indptr_dtype``, ``nnz``, ``shape``,
``version``. Readers also accept flow style and extra keys. The raw files hold the elements
little-endian in C order and nothing else; dtypes are the plain numpy names (see
:data:`~opchain.daf.mapping.DTYPES`). A sparse matrix's shape is taken from its sidecar (so empty
last columns and ``nnz: 0`` round-trip).

CSV files are UTF-8 with ``\\n`` line ends and minimal quoting: a field is quoted only if it holds
``,``, ``"``, ``\\n`` or ``\\r``, with ``"`` doubled inside. An empty string is an empty field, a
missing value (``None``) is a left-out row, so ``""``, ``None`` and the text ``"None"`` all
round-trip distinctly. Readers match string rows by entry name in any order (absent -> ``None``),
skip blank lines and accept a UTF-8 byte-order mark.

Readers ignore every other file and every subdirectory, and also ``metadata.yaml`` and
``input_metadata.yaml`` (written by the opchain engine; those item names are reserved). A ``.array``
without its sidecar is ignored (writers write the data first and the sidecar last). A sidecar
without its data, data whose axis file is missing, or a name stored both as strings and as binary
is refused when the dataset is opened; corrupt content (malformed YAML or CSV, unknown dtype,
truncated files, shapes that don't match the axes, an invalid CSR structure) when the data is
read. The checks that read a whole file (an axis's entries, a string vector listing its axis, a
CSR structure) are recorded on the file when they pass and skipped while it is unchanged (see
:mod:`opchain.daf.trust`).

Compared with the HDF5 store: every binary datum is its own memory-mappable file (one file
descriptor per mapped datum), plain tools (``ls``, ``make``, ``numpy.fromfile``) work on it, and
text data stays human-readable; but a dataset is a directory, not a single file.

Writers (:class:`FilesWriter`) write everything into a hidden sibling directory
``.<name>.tmp-<8 hex digits>``, write ``__daf__.yaml`` last, and rename the directory into place on
:meth:`~opchain.daf.interface.Writer.close`. With ``atomic=False`` they write straight into
``path`` (for callers that already write a whole directory aside); ``__daf__.yaml`` is still
written last, so an interrupted write is not a dataset. Written bytes depend only on the data (no
timestamps), so writing the same data twice gives identical files.
"""

from __future__ import annotations

import copy
import csv
import io
import os
import shutil
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from opchain.atomic import aside_path, link_same
from opchain.daf.interface import (
    Matrix,
    Reader,
    Writer,
    check_version,
    commit,
    first_duplicate,
    frozen_copy,
    is_axis_name,
    is_empty_dir,
    item_to_yaml,
    name_problem,
)
from opchain.daf.mapping import (
    DTYPES,
    INDEX_DTYPES,
    RowsMemmap,
    check_csr,
    check_size,
    frozen,
    is_sparse,
    make_csr,
    map_file,
    mapped_file,
    write_array,
)
from opchain.daf.trust import stamp, vouch, vouched
from opchain.errors import DafError

__all__ = ["DAF_YAML", "FilesReader", "FilesWriter"]

#: The exact bytes of the ``__daf__.yaml`` this implementation writes.
DAF_YAML = "version:\n- 1\n- 0\n"

#: ``.yaml`` files that are never items: the format header and the opchain engine's metadata.
NON_ITEM_FILES = frozenset({"__daf__.yaml", "metadata.yaml", "input_metadata.yaml"})

SPARSE_SUFFIXES = ("data", "indices", "indptr")

#: Suffixes of files a writer produces (used to refuse writing over a directory that holds some).
DAF_SUFFIXES = (".yaml", ".csv", ".array", ".data", ".indices", ".indptr")

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long strings are fine; the default is 128 KiB


#: libyaml's loader when available (same results as ``yaml.safe_load``, much faster).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: libyaml recurses in C and crashes the process on input nested ~30,000 deep, so text with more
#: characters that can open a collection than this is left to PyYAML's loader (a RecursionError).
MAX_FAST_NESTING = 1000


def _load_yaml(path: Path, quick: Callable[[str], Any] | None = None) -> Any:
    """The YAML file at ``path``; ``quick``: a parser of the text's expected form, tried first
    (None: not that form)."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
        if quick is not None and (content := quick(text)) is not None:
            return content
        openers = sum(map(text.count, "[{-:?"))
        return yaml.load(text, Loader=_LOADER if openers <= MAX_FAST_NESTING else yaml.SafeLoader)
    except OSError as error:
        raise DafError(f"{path}: can't read the file ({error.strerror})") from None
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError) as error:
        # ValueError: a value YAML's resolver accepts but can't build (e.g. the date 2022-13-45)
        problem = " ".join(str(error).split())
        raise DafError(f"{path}: malformed YAML ({problem})") from None


def _write_text(path: str | os.PathLike[str], text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as file:
        file.write(text)


def _read_csv(
    path: Path, header: list[list[str]], width: int
) -> tuple[list[list[str]], Sequence[int]]:
    """The ``width`` columns of the rows after the header, and the line number of each row.

    The header must be one of ``header`` (the accepted header rows) and every row must have
    ``width`` fields. Blank lines are skipped. Columns (not rows) keep large files fast.
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:
            text = file.read()
    except OSError as error:
        raise DafError(f"{path}: can't read the file ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise DafError(f"{path}: malformed CSV (not UTF-8: {error.reason})") from None
    if '"' not in text and "\r" not in text:  # the common case: one line per row, no quoting
        lines = text.removesuffix("\n").split("\n")
        numbers: Sequence[int] = range(1, len(lines) + 1)
        if "\n\n" in text or not lines[0]:  # blank lines: skipped, numbered as in the file
            numbers = [number for number, line in zip(numbers, lines, strict=True) if line]
            lines = [line for line in lines if line]
        rows: list[list[str]] = [line.split(",") for line in lines[:1]]
        body = lines[1:]
        one_field = width == 1 and "," not in text  # then every line is one field as it is
        cells = body if one_field else ",".join(body).split(",") if body else []
        if len(cells) != width * len(body):
            for number, line in zip(numbers[1:], body, strict=True):
                _check_width(path, number, line.count(",") + 1, width)
        columns = [cells[column::width] for column in range(width)]
    else:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        rows, numbers = [], []
        try:
            for fields in reader:
                if fields:
                    rows.append(fields)
                    numbers.append(reader.line_num)
        except csv.Error as error:
            raise DafError(f"{path}:{reader.line_num}: malformed CSV ({error})") from None
        for number, fields in zip(numbers[1:], rows[1:], strict=True):
            _check_width(path, number, len(fields), width)
        columns = [[fields[column] for fields in rows[1:]] for column in range(width)]
    if not rows:
        raise DafError(f"{path}: malformed CSV (empty, expected the header: {','.join(header[0])})")
    if rows[0] not in header:
        raise DafError(
            f"{path}:{numbers[0]}: malformed CSV header: {','.join(rows[0])} "
            f"(expected: {','.join(header[0])})"
        )
    return columns, numbers[1:]


def _check_width(path: Path, line: int, found: int, width: int) -> None:
    if found != width:
        raise DafError(f"{path}:{line}: malformed CSV ({found} fields, expected {width})")


def _csv_field(value: str) -> str:
    if "," in value or '"' in value or "\n" in value or "\r" in value:
        return '"' + value.replace('"', '""') + '"'
    return value


def _csv_line(*fields: str) -> str:
    return ",".join(map(_csv_field, fields)) + "\n"


def _headers_1d(axis: str, prop: str) -> list[list[str]]:
    return [[axis, prop + ".value" if prop == axis else prop]]


def _headers_2d(rows: str, cols: str, prop: str) -> list[list[str]]:
    """The header the reference writes, then the one opchain wrote before (``g,g#g`` had
    ``g.row,g.column,g``), still read.

    The reference suffixes ``.value`` to a property named like an axis, then suffixes ``.row`` /
    ``.column`` to identical axes, then ``.value`` again to a property named like those.
    """
    rows_header, cols_header = (rows + ".row", cols + ".column") if rows == cols else (rows, cols)
    value = prop + ".value" if prop in (rows, cols) else prop
    if value in (rows_header, cols_header):
        value += ".value"
    headers = [[rows_header, cols_header, value]]
    if prop in (rows, cols) and prop not in (rows_header, cols_header):
        headers.append([rows_header, cols_header, prop])
    return headers


def _is_plain_axis(data: bytes, axis: str) -> bool:
    """Whether ``data`` is an axis file of one entry a line: no quotes, commas, CRs, blank lines."""
    return (
        data.startswith((axis + "\n").encode("utf-8"))
        and data.endswith(b"\n")
        and b'"' not in data
        and b"," not in data
        and b"\r" not in data
        and b"\n\n" not in data
    )


def _check_plain_axis(path: Path, data: bytes) -> None:
    """Raise a :class:`DafError` unless the entries of the plain axis file ``data`` are UTF-8 and
    unique, as reading them would, without holding them all as strings: their hashes, sorted,
    then a second look at the entries whose hash repeats."""
    header_end = data.index(b"\n") + 1
    hashes, filled = np.empty(data.count(b"\n", header_end), np.int64), 0
    for text in _line_chunks(data, header_end):
        try:
            lines = text.decode("utf-8").split("\n")[:-1]
        except UnicodeDecodeError as error:
            raise DafError(f"{path}: malformed CSV (not UTF-8: {error.reason})") from None
        hashes[filled : filled + len(lines)] = np.fromiter(map(hash, lines), np.int64, len(lines))
        filled += len(lines)
    hashes.sort()
    repeated = set(hashes[1:][hashes[1:] == hashes[:-1]].tolist())
    if not repeated:
        return
    seen: set[str] = set()
    line = 1
    for text in _line_chunks(data, header_end):
        for entry in text.decode("utf-8").split("\n")[:-1]:
            line += 1
            if hash(entry) in repeated:
                if entry in seen:
                    raise DafError(f"{path}:{line}: duplicate axis entry: {entry!r}")
                seen.add(entry)


def _lists_axis(data: bytes, axis: str, prop: str, axis_file: bytes) -> bool:
    """Whether ``data``, the file of the 1D strings ``axis#prop``, has a value for every entry of
    the plain axis file ``axis_file``, in its order, on plain lines (``entry,value``, no quotes),
    in UTF-8: then it is valid as it is (if the axis is), and that is checked by comparing
    bytes, not by reading strings."""
    header_end = data.find(b"\n") + 1
    axis_start = axis_file.find(b"\n") + 1
    if (
        not header_end
        or not _is_plain_axis(axis_file, axis)
        or not data.endswith(b"\n")
        or b'"' in data
        or b"\r" in data
        or data[: header_end - 1].decode("utf-8", "replace").split(",")
        not in _headers_1d(axis, prop)
    ):
        return False
    offset = axis_start
    for chunk in _line_chunks(data, header_end):
        text, entries = _entry_bytes(chunk)
        if entries is None:
            return False
        listed = text[entries].tobytes()
        if axis_file[offset : offset + len(listed)] != listed or not _is_utf8(chunk):
            return False
        offset += len(listed)
    return offset == len(axis_file)


def _entry_bytes(chunk: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """The bytes of ``chunk`` (whole ``entry,value`` lines) and a mask of those of its entries
    and line ends; ``None`` for the mask unless every line has one comma."""
    text = np.frombuffer(chunk, np.uint8)
    ends = np.flatnonzero(text == ord("\n"))
    commas = np.flatnonzero(text == ord(","))
    starts = np.concatenate(([0], ends[:-1] + 1))
    if len(commas) != len(ends) or (commas < starts).any() or (commas > ends).any():
        return text, None
    entries = _spans(len(text), starts, commas)
    entries[ends] = True
    return text, entries


def _values_column(data: bytes) -> Iterator[list[str]]:
    """The values of a file that :func:`_lists_axis` accepted, a chunk of lines at a time."""
    for chunk in _line_chunks(data, data.index(b"\n") + 1):
        text, entries = _entry_bytes(chunk)
        assert entries is not None  # checked by _lists_axis
        yield text[~entries].tobytes().decode("utf-8").split(",")[1:]  # ",v1,v2": after each comma


def _take_lines(data: bytes, start: int, positions: np.ndarray) -> Iterator[bytes]:
    """The lines of ``data[start:]`` at the increasing ``positions``, a chunk at a time."""
    first = 0  # the number of the chunk's first line
    for chunk in _line_chunks(data, start):
        text = np.frombuffer(chunk, np.uint8)
        ends = np.flatnonzero(text == ord("\n"))
        low, high = np.searchsorted(positions, [first, first + len(ends)])
        picked = np.asarray(positions[low:high]) - first
        first += len(ends)
        if len(picked):
            starts = np.concatenate(([0], ends[:-1] + 1))[picked]
            yield text[_spans(len(text), starts, ends[picked] + 1)].tobytes()


def _spans(length: int, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """A mask of ``length`` bytes, true in each ``[start, stop)`` (disjoint, increasing spans)."""
    edges = np.zeros(length + 1, np.int8)
    edges[starts] += 1
    edges[stops] -= 1
    return np.cumsum(edges[:-1], dtype=np.int8).astype(bool)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _link_or_copy(source: str, target: str) -> bool:
    """Hard-link ``source`` as ``target`` (True), or write a copy."""
    try:
        os.link(source, target)
    except OSError:  # another file system, or no hard links there
        shutil.copyfile(source, target)
        return False
    return True


def _line_chunks(data: bytes, start: int, size: int = 4 << 20) -> Iterator[bytes]:
    """``data[start:]`` in pieces of about ``size`` bytes that end at a line's end."""
    while start < len(data):
        end = data.find(b"\n", min(start + size, len(data) - 1)) + 1
        yield data[start:end]
        start = end


class FilesReader(Reader):
    """Read the daf files dataset in the directory ``path`` (see the module docstring)."""

    format = "files"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(str(path))
        directory = Path(path)
        if not directory.is_dir():
            problem = "not a directory" if directory.exists() else "missing"
            raise DafError(f"{directory}: {problem} dataset directory")
        header = directory / "__daf__.yaml"
        if not header.is_file():
            raise DafError(f"{directory}: not a daf dataset (no __daf__.yaml)")
        content = _load_yaml(header)
        if not isinstance(content, dict) or "version" not in content:
            raise DafError(f"{header}: malformed daf header (expected a version key)")
        check_version(content["version"], str(header))
        self._start(directory)
        self._scan()

    def reopened(self) -> FilesReader:
        """A new reader of this dataset that starts with what this one has read and checked
        (a batch job reads one input for many results, and a dataset's files are only ever
        replaced, never changed in place). 2D data is wrapped anew over the same mapped buffers:
        a ``csr_matrix`` is a mutable object, which an operation may change."""
        new = copy.copy(self)
        new._closed = False
        new._cache = {key: value for key, value in self._cache.items() if key[0] != "2d"}
        return new

    def _start(self, directory: Path) -> None:
        self._dir = directory
        self._items: set[str] = set()
        self._axes: dict[str, None] = {}
        self._vectors: dict[str, dict[str, str]] = {}  # axis -> prop -> "csv" | "array"
        self._matrices: dict[tuple[str, str], dict[str, str]] = {}  # also "sparse"

    def _scan(self) -> None:
        try:
            names = {entry.name for entry in os.scandir(self._dir) if entry.is_file()}
        except OSError as error:
            raise DafError(f"{self._dir}: can't list the dataset ({error.strerror})") from None
        data: list[tuple[tuple[str, ...], str, str]] = []
        for name in sorted(names):
            stem, dot, suffix = name.rpartition(".")
            if not dot or suffix not in ("yaml", "csv") or name in NON_ITEM_FILES:
                continue
            if "#" not in stem:
                if suffix == "yaml" and name_problem(stem) is None:
                    self._items.add(stem)
                continue
            left, prop = stem.split("#", 1)
            axes = tuple(left.split(","))
            if prop == "":
                if suffix == "csv" and len(axes) == 1 and is_axis_name(left):
                    self._axes[left] = None
                continue
            if len(axes) > 2 or not all(map(is_axis_name, axes)):
                continue
            if suffix == "csv":
                kind = "csv"
            else:
                if f"{stem}.csv" in names:
                    raise DafError(
                        f"{self._dir / stem}.csv: both string and binary data (also {stem}.yaml)"
                    )
                kind = self._binary_kind(stem, names, len(axes))
            data.append((axes, prop, kind))
        for axes, prop, kind in data:
            for axis in axes:
                if axis not in self._axes:
                    suffix = "csv" if kind == "csv" else "yaml"
                    raise DafError(
                        f"{self._dir / ','.join(axes)}#{prop}.{suffix}: "
                        f"missing axis file: {axis}#.csv"
                    )
            if len(axes) == 1:
                self._vectors.setdefault(axes[0], {})[prop] = kind
            else:
                self._matrices.setdefault((axes[0], axes[1]), {})[prop] = kind

    def _binary_kind(self, stem: str, names: set[str], ndim: int) -> str:
        sidecar = self._dir / f"{stem}.yaml"
        dense = f"{stem}.array" in names
        sparse = [f"{stem}.{suffix}" in names for suffix in SPARSE_SUFFIXES]
        if dense and any(sparse):
            raise DafError(f"{sidecar}: both dense (.array) and sparse data files")
        if dense:
            return "array"
        if all(sparse):
            if ndim == 1:
                raise DafError(f"{sidecar}: sparse data files for 1D data")
            return "sparse"
        if any(sparse):
            missing = next(
                s for s, present in zip(SPARSE_SUFFIXES, sparse, strict=True) if not present
            )
            raise DafError(f"{sidecar}: missing data file: {stem}.{missing}")
        raise DafError(f"{sidecar}: missing data file: {stem}.array")

    # Reading

    def _item_names(self) -> set[str]:
        return self._items

    def _get_item(self, name: str) -> Any:
        return _load_yaml(self._dir / f"{name}.yaml")

    def _axis_names(self) -> dict[str, None]:
        return self._axes

    def _axis_entries(self, axis: str) -> np.ndarray:
        path = self._dir / f"{axis}#.csv"
        (entries,), numbers = _read_csv(path, [[axis]], 1)
        unique = set(entries)
        if "" in unique:
            raise DafError(f"{path}:{numbers[entries.index('')]}: empty axis entry")
        if len(unique) != len(entries):
            duplicate = first_duplicate(entries)
            line = numbers[entries.index(duplicate, entries.index(duplicate) + 1)]
            raise DafError(f"{path}:{line}: duplicate axis entry: {duplicate!r}")
        return frozen_copy(np.array(entries, dtype=object))

    def _axis_size(self, axis: str) -> int:
        if ("axis", axis) in self._cache:
            return len(self._cache[("axis", axis)])
        return self._cached(("size", axis), lambda: self._count_entries(axis))

    def _count_entries(self, axis: str) -> int:
        """Count the lines of a plain axis file without parsing it (so that opening 2D data
        doesn't grow with the axes), or take the count its check recorded (see
        :mod:`~opchain.daf.trust`); anything unusual is parsed in full."""
        path = self._dir / f"{axis}#.csv"
        recorded = vouched(path, "axis")  # [axis, number of entries]
        if len(recorded) == 2 and recorded[0] == axis:
            return int(recorded[1])
        try:
            data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
        except OSError:
            data = b""
        if _is_plain_axis(data, axis):
            return data.count(b"\n") - 1
        return len(self.axis_entries(axis))

    def _axis_index(self, axis: str) -> dict[str, int]:
        return self._cached(
            ("index", axis), lambda: {entry: i for i, entry in enumerate(self.axis_entries(axis))}
        )

    def _data1d_names(self, axis: str) -> dict[str, str]:
        return self._vectors.get(axis, {})

    def _get_data1d(self, axis: str, prop: str) -> np.ndarray:
        stem = f"{axis}#{prop}"
        if self._vectors[axis][prop] == "csv":
            chunks = self._strings_in_axis_order(axis, prop)
            if chunks is not None:
                values: list[str] = []
                for chunk in chunks:
                    values.extend(chunk)
                return frozen(np.array(values, dtype=object))
            return self._read_strings(stem, (axis,), _headers_1d(axis, prop))
        shape, dtypes, _ = self._read_sidecar(stem, (axis,), sparse=False)
        return map_file(self._dir / f"{stem}.array", dtypes["dtype"], tuple(shape))

    def _vector(self, stem: str) -> tuple[int, str]:
        """The size and dtype of the vector of numbers ``stem``, checked as reading it would (its
        sidecar, its data file's size) without mapping it."""
        shape, dtypes, _ = self._read_sidecar(stem, (stem.partition("#")[0],), sparse=False)
        check_size(self._dir / f"{stem}.array", dtypes["dtype"], tuple(shape))
        return shape[0], dtypes["dtype"].name

    def _data1d_dtype(self, axis: str, prop: str) -> str:
        if self._vectors[axis][prop] == "csv":
            return "str"
        return self._read_sidecar(f"{axis}#{prop}", (axis,), sparse=False)[1]["dtype"].name

    def _data1d_chunks(self, axis: str, prop: str) -> Iterator[np.ndarray] | None:
        if self._vectors[axis][prop] != "csv":
            return None
        chunks = self._strings_in_axis_order(axis, prop)
        return None if chunks is None else (np.array(chunk, dtype=object) for chunk in chunks)

    def _lists(self, axis: str, prop: str) -> bool:
        """Whether the file of the string vector ``axis#prop`` lists the entries of the plain
        axis file in order (see :func:`_lists_axis`): compared once per reader, or not at all
        while both files are as when it was last compared (see :mod:`~opchain.daf.trust`);
        ``False`` if either can't be read (reading them in full reports it)."""

        def compare() -> bool:
            path, axis_path = self._dir / f"{axis}#{prop}.csv", self._dir / f"{axis}#.csv"
            axis_stamp, before = stamp(axis_path), stamp(path)
            recorded = vouched(path, "lists")  # [axis, prop, the axis file's stamp, the outcome]
            if (
                axis_stamp is not None
                and len(recorded) == 4
                and recorded[:3] == [axis, prop, axis_stamp]
            ):
                return bool(recorded[3])
            try:
                data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
                entries = axis_path.read_bytes().removeprefix(b"\xef\xbb\xbf")
            except OSError:
                return False
            lists = _lists_axis(data, axis, prop, entries)
            if stamp(axis_path) == axis_stamp:
                vouch(path, "lists", [axis, prop, axis_stamp, lists], before)
            return lists

        return self._cached(("lists", axis, prop), compare)  # a dataset's files don't change

    def _plain_axis_count(self, axis: str) -> int | None:
        """The number of entries of the axis file if it is a plain one (see
        :func:`_is_plain_axis`), after checking them as reading them would (a
        :class:`DafError` if they are not UTF-8 or not unique): once per reader, or not at all
        while the file is as when it was last checked (see :mod:`~opchain.daf.trust`); ``None``
        if it is not plain or can't be read (reading the entries reports it)."""

        def check() -> int | None:
            path = self._dir / f"{axis}#.csv"
            recorded, before = vouched(path, "axis"), stamp(path)
            if len(recorded) == 2 and recorded[0] == axis:
                return int(recorded[1])
            try:
                data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
            except OSError:
                return None
            if not _is_plain_axis(data, axis):
                return None
            if ("axis", axis) not in self._cache:  # else read, and so checked, in full
                _check_plain_axis(path, data)
            count = data.count(b"\n") - 1
            vouch(path, "axis", [axis, count], before)
            return count

        return self._cached(("plain", axis), check)

    def _strings_in_axis_order(self, axis: str, prop: str) -> Iterator[list[str]] | None:
        """The values of the string vector ``axis#prop``, a chunk of its file at a time, if its
        file lists the plain axis file's entries in order: its values column, without the index
        of the axis's entries that matching them one by one needs (for 10 million entries,
        gigabytes); ``None`` if not."""
        if not self._lists(axis, prop):
            return None
        self._plain_axis_count(axis)  # as matching the entries would
        try:
            data = (self._dir / f"{axis}#{prop}.csv").read_bytes()
        except OSError:
            return None  # reading it in full reports it
        return _values_column(data.removeprefix(b"\xef\xbb\xbf"))

    def _data2d_names(self, rows: str, columns: str) -> dict[str, str]:
        return self._matrices.get((rows, columns), {})

    def _get_data2d(self, rows: str, columns: str, prop: str) -> Matrix:
        stem = f"{rows},{columns}#{prop}"
        kind = self._matrices[(rows, columns)][prop]
        if kind == "csv":
            return self._read_strings(stem, (rows, columns), _headers_2d(rows, columns, prop))
        if kind == "sparse":  # its parts are kept: a reopened reader wraps them without a check
            parts, shape, names = self._cached(
                ("csr", rows, columns, prop), lambda: self._csr_parts(stem, rows, columns)
            )
            return make_csr(*parts, shape, names, checked=True)
        shape, dtypes, _ = self._read_sidecar(stem, (rows, columns), sparse=False)
        return map_file(self._dir / f"{stem}.array", dtypes["dtype"], tuple(shape))

    def _csr_parts(
        self, stem: str, rows: str, columns: str
    ) -> tuple[tuple[np.ndarray, ...], tuple[int, int], dict[str, str]]:
        """The mapped values, column indices and row pointers of a CSR matrix, checked, its
        shape and its files' names."""
        shape, dtypes, nnz = self._read_sidecar(stem, (rows, columns), sparse=True)
        paths = {part: self._dir / f"{stem}.{part}" for part in SPARSE_SUFFIXES}
        # What check_csr establishes of each part, recorded on it (see opchain.daf.trust).
        facts = {
            "indptr": [dtypes["indptr_dtype"].name, shape[0], nnz],
            "indices": [dtypes["indices_dtype"].name, shape[1], nnz],
        }
        stamps = {part: stamp(paths[part]) for part in facts}
        checked = all(vouched(paths[part], part) == fact for part, fact in facts.items())
        data = map_file(paths["data"], dtypes["data_dtype"], (nnz,))
        indices = map_file(paths["indices"], dtypes["indices_dtype"], (nnz,))
        indptr = map_file(paths["indptr"], dtypes["indptr_dtype"], (shape[0] + 1,))
        names = {part: str(path) for part, path in paths.items()}
        if not checked:
            check_csr(data, indices, indptr, (shape[0], shape[1]), names)
            for part, fact in facts.items():
                vouch(paths[part], part, fact, stamps[part])
        return (data, indices, indptr), (shape[0], shape[1]), names

    def _read_sidecar(
        self, stem: str, axes: tuple[str, ...], sparse: bool
    ) -> tuple[list[int], dict[str, np.dtype], int]:
        path = self._dir / f"{stem}.yaml"
        content = _load_yaml(path, sidecar_content)
        if not isinstance(content, dict):
            raise DafError(f"{path}: malformed sidecar (expected a mapping)")
        check_version(content.get("version"), str(path))
        shape = content.get("shape")
        if not (
            isinstance(shape, list)
            and len(shape) == len(axes)
            and all(isinstance(size, int) and not isinstance(size, bool) for size in shape)
            and all(size >= 0 for size in shape)
        ):
            raise DafError(f"{path}: malformed shape: {shape!r}")
        sizes = [self.axis_size(axis) for axis in axes]
        if shape != sizes:
            raise DafError(
                f"{path}: shape {shape} does not match the axes {','.join(axes)} with {sizes} "
                f"entries"
            )
        keys = ("data_dtype", "indices_dtype", "indptr_dtype") if sparse else ("dtype",)
        dtypes: dict[str, np.dtype] = {}
        for key in keys:
            value = content.get(key)
            allowed = DTYPES if key in ("dtype", "data_dtype") else INDEX_DTYPES
            if not isinstance(value, str):
                raise DafError(f"{path}: malformed {key}: {value!r}")
            if value not in allowed:
                raise DafError(
                    f"{path}: unknown {key}: {value} (expected one of: {', '.join(allowed)})"
                )
            dtypes[key] = np.dtype(value).newbyteorder("<")
        nnz = content.get("nnz", 0)
        if sparse and not (isinstance(nnz, int) and not isinstance(nnz, bool) and nnz >= 0):
            raise DafError(f"{path}: malformed nnz: {nnz!r}")
        return shape, dtypes, nnz

    def _read_strings(
        self, stem: str, axes: tuple[str, ...], headers: list[list[str]]
    ) -> np.ndarray:
        path = self._dir / f"{stem}.csv"
        columns, numbers = _read_csv(path, headers, len(axes) + 1)
        shape = tuple(self.axis_size(axis) for axis in axes)
        flat = [0] * len(numbers)
        for axis, column, size in zip(axes, columns, shape, strict=False):
            index = self._axis_index(axis)
            positions = [index.get(entry, -1) for entry in column]
            if -1 in positions:
                row = positions.index(-1)
                raise DafError(f"{path}:{numbers[row]}: unknown {axis} entry: {column[row]!r}")
            flat = [at * size + position for at, position in zip(flat, positions, strict=True)]
        if len(set(flat)) != len(flat):
            row = flat.index(first_duplicate(flat))
            row = flat.index(flat[row], row + 1)
            raise DafError(f"{path}:{numbers[row]}: duplicate value for the same entries")
        values = np.full(shape, None, dtype=object)
        values.reshape(-1)[flat] = columns[-1]
        return frozen(values)


class FilesWriter(FilesReader, Writer):
    """Write a new daf files dataset to the directory ``path`` (see the module docstring).

    An existing dataset at ``path`` is refused unless ``overwrite=True``; it is then replaced only
    when the new one is complete. With ``atomic=False`` the files go straight into ``path`` (which
    may exist and hold other files, e.g. the engine's ``metadata.yaml``); files there that look
    like daf files (``*.yaml`` other than the reserved ones, ``*.csv``, ``*.array``, ``*.data``,
    ``*.indices``, ``*.indptr``) are refused, or removed first if ``overwrite=True``.
    """

    def __init__(
        self, path: str | os.PathLike[str], overwrite: bool = False, *, atomic: bool = True
    ) -> None:
        Writer.__init__(self, str(path))
        final = Path(path)
        self._final = final
        self._overwrite = overwrite
        self._atomic = atomic
        if final.exists() and not final.is_dir():
            raise DafError(f"refuse to overwrite a non-directory with a dataset: {final}")
        is_dataset = (final / "__daf__.yaml").is_file()
        if is_dataset and not overwrite:
            raise DafError(f"refuse to overwrite the existing dataset: {final}")
        try:
            if atomic:
                if final.is_dir() and not is_dataset and not is_empty_dir(final):
                    raise DafError(f"refuse to replace a directory that is not a dataset: {final}")
                final.parent.mkdir(parents=True, exist_ok=True)
                directory = aside_path(final)
                directory.mkdir()
                self._finalizer = weakref.finalize(self, shutil.rmtree, directory, True)
            else:
                directory = final
                directory.mkdir(parents=True, exist_ok=True)
                self._clear(directory, overwrite)
                self._finalizer = weakref.finalize(self, _nothing)
        except OSError as error:
            raise DafError(f"can't create the dataset: {final} ({error.strerror})") from None
        self._start(directory)
        self._like: Path | None = None  # the files dataset this one copies axes from
        # The files hard-linked from other datasets: their data is on disk as it was, so a
        # publication flushes only their new entries (this directory), not them again.
        self.linked: set[str] = set()

    @staticmethod
    def _clear(directory: Path, overwrite: bool) -> None:
        found = sorted(
            entry.name
            for entry in os.scandir(directory)
            if entry.is_file()
            and entry.name.endswith(DAF_SUFFIXES)
            and entry.name not in NON_ITEM_FILES - {"__daf__.yaml"}
        )
        if found and not overwrite:
            raise DafError(
                f"refuse to overwrite the existing files: {found[0]} ... in: {directory}"
            )
        for name in found:
            (directory / name).unlink()

    def _commit(self) -> None:
        self._write_file("__daf__.yaml", DAF_YAML)
        if self._atomic:
            commit(self._dir, self._final, self._overwrite)
            self._dir = self._final

    # Writing

    def _set_item(self, name: str, value: Any) -> None:
        what = f"the item: {name} in the dataset: {self.path}"
        self._write_file(f"{name}.yaml", item_to_yaml(value, what))
        self._items.add(name)

    def _create_axis(self, axis: str, entries: np.ndarray) -> None:
        names = entries.tolist()
        body = "\n".join(names) + "\n" if names else ""
        if '"' in body or "," in body or "\r" in body or body.count("\n") != len(names):
            body = "".join(_csv_line(entry) for entry in names)
        _write_text(self._dir / f"{axis}#.csv", _csv_line(axis) + body)
        self._axes[axis] = None
        self._cache[("axis", axis)] = entries

    def _copy_axis_file(self, reader: Reader, axis: str, take: np.ndarray | None) -> bool:
        if (
            self._like is None
            and isinstance(reader, FilesReader)
            and not isinstance(reader, Writer)
        ):
            self._like = reader._dir  # a complete dataset: its files are never changed in place
        if not isinstance(reader, FilesReader) or ("axis", axis) in reader._cache:
            return False  # the entries are at hand: writing them is as cheap
        count = reader._plain_axis_count(axis)  # checked: any subset of its lines is valid too
        if count is None:
            return False
        self._copy_lines(reader._dir, f"{axis}#.csv", take)
        self._axes[axis] = None
        self._cache[("size", axis)] = count if take is None else len(take)
        return True

    def _copy_item_file(self, reader: Reader, name: str) -> bool:
        if not isinstance(reader, FilesReader):
            return False
        self._copy_lines(reader._dir, f"{name}.yaml", None)
        self._items.add(name)
        return True

    def _copy_vector_files(
        self, reader: Reader, axis: str, prop: str, take: np.ndarray | None
    ) -> bool:
        if not isinstance(reader, FilesReader):
            return False
        kind = reader._vectors.get(axis, {}).get(prop)
        stem = f"{axis}#{prop}"
        if kind == "csv" and reader._lists(axis, prop):
            self._copy_lines(reader._dir, f"{stem}.csv", take)
        elif kind == "array" and take is None:
            size, dtype = reader._cached(("vector files", axis, prop), lambda: reader._vector(stem))
            if size != self.axis_size(axis):
                return False  # set_data1d says what is wrong
            self._copy_lines(reader._dir, f"{stem}.array", None)
            self._write_sidecar(stem, {"dtype": dtype, "shape": [size]})
        else:
            return False
        self._vectors.setdefault(axis, {})[prop] = kind
        return True

    def _copy_lines(self, folder: Path, name: str, take: np.ndarray | None) -> None:
        """Copy the file ``name`` of the dataset in ``folder`` as a file of this dataset: linked,
        or, with ``take`` (a CSV file), its header and the lines after it at those positions.
        Paths as text: a result links a few dozen files, and pathlib costs more than a link."""
        source, target = f"{folder}/{name}", f"{self._dir}/{name}"
        if take is None:
            if _link_or_copy(source, target):
                self.linked.add(name)
            return
        with open(source, "rb") as file:
            data = file.read()
        header_end = data.index(b"\n") + 1
        with open(target, "wb") as file:
            file.write(data[:header_end])
            for lines in _take_lines(data, header_end, take):
                file.write(lines)

    def _set_data1d(self, axis: str, prop: str, vector: np.ndarray) -> None:
        stem = f"{axis}#{prop}"
        if vector.dtype == object:
            with open(self._dir / f"{stem}.csv", "w", encoding="utf-8", newline="") as file:
                file.write(_csv_line(*_headers_1d(axis, prop)[0]))
                done = 0
                for entries in self._entry_chunks(axis):
                    values = vector[done : done + len(entries)]
                    lines = zip(entries, values, strict=True)
                    file.write("".join(_csv_line(e, v) for e, v in lines if v is not None))
                    done += len(entries)
            kind = "csv"
        else:
            dtype = np.dtype(vector.dtype.name).newbyteorder("<")
            self._write_raw(f"{stem}.array", vector, dtype)
            self._write_sidecar(stem, {"dtype": dtype.name, "shape": [len(vector)]})
            kind = "array"
        self._vectors.setdefault(axis, {})[prop] = kind

    def _entry_chunks(self, axis: str) -> Iterator[Sequence[str]]:
        """The entries of ``axis`` a piece of its file at a time if it was copied as a plain
        file (its lines are its entries, checked when copied), else all at once."""
        if ("axis", axis) not in self._cache:
            data = (self._dir / f"{axis}#.csv").read_bytes().removeprefix(b"\xef\xbb\xbf")
            if _is_plain_axis(data, axis):
                for chunk in _line_chunks(data, data.index(b"\n") + 1):
                    yield chunk.decode("utf-8").split("\n")[:-1]
                return
        yield self.axis_entries(axis)

    def _set_data2d(self, rows: str, columns: str, prop: str, matrix: Matrix) -> None:
        stem = f"{rows},{columns}#{prop}"
        shape = [int(size) for size in matrix.shape]
        if is_sparse(matrix):
            dtypes = {}
            for suffix in SPARSE_SUFFIXES:
                array = getattr(matrix, suffix)
                dtypes[suffix] = np.dtype(array.dtype.name).newbyteorder("<")
                self._write_raw(f"{stem}.{suffix}", array, dtypes[suffix])
            self._write_sparse_sidecar(stem, dtypes, shape, int(matrix.indptr[-1]))
            kind = "sparse"
        elif matrix.dtype == object:
            lines = [_csv_line(*_headers_2d(rows, columns, prop)[0])]
            column_entries = self.axis_entries(columns)
            for row_entry, values in zip(self.axis_entries(rows), matrix, strict=True):
                lines.extend(
                    _csv_line(row_entry, column_entry, value)
                    for column_entry, value in zip(column_entries, values, strict=True)
                    if value is not None
                )
            _write_text(self._dir / f"{stem}.csv", "".join(lines))
            kind = "csv"
        else:
            dtype = np.dtype(matrix.dtype.name).newbyteorder("<")
            self._write_raw(f"{stem}.array", matrix, dtype)
            self._write_sidecar(stem, {"dtype": dtype.name, "shape": shape})
            kind = "array"
        self._matrices.setdefault((rows, columns), {})[prop] = kind

    @contextmanager
    def _create_dense_in_rows(
        self, rows: str, columns: str, prop: str, dtype: np.dtype, shape: tuple[int, int]
    ) -> Iterator[np.ndarray]:
        stem = f"{rows},{columns}#{prop}"
        with self._filled(f"{stem}.array", dtype, shape) as array:
            yield array
        self._write_sidecar(stem, {"dtype": dtype.name, "shape": list(shape)})
        self._matrices.setdefault((rows, columns), {})[prop] = "array"

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
        stem = f"{rows},{columns}#{prop}"
        index = indices if isinstance(indices, np.dtype) else indices.dtype
        dtypes = {"data": dtype, "indices": index, "indptr": indptr.dtype}
        dtypes = {part: np.dtype(kind.name).newbyteorder("<") for part, kind in dtypes.items()}
        nnz = int(indptr[-1])
        try:
            self._write_raw(f"{stem}.indptr", indptr, dtypes["indptr"])
            with ExitStack() as filling:
                if isinstance(indices, np.dtype):
                    indices = filling.enter_context(
                        self._filled(f"{stem}.indices", dtypes["indices"], (nnz,))
                    )
                else:
                    self._write_raw(f"{stem}.indices", indices, dtypes["indices"])
                values = filling.enter_context(self._filled(f"{stem}.data", dtype, (nnz,)))
                yield values, indices
        except BaseException:
            for suffix in dtypes:
                (self._dir / f"{stem}.{suffix}").unlink(missing_ok=True)
            raise
        self._write_sparse_sidecar(stem, dtypes, list(shape), nnz)
        self._matrices.setdefault((rows, columns), {})[prop] = "sparse"

    @contextmanager
    def _filled(self, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
        """A new zero-filled file ``name`` mapped as a writable :class:`RowsMemmap`; removed if
        the block raises."""
        path = self._dir / name
        size = prod(shape) * dtype.itemsize
        with open(path, "wb") as file:
            file.truncate(size)  # a sparse file: no disk writes until the data is written
        if not size:
            array: np.ndarray = np.zeros(shape, dtype)
            file = None
        else:
            array = RowsMemmap(path, dtype, "r+", shape=shape)
            file = open(path, "r+b", buffering=0)  # noqa: SIM115 - closed below
            array.attach(file)
        try:
            yield array  # no msync: like every other write, the data is in the page cache
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            if file is not None:
                array.attach(None)  # type: ignore[attr-defined]
                file.close()

    def _write_raw(self, name: str, array: np.ndarray, dtype: np.dtype) -> None:
        """Write ``array`` to the file ``name``; a whole read-only mapped file of a dataset is
        hard-linked instead (datasets' files are never changed in place, only replaced)."""
        source = mapped_file(array, dtype)
        if source is not None:
            try:
                os.link(source, self._dir / name)
                self.linked.add(name)
                return
            except OSError:
                pass  # another file system, or no hard links there: copy the bytes
        with open(self._dir / name, "wb", buffering=0) as file:
            write_array(file, array, dtype)

    def _write_sparse_sidecar(
        self, stem: str, dtypes: dict[str, np.dtype], shape: list[int], nnz: int
    ) -> None:
        self._write_sidecar(
            stem,
            {
                "data_dtype": dtypes["data"].name,
                "indices_dtype": dtypes["indices"].name,
                "indptr_dtype": dtypes["indptr"].name,
                "nnz": nnz,
                "shape": shape,
            },
        )

    def _write_sidecar(self, stem: str, content: dict[str, Any]) -> None:
        self._write_file(f"{stem}.yaml", sidecar_yaml({**content, "version": [1, 0]}))

    def _write_file(self, name: str, text: str) -> None:
        """Write ``text`` as the file ``name``, or link the file of that name of the dataset this
        one copies its axes from if it holds exactly these bytes (the header, an item, a sidecar
        carried unchanged: see :func:`~opchain.atomic.link_same`)."""
        target = f"{self._dir}/{name}"
        if self._like is not None and link_same(f"{self._like}/{name}", target, text.encode()):
            self.linked.add(name)
        else:
            _write_text(target, text)


def sidecar_yaml(content: dict[str, str | int | list[int]]) -> str:
    """The bytes ``yaml.safe_dump`` writes for a sidecar (block style, sorted keys), without
    PyYAML's pure-Python emitter: ~1 ms a file, and a result carrying a dozen vectors writes a
    dozen. Its values are dtype names (plain YAML words), counts and lists of counts."""
    lines = []
    for key, value in sorted(content.items()):
        if not isinstance(value, list):
            lines.append(f"{key}: {value}\n")
        elif value:
            lines.append(f"{key}:\n" + "".join(f"- {size}\n" for size in value))
        else:
            lines.append(f"{key}: []\n")
    return "".join(lines)


_SIDECAR_WORDS = frozenset(DTYPES) | frozenset(INDEX_DTYPES)


def sidecar_content(text: str) -> dict[str, Any] | None:
    """What ``yaml.safe_load`` reads from a sidecar written as :func:`sidecar_yaml` writes it
    (the only form it accepts: None for any other text), without the YAML parser: a dataset's
    vectors have a sidecar each, and PyYAML takes ~0.2 ms to parse one."""
    content: dict[str, Any] = {}
    listed: list[int] | None = None  # the list the lines "- count" add to
    for line in text.split("\n")[:-1]:
        if line.startswith("- ") and listed is not None and _is_count(line[2:]):
            listed.append(int(line[2:]))
            continue
        key, colon, value = line.partition(":")
        if not colon or key in content:
            return None
        if not value:
            content[key] = listed = []
        elif value == " []":
            content[key], listed = [], None
        elif _is_count(value[1:]):
            content[key], listed = int(value[1:]), None
        elif value[1:] in _SIDECAR_WORDS:
            content[key], listed = value[1:], None
        else:
            return None
    # Only the canonical form (sorted keys, no leading zeros, no spacing of its own) is read so.
    return content if sidecar_yaml(content) == text else None


def _is_count(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _nothing() -> None:
    """The cleanup of a non-atomic writer: what was written stays (without ``__daf__.yaml``)."""
