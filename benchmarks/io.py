"""Write and read throughput of the daf stores, against the physical limit and common formats.

Usage: ``python benchmarks/io.py [--gib 1] [--repeat 3] [--dir /tmp]``

Two matrices, each about ``--gib`` GiB (default 1):

* a dense float32 matrix (16384 x 16384 for 1 GiB), and
* a CSR float32 matrix of 1% density with int32 indices (data + indices about ``--gib`` GiB).

Each is written and then fully read by:

* raw ``ndarray.tofile`` / ``np.fromfile``: the physical limit here;
* ``np.save`` / ``np.load`` (``scipy.sparse.save_npz(compressed=False)`` / ``load_npz`` for CSR);
* a plain h5py dataset (a group of three datasets for CSR);
* zarr, uncompressed (``compressors=None``; compressing random floats only adds CPU time), with
  chunks of whole rows;
* opchain files (``FilesWriter.set_data2d``, and ``create_dense_in_rows`` filled in row blocks);
* opchain HDF5 (``H5Writer.set_data2d``).

"write" is the time of the writing calls up to the closed, complete dataset (the page cache
absorbs the data; nobody fsyncs). Before the "cold" read, every file of the output is fsynced and
evicted from the page cache (``posix_fadvise(DONTNEED)``, no root needed); the "warm" read follows
right after. A "full read" is opening the data and summing every element (plus the indices for
CSR), so lazily memory-mapped stores pay for touching every page. The contenders run round-robin
``--repeat`` times (interference from the rest of the machine is spread over all of them); each
number is the best run, with the median in parentheses. "x raw" is the time relative to raw.
Before each timed operation the benchmark touches and frees as much memory as it will need (see
``prime``), because this virtual machine returns freed memory to its host and the first touch of
such memory costs about 2 s/GiB, landing on whichever method allocates first after a pause.

Then the time to open a matrix larger than half of the machine's memory and read one row (cold),
compared with smaller matrices. That matrix is made without writing it: ``create_dense_in_rows``
creates its data file with ``truncate`` (a sparse file: size without disk blocks) and only one row
is written, so it costs no disk space or write time; the HDF5 store allocates the dataset without
filling it (``fill_time="never"``), which HDF5 also does by extending the file. The raw reference
is ``np.memmap`` of a truncated file.

Everything is written under ``--dir`` and deleted at the end.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.sparse as sp
import zarr

from opchain.daf import FilesWriter, H5Writer, open_reader

GIB = 1 << 30
ROW_BLOCK_BYTES = 64 << 20


def evict(path: Path) -> None:
    """Flush ``path`` (a file or a tree) to disk and drop it from the page cache."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def prime(nbytes: int) -> None:
    """Touch and free ``nbytes`` of memory, so that the next timed operation finds free memory the
    guest kernel already holds: this VM hands freed memory back to its host, and the first touch of
    such memory costs about 2 s/GiB, which would otherwise land on whichever method allocates
    first after a pause."""
    scratch = np.ones(nbytes, dtype=np.uint8)
    del scratch


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def touch(data: Any) -> float:
    """Read every element (and every index of a sparse matrix)."""
    if sp.issparse(data):
        return float(data.data.sum()) + float(data.indices.sum()) + float(data.indptr[-1])
    return float(np.asarray(data).sum())


# The contenders: write(path, matrix) and read(path) -> something touch() accepts ------------------


@functools.cache
def entries(prefix: str, count: int) -> tuple[str, ...]:
    """Axis entry names, made once per size (run_matrix makes them before timing anything): the
    axes are input data the caller already has, writing them is the store's work."""
    return tuple(f"{prefix}{i}" for i in range(count))


def create_axes(writer: Any, rows: int, cols: int) -> None:
    writer.create_axis("row", entries("r", rows))
    writer.create_axis("col", entries("c", cols))


def daf_fill(writer: Any, matrix: Any) -> None:
    create_axes(writer, *matrix.shape)
    writer.set_data2d("row,col#x", matrix)


