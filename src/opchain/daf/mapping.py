"""Low-level helpers for raw binary arrays: map them read-only, write them in bounded blocks, and
wrap memory-mapped CSR buffers in a ``scipy.sparse.csr_matrix`` without copying them.

The raw format is trivial: the elements, little-endian, in C (row-major) order, nothing else. The
dtype and shape live elsewhere (a YAML sidecar in the files store, the HDF5 dataset header in h5).
"""

from __future__ import annotations

import mmap
import os
import sys
from math import prod
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from opchain.errors import DafError

if TYPE_CHECKING:
    import scipy.sparse as sp

__all__ = [
    "BLOCK_BYTES",
    "DTYPES",
    "INDEX_DTYPES",
    "RowsMemmap",
    "check_csr",
    "check_size",
    "frozen",
    "make_csr",
    "map_file",
    "map_region",
    "mapped_file",
    "sparse",
    "write_array",
]

#: The element types of binary data, by their plain numpy names (always stored little-endian).
DTYPES: tuple[str, ...] = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
)

#: The element types allowed for the ``indices`` and ``indptr`` of a CSR matrix.
INDEX_DTYPES: tuple[str, ...] = tuple(name for name in DTYPES if name.startswith(("int", "uint")))

#: Arrays are written in blocks of at most this many bytes, so that writing a non-contiguous or
#: byte-swapped array never needs a full in-memory copy.
BLOCK_BYTES = 64 << 20


def sparse() -> Any:
    """``scipy.sparse``, imported on first use: a job on dense data never pays its ~130 ms import."""
    import scipy.sparse

    return scipy.sparse


def is_sparse(value: Any) -> bool:
    """``scipy.sparse.issparse``, without importing scipy (if nobody did, nothing is sparse)."""
    module = sys.modules.get("scipy.sparse")
    return module is not None and module.issparse(value)


def frozen(array: np.ndarray) -> np.ndarray:
    """Mark ``array`` read-only and return it."""
    array.flags.writeable = False
    return array


def map_region(
    path: str | os.PathLike[str], dtype: np.dtype, shape: tuple[int, ...], offset: int = 0
) -> np.ndarray:
    """Map ``shape`` elements of ``dtype`` at ``offset`` of the file ``path`` read-only (no copy).

    Empty arrays can't be mapped, so they come back as a read-only empty array. The caller checks
    that the file is large enough.
    """
    if prod(shape) == 0:
        return frozen(np.empty(shape, dtype=dtype))
    try:
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="C")
    except OSError as error:
        raise DafError(f"{path}: can't map the data file ({error.strerror})") from None


