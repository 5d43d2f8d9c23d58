"""The built-in operations: preprocessing, projection, random splits and two evaluations.

Each operation reads one matrix, named ``rows,columns#property`` by its ``matrix`` parameter, and
writes a dataset that keeps the input's items, axes and 1D data (so labels flow down the chain) plus
its own matrix. Dense matrices are processed in row blocks, and sparse (CSR) ones in blocks of rows
of about 64 MiB of non-zeros (only their values are new: the structure is the input's), each
written while the next is computed; subsets (:func:`take_matrix`) are written block by block, and
axes and properties go file to file, so data larger than memory streams through; pca past 4,096
columns keeps columns x components, not columns^2.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from opchain import verify
from opchain.daf.mapping import is_sparse
from opchain.errors import OpchainError
from opchain.operations import Context, operation
from opchain.report import new_figure

BLOCK_BYTES = 64 << 20  # row blocks of about 64 MiB keep memory flat whatever the matrix size
#: The arithmetic of a block goes a piece of about this many values at a time, so that its
#: temporaries stay in the CPU's cache (a pass over 64 MiB costs several times a pass in cache).
PIECE_VALUES = 1 << 16
SUM_PIECES = 8  # pieces whose column sums one thread adds up before they join the total

MATRIX = {
    "type": "string",
    "pattern": "^[^,#/]+,[^,#/]+#[^/]+$",
    "description": "the input matrix, as rows,columns#property",
    "examples": ["cell,gene#UMIs"],
}
AXIS = {
    "type": "string",
    "pattern": "^[^,#/]+$",
    "description": "an axis name",
    "examples": ["cell"],
}
VECTOR = {
    "type": "string",
    "pattern": "^[^,#/]+#[^/]+$",
    "description": "a vector, as axis#property",
    "examples": ["cell#type"],
}


def split_matrix_name(name: str) -> tuple[str, str, str]:
    axes, prop = name.split("#", 1)
    rows, columns = axes.split(",", 1)
    return rows, columns, prop


def carry(data: Any, out: Any, *, rows: str | None = None, take: np.ndarray | None = None) -> None:
    """Copy axes, 1D data and items to ``out``; with ``take``, keep only those entries of ``rows``.
    Axes first: a files writer then links the files it would write the same (items, sidecars)."""
    for axis in data.axis_names():
        keep = take if axis == rows else None
        out.copy_axis(data, axis, keep)
        for vector in data.data1d_names(axis):
            out.copy_data1d(data, vector, keep)
    for name in data.item_names():
        out.copy_item(data, name)


def row_blocks(n_rows: int, n_columns: int, budget: int | None = None) -> Iterator[slice]:
    """Row ranges of about ``budget`` bytes (BLOCK_BYTES) of float64 values (one row at least)."""
    step = max(1, (budget or BLOCK_BYTES) // max(1, 8 * n_columns))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def dense_rows(matrix: Any, rows: slice | np.ndarray) -> np.ndarray:
    block = matrix[rows]
    return block.toarray() if is_sparse(block) else np.asarray(block)


def matrix_blocks(matrix: Any) -> Iterator[slice]:
    """Row blocks of about BLOCK_BYTES: of dense values, or of a CSR matrix's non-zeros."""
    return sparse_row_blocks(matrix.indptr) if is_sparse(matrix) else row_blocks(*matrix.shape)