def daf_blocks(writer: Any, matrix: np.ndarray) -> None:
    create_axes(writer, *matrix.shape)
    step = max(1, ROW_BLOCK_BYTES // (matrix.shape[1] * matrix.itemsize))
    with writer.create_dense_in_rows("row,col#x", dtype=matrix.dtype) as target:
        for start in range(0, matrix.shape[0], step):
            target[start : start + step] = matrix[start : start + step]


def write_daf_files(path: Path, matrix: Any) -> None:
    with FilesWriter(path) as writer:
        daf_fill(writer, matrix)


def write_daf_files_blocks(path: Path, matrix: Any) -> None:
    with FilesWriter(path) as writer:
        daf_blocks(writer, matrix)


def write_daf_h5(path: Path, matrix: Any) -> None:
    with H5Writer(path) as writer:
        daf_fill(writer, matrix)


def read_daf(path: Path) -> float:
    with open_reader(path) as reader:
        return touch(reader.get_data2d("row,col#x"))


def write_raw(path: Path, matrix: Any) -> None:
    path.mkdir()
    if sp.issparse(matrix):
        for part in ("data", "indices", "indptr"):
            getattr(matrix, part).tofile(path / part)
    else:
        matrix.tofile(path / "x")


def read_raw(path: Path, like: Any) -> float:
    if sp.issparse(like):
        parts = [np.fromfile(path / p, dtype=getattr(like, p).dtype) for p in ("data", "indices")]
        indptr = np.fromfile(path / "indptr", dtype=like.indptr.dtype)
        return touch(sp.csr_matrix((parts[0], parts[1], indptr), shape=like.shape))
    return touch(np.fromfile(path / "x", dtype=like.dtype).reshape(like.shape))


def write_numpy(path: Path, matrix: Any) -> None:
    if sp.issparse(matrix):
        sp.save_npz(path, matrix, compressed=False)
    else:
        np.save(path, matrix)


def read_numpy(path: Path, like: Any) -> float:
    if sp.issparse(like):
        return touch(sp.load_npz(path))
    return touch(np.load(path))


def write_h5py(path: Path, matrix: Any) -> None:
    with h5py.File(path, "w") as file:
        if sp.issparse(matrix):
            for part in ("data", "indices", "indptr"):
                file.create_dataset(part, data=getattr(matrix, part))
        else:
            file.create_dataset("x", data=matrix)


def read_h5py(path: Path, like: Any) -> float:
    with h5py.File(path, "r") as file:
        if sp.issparse(like):
            parts = [file[part][()] for part in ("data", "indices", "indptr")]
            return touch(sp.csr_matrix(tuple(parts), shape=like.shape))
        return touch(file["x"][()])


def write_zarr(path: Path, matrix: Any) -> None:
    if sp.issparse(matrix):
        group = zarr.open_group(path, mode="w")
        for part in ("data", "indices", "indptr"):
            array = getattr(matrix, part)
            chunk = max(1, min(array.size, 16 << 20))
            target = group.create_array(
                part, shape=array.shape, dtype=array.dtype, chunks=(chunk,), compressors=None
            )
            target[:] = array
    else:
        rows = max(1, ROW_BLOCK_BYTES // (matrix.shape[1] * matrix.itemsize))
        target = zarr.create_array(
            store=path,
            shape=matrix.shape,
            dtype=matrix.dtype,
            chunks=(rows, matrix.shape[1]),
            compressors=None,
        )
        target[:] = matrix


def read_zarr(path: Path, like: Any) -> float:
    if sp.issparse(like):
        group = zarr.open_group(path, mode="r")
        parts = [group[part][:] for part in ("data", "indices", "indptr")]
        return touch(sp.csr_matrix(tuple(parts), shape=like.shape))
    return touch(zarr.open_array(store=path, mode="r")[:])


CONTENDERS: list[tuple[str, str, Callable[[Path, Any], None], Callable[[Path, Any], float]]] = [
    ("raw tofile/fromfile", "raw", write_raw, read_raw),
    ("np.save/np.load", "npy", write_numpy, read_numpy),
    ("h5py dataset", "h5py.h5", write_h5py, read_h5py),
    ("zarr (uncompressed)", "zarr", write_zarr, read_zarr),
    ("opchain files", "files", write_daf_files, lambda path, _: read_daf(path)),
    ("opchain files, in rows", "rows", write_daf_files_blocks, lambda path, _: read_daf(path)),
    ("opchain HDF5", "daf.h5", write_daf_h5, lambda path, _: read_daf(path)),
]


def run_matrix(title: str, matrix: Any, folder: Path, repeat: int) -> None:
    """Round-robin over the contenders ``repeat`` times (interference from the rest of the machine
    is spread over all of them), then print the best time of each."""
    sparse = sp.issparse(matrix)
    parts = (matrix.data, matrix.indices, matrix.indptr) if sparse else (matrix,)
    gib = sum(part.nbytes for part in parts) / GIB
    expected = touch(matrix)
    for prefix, count in zip("rc", matrix.shape, strict=True):
        entries(prefix, count)  # made now, outside every timed write
    contenders = [c for c in CONTENDERS if not (sparse and c[1] == "rows")]
    times: dict[str, list[list[float]]] = {name: [[], [], []] for name, *_ in contenders}
    for _ in range(repeat):
        for name, suffix, write, read in contenders:
            if suffix == "npy":
                path = folder / ("x.npz" if sparse else "x.npy")  # the names numpy insists on
            else:
                path = folder / f"x.{suffix}"
            os.sync()  # start from a quiet page cache
            prime(int(2.2 * gib * GIB))
            start = time.perf_counter()
            write(path, matrix)
            written = time.perf_counter() - start
            evict(path)
            prime(int(2.2 * gib * GIB))
            start = time.perf_counter()
            checksum = read(path, matrix)
            cold = time.perf_counter() - start
            prime(int(1.1 * gib * GIB))
            start = time.perf_counter()
            read(path, matrix)
            warm = time.perf_counter() - start
            assert math.isclose(checksum, expected, rel_tol=1e-3), name
            remove(path)
            for where, value in zip(times[name], (written, cold, warm), strict=True):
                where.append(value)
    print(f"\n{title}: {gib:.2f} GiB; best of {repeat} (median in parentheses)")
    print(
        f"{'method':<24} {'write s':>13} {'GiB/s':>6} {'x raw':>6}   "
        f"{'cold read s':>13} {'GiB/s':>6} {'x raw':>6}   {'warm read s':>13} {'GiB/s':>6}"
    )
    raw = [min(series) for series in times[contenders[0][0]]]
    for name, *_ in contenders:
        cells = []
        for index, series in enumerate(times[name]):
            best_time, median = min(series), sorted(series)[len(series) // 2]
            cell = f"{best_time:6.2f} ({median:4.2f}) {gib / best_time:6.2f}"
            if index < 2:
                cell += f" {best_time / raw[index]:6.2f}"
            cells.append(cell)
        print(f"{name:<24} " + "   ".join(cells))


def make_huge(path: Path, rows: int, cols: int, store: str) -> None:
    """A float32 rows x cols daf matrix whose data is a sparse file: only row 1 is written."""
    with (FilesWriter if store == "files" else H5Writer)(path) as writer:
        create_axes(writer, rows, cols)
        with writer.create_dense_in_rows("row,col#x", dtype="float32") as matrix:
            matrix[1] = np.arange(cols, dtype="float32")


def open_then_row(path: Path, open_matrix: Callable[[Path], Any]) -> tuple[float, float]:
    """Seconds to open the matrix (cold), then to read its row 1."""
    evict(path)
    start = time.perf_counter()
    matrix = open_matrix(path)
    opened = time.perf_counter() - start
    row = np.array(matrix[1])
    read = time.perf_counter() - start - opened
    assert row[-1] == len(row) - 1
    return opened, read


def open_daf(path: Path) -> Any:
    return open_reader(path).get_data2d("row,col#x")


def run_open(folder: Path, repeat: int) -> None:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    huge = math.ceil(math.sqrt(0.6 * memory / 4))  # a square float32 matrix of 60% of the memory
    print(f"\nopen a float32 matrix, then read one row, cold; memory: {memory / GIB:.1f} GiB")
    print("(best of", repeat, "; milliseconds)")
    print(
        f"{'matrix':<22} {'GiB':>6}   {'raw open':>8} {'row':>6}   {'files open':>10} {'row':>6}"
        f"   {'HDF5 open':>9} {'row':>6}"
    )
    for side in (512, 16384, huge):
        nbytes = side * side * 4
        raw_path = folder / "raw.bin"
        with open(raw_path, "wb") as file:
            file.truncate(nbytes)  # a sparse file, as create_dense_in_rows makes
            file.seek(side * 4)
            file.write(np.arange(side, dtype="float32").tobytes())
        paths = [raw_path, folder / "x.files", folder / "x.h5"]
        make_huge(paths[1], side, side, "files")
        make_huge(paths[2], side, side, "h5")
        data_file = paths[1] / "row,col#x.array"
        assert data_file.stat().st_blocks * 512 < nbytes // 2 + (1 << 20)  # mostly holes
        openers = [
            lambda p, side=side: np.memmap(p, "float32", "r", shape=(side, side)),
            open_daf,
            open_daf,
        ]
        cells = []
        for path, opener in zip(paths, openers, strict=True):
            runs = [open_then_row(path, opener) for _ in range(repeat)]
            cells.append(
                f"{min(r[0] for r in runs) * 1e3:8.2f} {min(r[1] for r in runs) * 1e3:6.2f}"
            )
            remove(path)
        print(f"{side:>9} x {side:<10} {nbytes / GIB:6.2f}   " + "   ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of each matrix (GiB)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per number (the best counts)")
    parser.add_argument("--dir", default="/tmp", help="where to write (deleted afterwards)")
    parser.add_argument("--skip-open", action="store_true", help="skip opening a huge matrix")
    options = parser.parse_args()

    rng = np.random.default_rng(0)
    folder = Path(tempfile.mkdtemp(prefix="opchain-io-", dir=options.dir))
    try:
        side = int(math.sqrt(options.gib * GIB / 4))
        dense = rng.random((side, side), dtype=np.float32)
        run_matrix(f"dense float32 {side} x {side}", dense, folder, options.repeat)
        del dense

        # 1% density, int32 indices: 8 bytes per non-zero; every row holds `per_row` values, at a
        # random offset then every 100 columns (sorted, canonical, cheap to generate).
        cols = 100_000
        per_row = cols // 100
        rows = max(1, int(options.gib * GIB / 8 / per_row))
        offsets = rng.integers(0, 100, size=rows, dtype=np.int32)
        indices = (offsets[:, None] + np.arange(0, cols, 100, dtype=np.int32)[None, :]).reshape(-1)
        data = rng.random(indices.size, dtype=np.float32)
        indptr = np.arange(0, indices.size + 1, per_row, dtype=np.int32)
        csr = sp.csr_matrix((data, indices, indptr), shape=(rows, cols))
        run_matrix(f"CSR float32 {rows} x {cols}, 1% dense", csr, folder, options.repeat)
        del csr, data, indices, indptr

        if not options.skip_open:
            run_open(folder, options.repeat)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