def map_file(path: str | os.PathLike[str], dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """Map the whole raw file ``path`` read-only, after checking its size matches ``shape``."""
    check_size(path, dtype, shape)
    return map_region(path, dtype, shape)


def check_size(path: str | os.PathLike[str], dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """Raise a :class:`DafError` unless the raw file ``path`` holds ``shape`` values of
    ``dtype``."""
    expected = prod(shape) * dtype.itemsize
    try:
        found = os.stat(path).st_size
    except OSError as error:
        raise DafError(f"{path}: can't read the data file ({error.strerror})") from None
    if found != expected:
        problem = "truncated data file" if found < expected else "data file too large"
        raise DafError(
            f"{path}: {problem}: {found} bytes, expected {expected} "
            f"(shape {list(shape)} of {dtype.name})"
        )


def write_array(file: BinaryIO, array: np.ndarray, dtype: np.dtype) -> None:
    """Write the elements of ``array`` to ``file`` (at its position) as raw ``dtype``
    (little-endian) in C order.

    A C-contiguous array of the right dtype (e.g. a memory-mapped source) is written straight from
    its buffer by ``ndarray.tofile`` (measurably faster here than ``file.write``, for the same
    bytes); anything else is converted in blocks of rows of at most :data:`BLOCK_BYTES`.
    """
    if array.size == 0:
        return
    if array.flags.c_contiguous and array.dtype == dtype:
        _tofile(array, file)
        return
    row_bytes = dtype.itemsize * prod(array.shape[1:])
    rows_per_block = max(1, BLOCK_BYTES // max(1, row_bytes))
    for start in range(0, array.shape[0], rows_per_block):
        _tofile(np.ascontiguousarray(array[start : start + rows_per_block], dtype=dtype), file)


def _tofile(array: np.ndarray, file: BinaryIO) -> None:
    """``array.tofile(file)`` for a C-contiguous array. Its short write (a full disk) says only "N
    requested and M written"; the rest is then written through ``file``, which completes it or
    raises the cause (no space left, quota exceeded) as an OSError with its errno."""
    start = file.tell()
    try:
        array.tofile(file)
    except OSError as error:
        if error.errno is not None:
            raise
        rest = memoryview(array).cast("B")[file.tell() - start :]
        while rest:
            rest = rest[file.write(rest) :]


def mapped_file(array: np.ndarray, dtype: np.dtype) -> str | None:
    """The file that the read-only map ``array`` covers whole, byte for byte as ``dtype`` is
    stored, or ``None`` (not a map, a view of one, another dtype, or part of a file)."""
    if not (
        isinstance(array, np.memmap)
        and isinstance(array.base, mmap.mmap)  # the map itself, not a view with a stale offset
        and array.mode == "r"
        and array.offset == 0
        and array.dtype == dtype
        and array.flags.c_contiguous
        and array.filename
    ):
        return None
    try:
        return array.filename if os.path.getsize(array.filename) == array.nbytes else None
    except OSError:
        return None


class RowsMemmap(np.memmap):
    """A writable memory-mapped row-major array, as yielded by ``create_dense_in_rows`` (a matrix),
    ``create_sparse_values`` and ``create_sparse_in_rows`` (vectors).

    It is an ordinary ``numpy.memmap``, except that while its writer is open, assigning whole
    rows (``m[i:j] = block`` or ``m[i] = row``, with a block of exactly that shape) writes the bytes
    to the file itself. That is the same file and the same page cache the mapping shows, so reads
    through the mapping see the data at once; it only avoids a page fault per written page (about
    3x faster here for large matrices). Other assignments go through the mapping.
    """

    def __setitem__(self, key: Any, value: Any) -> None:
        file = self.__dict__.get("_daf_file")  # set on the writer's own array only, not on views
        if file is not None:
            rows = _whole_rows(key, self.shape[0])
            if rows is not None:
                block = np.asarray(value)
                expected = (rows[1] - rows[0], *self.shape[1:])
                if block.shape == expected or (
                    block.shape == expected[1:] and not isinstance(key, slice)
                ):
                    row_bytes = prod(self.shape[1:]) * self.dtype.itemsize
                    file.seek(self.__dict__["_daf_offset"] + rows[0] * row_bytes)
                    write_array(file, block.reshape(expected), self.dtype)
                    return
        super().__setitem__(key, value)

    def attach(self, file: BinaryIO | None, offset: int = 0) -> None:
        """Write whole rows through ``file`` (open on the data, where the array starts at
        ``offset``), or stop doing so (``None``)."""
        self.__dict__["_daf_file"] = file
        self.__dict__["_daf_offset"] = offset


def _whole_rows(key: Any, count: int) -> tuple[int, int] | None:
    if isinstance(key, int | np.integer) and not isinstance(key, bool):
        index = int(key) + (count if key < 0 else 0)
        return (index, index + 1) if 0 <= index < count else None
    if isinstance(key, slice) and key.step in (None, 1):
        start, stop, _ = key.indices(count)
        return (start, max(start, stop))
    return None


def make_csr(
    data: np.ndarray,
    indices: np.ndarray,
    indptr: np.ndarray,
    shape: tuple[int, int],
    names: dict[str, str],
    checked: bool = False,
) -> sp.csr_matrix:
    """Wrap CSR buffers (typically memory-mapped) in a ``csr_matrix`` without copying them, after
    :func:`check_csr` (``names`` names the ``data``, ``indices`` and ``indptr`` files in errors)
    unless they are known to pass it (``checked``: the same files passed it before).

    ``scipy``'s constructor copies ``int64`` indices whose values fit in ``int32`` (and reads them
    all to find out), so for ``int32``/``int64`` indices the buffers are attached to an empty
    matrix instead. Other index dtypes go through the constructor (which converts them).
    """
    if not checked:
        check_csr(data, indices, indptr, shape, names)
    if data.dtype == np.float16:
        raise DafError(f"{names['data']}: float16 sparse data (scipy.sparse does not support it)")
    if indices.dtype.name not in ("int32", "int64") or indptr.dtype != indices.dtype:
        return sparse().csr_matrix((data, indices, indptr), shape=shape)
    matrix = sparse().csr_matrix(
        (np.empty(0, data.dtype), np.empty(0, indices.dtype), np.zeros(1, indices.dtype)),
        shape=(0, shape[1]),
    )
    matrix.data = data
    matrix.indices = indices
    matrix.indptr = indptr
    matrix._shape = (int(shape[0]), int(shape[1]))
    return matrix


def check_csr(
    data: np.ndarray,
    indices: np.ndarray,
    indptr: np.ndarray,
    shape: tuple[int, int],
    names: dict[str, str],
) -> None:
    """Raise a :class:`DafError` naming the file unless the buffers are a valid CSR structure.

    Worth one vectorized pass over ``indptr`` and ``indices`` (memory-mapped, so this is the only
    full read until the data is used): scipy trusts them, so a decreasing ``indptr`` silently gives
    wrong rows, and a pointer or column index out of range gives an ``IndexError`` deep inside an
    operation, or corrupts memory.
    """
    nnz = data.shape[0]
    if indices.shape[0] != nnz:
        raise DafError(f"{names['indices']}: {indices.shape[0]} entries, but nnz is {nnz}")
    if indptr.shape[0] != shape[0] + 1:
        raise DafError(
            f"{names['indptr']}: {indptr.shape[0]} entries, expected {shape[0] + 1} (rows + 1)"
        )
    if int(indptr[0]) != 0:
        raise DafError(f"{names['indptr']}: indptr starts at {int(indptr[0])}, expected 0")
    if int(indptr[-1]) != nnz:
        raise DafError(f"{names['indptr']}: indptr ends at {int(indptr[-1])}, expected nnz {nnz}")
    # A comparison, not np.diff: differences of unsigned pointers wrap around instead of going < 0.
    decreases = indptr[1:] < indptr[:-1]
    if decreases.any():
        raise DafError(f"{names['indptr']}: indptr decreases at row {int(decreases.argmax())}")
    # Viewed as unsigned, a negative index is huge: one max() checks both ends of the range.
    unsigned = indices.view(indices.dtype.str.replace("i", "u"))
    if nnz and int(unsigned.max()) >= shape[1]:
        bad = int(np.flatnonzero(unsigned >= shape[1])[0])
        raise DafError(
            f"{names['indices']}: column index {int(indices[bad])} at position {bad} is out of "
            f"the range [0, {shape[1]})"
        )