def group_codes(data: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of the vector ``name`` as sorted strings, and the position of each
    entry's value among them, from the vector's pieces: never a string per entry in memory."""
    index: dict[str, int] = {}
    codes = []
    for piece in data.data1d_chunks(name):
        labels, local = np.unique(np.asarray(piece).astype(str), return_inverse=True)
        found = [index.setdefault(label, len(index)) for label in labels.tolist()]
        codes.append(np.array(found, np.int64)[local.reshape(-1)])
    labels = np.array(list(index), dtype=str)
    order = np.argsort(labels)
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return labels[order], rank[np.concatenate(codes)] if codes else np.zeros(0, np.int64)


def group_sums(matrix: Any, groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the float64 sum of the rows of ``matrix`` in it (``groups``: each row's
    group, -1 for none) and their number, a block at a time (sparse blocks stay sparse)."""
    import scipy.sparse as sp  # here, not at the top: a job that never groups does not pay for it

    sums = np.zeros((n_groups, matrix.shape[1]))
    for rows in matrix_blocks(matrix):
        member = groups[rows]
        picked = np.flatnonzero(member >= 0)
        shape = (n_groups, len(member))
        indicator = sp.csr_matrix((np.ones(len(picked)), (member[picked], picked)), shape=shape)
        block = matrix[rows]
        sums += np.asarray((indicator @ block).toarray() if is_sparse(block) else indicator @ block)
    return sums, np.bincount(groups[groups >= 0], minlength=n_groups)


def squared_distances(matrix: Any, centers: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """Each row block and its rows' squared distances to each of ``centers`` (a block's
    rows x centers x columns differences stay within BLOCK_BYTES)."""
    n_rows, n_columns = matrix.shape
    for rows in row_blocks(n_rows, n_columns * len(centers)):
        block = dense_rows(matrix, rows).astype(np.float64)
        yield rows, ((block[:, None, :] - centers[None]) ** 2).sum(axis=2)


def nearest(matrix: Any, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest centroid and squared distance to it, a block at a time."""
    assignment = np.zeros(matrix.shape[0], np.int64)
    distance = np.zeros(matrix.shape[0])
    for rows, squares in squared_distances(matrix, centroids):
        assignment[rows] = squares.argmin(axis=1)
        distance[rows] = squares.min(axis=1)
    return assignment, distance


def column_moments(matrix: Any, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations in one streaming pass (float64 accumulators); a
    dense block's pieces are summed ``threads`` runs at once."""
    n_rows, n_columns = matrix.shape
    total = np.zeros(n_columns)
    squares = np.zeros(n_columns)
    for rows in matrix_blocks(matrix):  # a sparse block stays sparse
        block = matrix[rows]
        if is_sparse(block):
            block = block.astype(np.float64)
            total += np.asarray(block.sum(axis=0)).ravel()
            squares += np.asarray(block.multiply(block).sum(axis=0)).ravel()
            continue
        pieces = list(row_blocks(len(block), n_columns, 8 * PIECE_VALUES))  # each in cache
        # Sums of runs of SUM_PIECES pieces (a thread's unit), added up in row order: the same
        # bytes at any thread count, and a block's partial sums a fraction of the block.
        runs = [pieces[at : at + SUM_PIECES] for at in range(0, len(pieces), SUM_PIECES)]
        sums = np.zeros((len(runs), 2, n_columns))

        def add_up(i: int, block=block, runs=runs, sums=sums) -> None:
            for piece in runs[i]:
                wide = block[piece].astype(np.float64)
                sums[i, 0] += wide.sum(axis=0)
                sums[i, 1] += np.square(wide, out=wide).sum(axis=0)

        each_piece(range(len(runs)), add_up, threads)
        for run_total, run_squares in sums:
            total += run_total
            squares += run_squares
    mean = total / max(n_rows, 1)
    std = np.sqrt(np.maximum(squares / max(n_rows, 1) - np.square(mean), 0.0))
    return mean, std


def sparse_row_blocks(indptr: np.ndarray, per_block: int | None = None) -> Iterator[slice]:
    """Row ranges of a CSR matrix holding about ``per_block`` (BLOCK_BYTES / 8) non-zeros each
    (one row at least)."""
    per_block = max(1, per_block or BLOCK_BYTES // 8)
    start, n_rows = 0, len(indptr) - 1
    while start < n_rows:
        stop = int(np.searchsorted(indptr, indptr[start] + per_block, side="right")) - 1
        stop = min(n_rows, max(stop, start + 1))
        yield slice(start, stop)
        start = stop


class Buffers:
    """Two output buffers used in turn and grown as needed: block ``i`` is computed into one while
    block ``i - 1`` is written from the other (see :func:`write_behind`), and no block needs fresh
    memory (fresh pages cost more than the arithmetic of the cheap steps)."""

    def __init__(self, dtype: Any) -> None:
        self.dtype = np.dtype(dtype)
        self.memory = [np.empty(0, self.dtype), np.empty(0, self.dtype)]

    def take(self, i: int, shape: tuple[int, ...]) -> np.ndarray:
        size = int(np.prod(shape))
        if self.memory[i % 2].size < size:
            self.memory[i % 2] = np.empty(size, self.dtype)
        return self.memory[i % 2][:size].reshape(shape)


def each_piece(pieces: Iterable[Any], work: Callable[[Any], Any], threads: int = 1) -> None:
    """Call ``work`` on every piece; with several ``threads``, each takes a contiguous run of
    them at once (numpy's arithmetic releases the GIL). Pieces are cut by the data, never by the
    thread count, so the results are the same bytes at any count."""
    pieces = list(pieces)
    runs = max(1, min(threads, len(pieces)))
    bounds = [len(pieces) * i // runs for i in range(runs + 1)]

    def run(i: int) -> None:
        for piece in pieces[bounds[i] : bounds[i + 1]]:
            work(piece)

    if runs < 2:
        run(0)
        return
    with ThreadPoolExecutor(runs - 1) as helpers:
        others = [helpers.submit(run, i) for i in range(1, runs)]
        run(0)
        for done in others:
            done.result()


def write_behind(target: np.ndarray, blocks: Iterable[tuple[slice, np.ndarray]]) -> None:
    """Assign each ``(rows, block)`` to ``target``, writing a block in a helper thread while the
    next one is computed (a write is a system call and numpy arithmetic releases the GIL, so the
    two overlap), and hashing it in another (see :class:`RunningDigest`). At most one write and
    one hash are in flight: a block may reuse the memory of the one before the previous one (see
    :class:`Buffers`). A single block is written here: nothing to overlap, and a thread costs a
    small dataset more than its write."""
    digest = RunningDigest(target)
    blocks = iter(blocks)
    head = list(itertools.islice(blocks, 2))
    if len(head) < 2:
        for rows, block in head:
            target[rows] = block
            digest.add(rows, block)
    else:
        with ThreadPoolExecutor(2) as helpers:
            pending: list[Future[None]] = []
            for rows, block in itertools.chain(head, blocks):
                for done in pending:
                    done.result()
                pending = [
                    helpers.submit(target.__setitem__, rows, block),
                    helpers.submit(digest.add, rows, block),
                ]
            for done in pending:
                done.result()
    digest.finish()


class RunningDigest:
    """The digest of the file that ``target`` maps whole, taken from the blocks assigned to it
    while they come in row order with its dtype (the bytes its file gets), and remembered
    (:func:`opchain.verify.remember`) when every row came so: the job then need not read the
    file back to hash it. Anything else (a region of a file, rows out of order) leaves it
    unknown."""

    def __init__(self, target: Any) -> None:
        whole_file = isinstance(target, np.memmap) and target.offset == 0 and target.filename
        self.target = target
        self.next_row = 0 if whole_file and target.dtype.isnative else -1
        self.hash = verify.new_hash()

    def add(self, rows: slice, block: np.ndarray) -> None:
        in_order = (
            rows.start == self.next_row
            and block.dtype == self.target.dtype
            and block.flags.c_contiguous
            and block.shape == (rows.stop - rows.start, *self.target.shape[1:])
        )
        if not in_order:
            self.next_row = -1
            return
        self.hash.update(block)  # hashlib releases the GIL: this runs beside the arithmetic
        self.next_row = rows.stop

    def finish(self) -> None:
        if self.next_row < 0 or self.next_row != len(self.target):
            return
        if os.path.getsize(self.target.filename) == self.target.nbytes:
            verify.remember(self.target.filename, self.hash.hexdigest())


def map_sparse_values(
    ctx: Context,
    name: str,
    matrix: Any,
    values_of: Callable[[np.ndarray, np.ndarray, np.ndarray], Any],
    dtype: Any = np.float32,
) -> None:
    """Write ``name``: a CSR matrix with the structure of ``matrix`` (linked or copied, never
    recomputed) whose values ``values_of(values, nonzeros_per_row, into)`` puts into ``into``,
    for pieces of whole rows of about PIECE_VALUES non-zeros, ``ctx.threads`` pieces at once."""
    indptr = matrix.indptr
    buffers = Buffers(dtype)

    def blocks() -> Iterator[tuple[slice, np.ndarray]]:
        for i, rows in enumerate(sparse_row_blocks(indptr)):
            low, high = int(indptr[rows.start]), int(indptr[rows.stop])
            pointers = np.asarray(indptr[rows.start : rows.stop + 1], np.int64) - low
            values = np.asarray(matrix.data[low:high]).view(np.ndarray)  # no memmap per piece
            into = buffers.take(i, (high - low,))

            def compute(piece: slice, pointers=pointers, values=values, into=into) -> None:
                start, stop = int(pointers[piece.start]), int(pointers[piece.stop])
                counts = np.diff(pointers[piece.start : piece.stop + 1])
                values_of(values[start:stop], counts, into[start:stop])

            each_piece(sparse_row_blocks(pointers, PIECE_VALUES), compute, ctx.threads)
            yield slice(low, high), into

    with ctx.output.create_sparse_values(name, matrix, dtype) as target:
        write_behind(target, blocks())


def map_rows(
    ctx: Context,
    name: str,
    matrix: Any,
    transform: Callable[[np.ndarray, np.ndarray], Any],
    dtype: Any = np.float32,
) -> None:
    """Write the dense ``name``: ``transform(rows, into)`` puts into ``into`` the new values of
    ``rows`` of ``matrix`` (dense or sparse), pieces of whole rows of about PIECE_VALUES values,
    ``ctx.threads`` pieces at once."""
    buffers = Buffers(dtype)
    n_columns = matrix.shape[1]

    def blocks() -> Iterator[tuple[slice, np.ndarray]]:
        for i, rows in enumerate(row_blocks(*matrix.shape)):
            into = buffers.take(i, (rows.stop - rows.start, n_columns))
            block = dense_rows(matrix, rows).view(np.ndarray)

            def compute(piece: slice, block=block, into=into) -> None:
                transform(block[piece], into[piece])

            each_piece(row_blocks(len(block), n_columns, 8 * PIECE_VALUES), compute, ctx.threads)
            yield rows, into

    write_rows(ctx.output, name, blocks(), dtype)


def write_csr(
    out: Any,
    name: str,
    indptr: np.ndarray,
    dtype: Any,
    blocks: Iterable[tuple[np.ndarray, np.ndarray]],
) -> None:
    """Write the CSR ``name`` with row pointers ``indptr``, its values and column indices given
    block after block (rows in order) straight into storage, so that no more than a block is in
    memory whatever the size."""
    with out.create_sparse_in_rows(name, indptr, dtype) as (values, indices):
        low = 0
        for block_values, block_indices in blocks:
            high = low + len(block_values)
            values[low:high] = block_values
            indices[low:high] = block_indices
            low = high


def take_matrix(
    out: Any,
    name: str,
    matrix: Any,
    rows: np.ndarray | None = None,
    columns: np.ndarray | None = None,
) -> None:
    """Write ``name``: ``matrix`` restricted to the increasing positions ``rows`` and ``columns``
    (``None``: all of them), dense or sparse as it is, one block of rows at a time."""
    if rows is None and columns is None:
        out.set_data2d(name, matrix)
    elif is_sparse(matrix):
        take_sparse(out, name, matrix, rows, columns)
    elif matrix.dtype == object:  # strings: no file to map them onto
        part = matrix if rows is None else matrix[rows]
        out.set_data2d(name, part if columns is None else part[:, columns])
    else:
        n_rows = matrix.shape[0] if rows is None else len(rows)

        def blocks() -> Iterator[tuple[slice, np.ndarray]]:
            for block in row_blocks(n_rows, matrix.shape[1]):
                part = np.asarray(matrix[block if rows is None else rows[block]])
                yield block, part if columns is None else part[:, columns]

        write_rows(out, name, blocks(), matrix.dtype)


def take_sparse(
    out: Any, name: str, matrix: Any, rows: np.ndarray | None, columns: np.ndarray | None
) -> None:
    """:func:`take_matrix` of a CSR matrix, in two passes when columns go (count, then fill)."""
    indptr = np.asarray(matrix.indptr)
    picked = np.arange(matrix.shape[0]) if rows is None else rows
    lengths = indptr[picked + 1] - indptr[picked]
    blocks = list(sparse_row_blocks(np.concatenate(([0], np.cumsum(lengths)))))
    renumber = None
    if columns is not None:
        renumber = np.full(matrix.shape[1], -1, np.int64)
        renumber[columns] = np.arange(len(columns))

    def taken(block: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The values, new column indices and per-row counts of the picked rows in ``block``."""
        starts, counts = indptr[picked[block]], lengths[block]
        firsts = np.cumsum(counts) - counts
        positions = np.repeat(starts - firsts, counts) + np.arange(counts.sum())
        values, indices = matrix.data[positions], matrix.indices[positions]
        if renumber is None:
            return values, indices, counts
        new = renumber[indices]
        kept = new >= 0
        rows_of = np.repeat(np.arange(len(counts)), counts)[kept]
        return values[kept], new[kept], np.bincount(rows_of, minlength=len(counts))

    out_lengths = lengths
    if renumber is not None:
        out_lengths = np.concatenate([taken(block)[2] for block in blocks] or [lengths])
    indptr_out = np.concatenate(([0], np.cumsum(out_lengths)))
    write_csr(out, name, indptr_out, matrix.dtype, (taken(block)[:2] for block in blocks))


def write_rows(
    out: Any, name: str, blocks: Iterable[tuple[slice, np.ndarray]], dtype: Any = "float32"
) -> None:
    """Fill a new dense matrix (its shape is its axes') block by block, straight into storage."""
    with out.create_dense_in_rows(name, dtype=dtype) as target:
        write_behind(target, blocks)


def require_columns(name: str, matrix: Any, needed: int, what: str) -> None:
    if matrix.shape[1] < needed:
        raise OpchainError(f"{what} {needed} exceeds the {matrix.shape[1]} columns of {name}")


@operation(
    "normalize",
    parameters={
        "matrix": MATRIX,
        "target_sum": {
            "type": "number",
            "exclusiveMinimum": 0,
            "default": 1.0,
            "description": "each row is scaled to sum to this",
        },
    },
)
def normalize(data: Any, params: dict[str, Any], ctx: Context) -> None:
    """Scale each row to sum to ``target_sum`` (all-zero rows stay zero)."""
    name, target = params["matrix"], params["target_sum"]
    matrix = data.get_data2d(name)
    carry(data, ctx.output)

    def factors(sums: np.ndarray) -> np.ndarray:
        return np.divide(target, sums, out=np.zeros_like(sums), where=sums != 0)

    def scaled_values(values: np.ndarray, counts: np.ndarray, into: np.ndarray) -> None:
        wide = values.astype(np.float64)  # a piece in cache: cast once, not per row and product
        sums = np.zeros(len(counts))
        nonempty = counts > 0
        if nonempty.any():  # reduceat sums from each start to the next: empty rows left out
            starts = (np.cumsum(counts) - counts)[nonempty]
            sums[nonempty] = np.add.reduceat(wide, starts)
        np.multiply(wide, np.repeat(factors(sums), counts), out=into)

    def scaled_rows(block: np.ndarray, into: np.ndarray) -> None:
        np.multiply(block, factors(block.sum(axis=1, dtype=np.float64, keepdims=True)), out=into)

    if is_sparse(matrix):
        map_sparse_values(ctx, name, matrix, scaled_values)
    else:
        map_rows(ctx, name, matrix, scaled_rows)


def log1p_into(values: np.ndarray, *args: Any) -> None:
    """log(1 + values) into the last argument, computed in that argument's float type, as
    log(u) - ((u - 1) - x) / u with u = 1 + x: the rounding of 1 + x corrected to first order
    (Goldberg 1991; within 4 ulps of numpy's log1p, which has no vectorized float32 loop on most
    CPUs and runs 3-4 times slower); numpy's log1p where a value is -1 or less, or infinite."""
    into = args[-1].reshape(-1)
    x = values.reshape(-1)
    if x.dtype != into.dtype:
        x = x.astype(into.dtype)
    if not len(x) or not (x.min() > -1 and x.max() < np.inf):  # and NaN fails both
        np.log1p(x, out=into)
        return
    u = np.add(x, 1)
    np.log(u, out=into)
    correction = np.subtract(u, 1)
    np.subtract(correction, x, out=correction)
    np.divide(correction, u, out=correction)
    np.subtract(into, correction, out=into)


@operation("log1p", parameters={"matrix": MATRIX})
def log1p(data: Any, params: dict[str, Any], ctx: Context) -> None:
    """Replace every value x by log(1 + x); sparse stays sparse."""
    name = params["matrix"]
    matrix = data.get_data2d(name)
    carry(data, ctx.output)
    if is_sparse(matrix):
        map_sparse_values(ctx, name, matrix, log1p_into)
    else:
        map_rows(ctx, name, matrix, log1p_into)


def axis_of_matrix(params: dict[str, Any]) -> tuple[str, str] | None:
    if params["axis"] in split_matrix_name(params["matrix"])[:2]:
        return None
    return "axis", f"'{params['axis']}' is not an axis of {params['matrix']}"


@operation(
    "standardize",
    parameters={
        "matrix": MATRIX,
        "axis": {**AXIS, "description": "the axis whose entries are each scaled to mean 0, std 1"},
    },
    check=axis_of_matrix,
)
def standardize(data: Any, params: dict[str, Any], ctx: Context) -> None:
    """Z-score each entry of ``axis`` (a column axis or the row axis of ``matrix``); dense output."""
    name, axis = params["matrix"], params["axis"]
    columns_axis = split_matrix_name(name)[1]
    matrix = data.get_data2d(name)
    carry(data, ctx.output)
    if axis == columns_axis:
        mean, std = column_moments(matrix, ctx.threads)
        std[std == 0] = 1.0

        def scaled(block: np.ndarray, into: np.ndarray) -> None:
            np.divide(block - mean, std, out=into)
    else:

        def scaled(block: np.ndarray, into: np.ndarray) -> None:
            block = block.astype(np.float64)
            std = block.std(axis=1, keepdims=True)
            np.divide(
                block - block.mean(axis=1, keepdims=True), np.where(std == 0, 1, std), out=into
            )

    map_rows(ctx, name, matrix, scaled)


EXACT_PCA_COLUMNS = 4096  # 128 MiB of float64 covariance; past it, the randomized method


def minus_mean(block: np.ndarray, mean: np.ndarray, buffers: Buffers) -> np.ndarray:
    """``block - mean`` in float64, into a reused buffer: fresh pages cost more than the
    subtraction (a pass of pca over a dense matrix ~1.4x faster)."""
    return np.subtract(block, mean, out=buffers.take(0, block.shape))


def centered_times(block: Any, mean: np.ndarray, g: np.ndarray, buffers: Buffers) -> np.ndarray:
    """``(block - mean) @ g`` in float64; a sparse block is not densified to center it."""
    if is_sparse(block):
        return block @ g - mean @ g
    return minus_mean(block, mean, buffers) @ g


def exact_top(matrix: Any, mean: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest eigenvalues and eigenvectors of the covariance, from the full covariance
    accumulated over row blocks (columns x columns memory)."""
    n_rows, n_columns = matrix.shape
    covariance = np.zeros((n_columns, n_columns))
    buffers = Buffers(np.float64)
    for rows in row_blocks(n_rows, n_columns):
        block = minus_mean(dense_rows(matrix, rows), mean, buffers)
        covariance += block.T @ block
    eigenvalues, eigenvectors = np.linalg.eigh(covariance / max(n_rows - 1, 1))
    order = np.argsort(eigenvalues)[::-1][:k]
    return eigenvalues[order], eigenvectors[:, order]


def randomized_top(
    matrix: Any, mean: np.ndarray, k: int, iterations: int = 4, oversample: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """The same by blocked randomized subspace iteration (Halko, Martinsson and Tropp 2011):
    ``G <- orth(A^T A G)`` a few times, each a pass over row blocks, then the exact eigenproblem of
    the covariance restricted to G. Memory columns x (k + oversample); a fixed seed, so the same
    input gives the same bytes."""
    n_rows, n_columns = matrix.shape
    width = min(n_columns, k + oversample)

    buffers = Buffers(np.float64)

    def covariance_times(g: np.ndarray) -> np.ndarray:
        product = np.zeros((n_columns, g.shape[1]))
        for rows in matrix_blocks(matrix):
            block = matrix[rows]
            if is_sparse(block):  # X - mean's columns sum to 0: X^T does for (X - mean)^T
                product += block.T @ centered_times(block, mean, g, buffers)
            else:
                centered = minus_mean(block, mean, buffers)
                product += centered.T @ (centered @ g)
        return product / max(n_rows - 1, 1)

    g = np.random.default_rng(0).standard_normal((n_columns, width))
    for _ in range(iterations):
        g, _ = np.linalg.qr(covariance_times(g))
    eigenvalues, eigenvectors = np.linalg.eigh(g.T @ covariance_times(g))
    order = np.argsort(eigenvalues)[::-1][:k]
    return eigenvalues[order], g @ eigenvectors[:, order]


@operation(
    "pca",
    parameters={
        "matrix": MATRIX,
        "components": {"type": "integer", "minimum": 1, "default": 10},
        "output": {
            "type": "string",
            "pattern": "^[^,#/]+$",
            "default": "pca",
            "description": "the result is stored as rows,pc#<output>",
        },
        "method": {
            "enum": ["auto", "exact", "randomized"],
            "default": "auto",
            "description": "exact: the full covariance (columns^2 memory); randomized: blocked "
            "subspace iteration (columns x components memory); auto: randomized past "
            f"{EXACT_PCA_COLUMNS} columns",
        },
    },
)
def pca(data: Any, params: dict[str, Any], ctx: Context) -> None:
    """Project rows on the top principal components (exact, or randomized for wide matrices)."""
    name, k = params["matrix"], params["components"]
    rows_axis, _, _ = split_matrix_name(name)
    matrix = data.get_data2d(name)
    require_columns(name, matrix, k, "components")
    n_rows, n_columns = matrix.shape
    mean, std = column_moments(matrix, ctx.threads)
    method = params["method"]
    if method == "auto":
        method = "exact" if n_columns <= EXACT_PCA_COLUMNS else "randomized"
    top = randomized_top if method == "randomized" else exact_top
    eigenvalues, basis = top(matrix, mean, k)
    # An eigenvector's sign is arbitrary: fix it so results do not depend on the LAPACK build.
    basis *= np.where(basis[np.abs(basis).argmax(axis=0), range(k)] < 0, -1.0, 1.0)
    carry(data, ctx.output)
    ctx.output.create_axis("pc", np.array([f"pc_{i + 1}" for i in range(k)], dtype=object))
    ctx.output.set_data1d("pc#explained_variance", eigenvalues.astype(np.float32))
    buffers = Buffers(np.float64)  # each block's product is new: the centering buffer is free
    write_rows(
        ctx.output,
        f"{rows_axis},pc#{params['output']}",
        (
            (rows, centered_times(matrix[rows], mean, basis, buffers))
            for rows in matrix_blocks(matrix)
        ),
    )
    # The total variance is the covariance's trace: the columns' variances, no full spectrum needed.
    total = max(float(np.square(std).sum()) * n_rows / max(n_rows - 1, 1), 1e-300)
    ctx.results["explained_variance_ratio"] = float(eigenvalues.sum() / total)
    ratio = eigenvalues / total
    ctx.figures["explained_variance"] = figure = new_figure()
    figure.subplots().bar(range(1, k + 1), ratio)
    figure.axes[0].set(xlabel="component", ylabel="explained variance ratio")
    if k >= 2:  # every row up to 20,000 (more would hide each other), else evenly spaced ones
        every = slice(None, None, -(-n_rows // 20_000) or 1)
        projected = np.asarray(ctx.output.get_data2d(f"{rows_axis},pc#{params['output']}")[every])
        ctx.figures["first_components"] = figure = new_figure()
        figure.subplots().scatter(projected[:, 0], projected[:, 1], s=4)
        figure.axes[0].set(xlabel="pc_1", ylabel="pc_2")


@operation(
    "subsample",
    random=True,
    parameters={
        "matrix": MATRIX,
        "fraction": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 1,
            "default": 0.5,
            "description": "the fraction of rows kept, drawn without replacement",
        },
    },
)
def subsample(data: Any, params: dict[str, Any], ctx: Context) -> None:
    """Keep a random fraction of the rows of ``matrix`` (and of the row axis' vectors)."""
    name = params["matrix"]
    rows_axis, _, _ = split_matrix_name(name)
    matrix = data.get_data2d(name)
    n_rows = matrix.shape[0]
    assert ctx.rng is not None
    take = np.sort(ctx.rng.choice(n_rows, size=round(n_rows * params["fraction"]), replace=False))
    carry(data, ctx.output, rows=rows_axis, take=take)
    take_matrix(ctx.output, name, matrix, rows=take)
    ctx.results["rows_kept"] = len(take)


@operation(
    "split",
    random=True,
    parameters={
        "axis": {**AXIS, "description": "the axis whose entries are split into train and test"},
        "test_fraction": {
            "type": "number",
            "exclusiveMinimum": 0,
            "exclusiveMaximum": 1,
            "default": 0.25,
        },
    },
)
def split(data: Any, params: dict[str, Any], ctx: Context) -> None:
    """Mark a random ``test_fraction`` of the entries of ``axis`` as test (``axis#is_test``)."""
    axis = params["axis"]
    size = data.axis_size(axis)
    assert ctx.rng is not None
    is_test = np.zeros(size, dtype=bool)
    is_test[ctx.rng.choice(size, size=round(size * params["test_fraction"]), replace=False)] = True
    carry(data, ctx.output)
    copy_matrices(data, ctx.output)
    ctx.output.set_data1d(f"{axis}#is_test", is_test)
    ctx.results["test_entries"] = int(is_test.sum())


def matrix_names(data: Any) -> Iterator[str]:
    """Every ``rows,columns#property`` of the dataset."""
    axes = data.axis_names()
    for rows in axes:
        for columns in axes:
            yield from data.data2d_names(rows, columns)


def copy_matrices(data: Any, out: Any, *, but: str | None = None) -> None:
    for name in matrix_names(data):
        if name != but:
            out.set_data2d(name, data.get_data2d(name))


@operation(
    "nearest_centroid",
    parameters={
        "matrix": MATRIX,
        "labels": {**VECTOR, "description": "the true class of each row, as rows#property"},
        "test": {
            **VECTOR,
            "type": ["string", "null"],
            "default": None,
            "description": "rows#property of bools marking test rows (default rows#is_test)",
        },
    },
)
def nearest_centroid(data: Any, params: dict[str, Any], ctx: Context) -> None:
    """Fit one centroid per class on the training rows; score accuracy on the test rows."""
    name = params["matrix"]
    rows_axis, _, _ = split_matrix_name(name)
    matrix = data.get_data2d(name)
    labels, codes = group_codes(data, params["labels"])
    test_name = params["test"] or f"{rows_axis}#is_test"
    is_test = np.asarray(data.get_data1d(test_name), dtype=bool)
    trained = np.unique(codes[~is_test])  # the classes with training rows
    if not len(trained):
        raise OpchainError(f"nearest_centroid: no training rows ({test_name} marks every row)")
    classes = labels[trained]
    position = np.full(len(labels), -1)  # each label's class, -1 if it has no training rows
    position[trained] = np.arange(len(trained))
    truth = position[codes]
    sums, counts = group_sums(matrix, np.where(is_test, -1, truth), len(classes))
    centroids = sums / counts[:, None]
    predicted, _ = nearest(matrix, centroids)
    tested = np.flatnonzero(is_test)
    accuracy = float((predicted[tested] == truth[tested]).mean()) if len(tested) else float("nan")
    carry(data, ctx.output)
    ctx.output.set_data1d(f"{rows_axis}#predicted", classes.astype(object)[predicted])
    ctx.results["accuracy"] = accuracy
    ctx.datastore["centroids"] = centroids
    ctx.datastore["classes"] = classes.tolist()
    ctx.datastore["scores"] = {"accuracy": accuracy, "test_rows": len(tested)}
    ctx.log.info("accuracy %.4f on %d test rows", accuracy, len(tested))
    known = tested[truth[tested] >= 0]
    confusion = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(confusion, (truth[known], predicted[known]), 1)
    ctx.figures["confusion_matrix"] = figure = new_figure(4.5, 4)
    image = figure.subplots().imshow(confusion, cmap="Blues")
    figure.colorbar(image)
    ticks = range(len(classes))
    figure.axes[0].set(xticks=ticks, xticklabels=classes, yticks=ticks, yticklabels=classes,
                       xlabel="predicted", ylabel="true")  # fmt: skip


def kmeans_plus_plus(matrix: Any, k: int, rng: np.random.Generator) -> np.ndarray:
    """k centers by greedy k-means++ (Arthur and Vassilvitskii 2007, as scikit-learn seeds): a
    random row, then each next center the best of 2 + log k rows drawn with probability
    proportional to their squared distance to the nearest center so far (the one that lowers the
    sum of those distances most). Two passes over the rows per center, O(rows) memory."""
    n_rows = matrix.shape[0]
    trials = 2 + int(np.log(k))
    centers = [dense_rows(matrix, np.array([rng.integers(n_rows)]))[0].astype(np.float64)]
    _, closest = nearest(matrix, centers[0][None])
    for _ in range(1, k):
        cumulative = np.cumsum(closest)
        drawn = np.searchsorted(cumulative, rng.random(trials) * cumulative[-1], side="right")
        candidates = dense_rows(matrix, np.minimum(drawn, n_rows - 1)).astype(np.float64)
        potentials = np.zeros(trials)
        for rows, squares in squared_distances(matrix, candidates):
            potentials += np.minimum(closest[rows, None], squares).sum(axis=0)
        centers.append(candidates[potentials.argmin()])
        np.minimum(closest, nearest(matrix, centers[-1][None])[1], out=closest)
    return np.stack(centers)


def lloyd(
    matrix: Any, centroids: np.ndarray, iterations: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lloyd's algorithm from ``centroids``, until they stop moving or after ``iterations``:
    the centroids, each row's cluster and its squared distance to its centroid."""
    k = len(centroids)
    for _ in range(iterations):
        assignment, distance = nearest(matrix, centroids)
        sums, counts = group_sums(matrix, assignment, k)
        moved = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centroids)
        if np.array_equal(moved, centroids):
            return centroids, assignment, distance
        centroids = moved
    return centroids, *nearest(matrix, centroids)  # not converged: the last centroids' clusters


@operation(
    "kmeans",
    random=True,
    parameters={
        "matrix": MATRIX,
        "clusters": {"type": "integer", "minimum": 1, "default": 8},
        "iterations": {"type": "integer", "minimum": 1, "default": 50},
        "init": {
            "enum": ["k-means++", "random"],
            "default": "k-means++",
            "description": "the starting centroids: greedy k-means++ (as scikit-learn), or "
            "distinct random rows",
        },
        "n_init": {
            "type": "integer",
            "minimum": 1,
            "default": 10,
            "description": "the number of starts; the clustering of least inertia is kept",
        },
    },
)
def kmeans(data: Any, params: dict[str, Any], ctx: Context) -> None:
    """Lloyd's k-means from ``n_init`` starts, the best kept; stores ``rows#cluster`` and the
    inertia as its score."""
    name, k = params["matrix"], params["clusters"]
    rows_axis, _, _ = split_matrix_name(name)
    matrix = data.get_data2d(name)
    if matrix.shape[0] < k:
        raise OpchainError(f"kmeans: clusters {k} exceeds the {matrix.shape[0]} rows of {name}")
    rng = ctx.rng
    assert rng is not None

    def clustered() -> tuple[float, np.ndarray, np.ndarray]:
        if params["init"] == "k-means++":
            start = kmeans_plus_plus(matrix, k, rng)
        else:
            start = dense_rows(matrix, rng.choice(matrix.shape[0], size=k, replace=False))
        centroids, assignment, distance = lloyd(
            matrix, start.astype(np.float64), params["iterations"]
        )
        return float(distance.sum()), centroids, assignment

    # min keeps the first of equal inertias, and only the best start's arrays
    inertia, centroids, assignment = min(
        (clustered() for _ in range(params["n_init"])), key=lambda run: run[0]
    )
    carry(data, ctx.output)
    ctx.output.set_data1d(f"{rows_axis}#cluster", assignment.astype(np.int32))
    ctx.results["inertia"] = inertia
    ctx.datastore["centroids"] = centroids
    ctx.datastore["scores"] = {"inertia": inertia, "clusters": k}
    ctx.figures["cluster_sizes"] = figure = new_figure()
    figure.subplots().bar(range(k), np.bincount(assignment, minlength=k))
    figure.axes[0].set(xlabel="cluster", ylabel="rows")
