"""Built-in operations that reshape a dataset: select entries (filter), group them (aggregate),
cross-validate (kfold), change a matrix's dtype or layout (convert)."""

from __future__ import annotations

import operator
from collections.abc import Iterator
from typing import Any

import numpy as np

from opchain.daf.mapping import DTYPES, is_sparse
from opchain.errors import OpchainError
from opchain.operations import Context, operation
from opchain.operations.builtin import (
    AXIS,
    MATRIX,
    VECTOR,
    carry,
    copy_matrices,
    dense_rows,
    group_codes,
    group_sums,
    map_rows,
    map_sparse_values,
    matrix_names,
    row_blocks,
    split_matrix_name,
    take_matrix,
    write_csr,
    write_rows,
)

COMPARISONS = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "in": lambda values, wanted: np.isin(values, wanted),
    "not in": lambda values, wanted: ~np.isin(values, wanted),
}
NUMERIC_DTYPES = [d for d in DTYPES if d != "float16"]  # scipy.sparse has no float16


def vector_on(params: dict[str, Any], vector: str, axis: str) -> tuple[str, str] | None:
    """Blames ``vector`` (a parameter) unless it names a vector of the axis ``axis`` names."""
    if params[vector].split("#", 1)[0] == axis:
        return None
    return vector, f"'{params[vector]}' is not a vector of the axis '{axis}'"


def filter_check(params: dict[str, Any]) -> tuple[str, str] | None:
    if params["op"] in ("in", "not in") and not isinstance(params["value"], list):
        return "value", f"op '{params['op']}' needs a list value, not {params['value']!r}"
    return vector_on(params, "property", params["axis"])


@operation(
    "filter",
    parameters={
        "axis": {**AXIS, "description": "the axis whose entries are selected"},
        "property": {**VECTOR, "description": "the axis' vector the condition tests"},
        "op": {"enum": list(COMPARISONS), "default": "=="},
        "value": {
            "description": "compared with each entry's value (a list for in, not in)",
            "examples": ["a"],
        },
    },
    check=filter_check,
)
def filter_entries(data: Any, params: dict[str, Any], ctx: Context) -> None:
    """Keep the entries of an axis whose property passes a comparison (no code is evaluated)."""
    axis, op, value, name = params["axis"], params["op"], params["value"], params["property"]
    try:
        passes = [COMPARISONS[op](piece, value) for piece in data.data1d_chunks(name)]
    except TypeError:  # e.g. strings < a number
        raise OpchainError(
            f"filter: the values of {name} can't be compared with {value!r} by {op}"
        ) from None
    keep = np.flatnonzero(np.concatenate([np.zeros(0, bool), *passes]))
    carry(data, ctx.output, rows=axis, take=keep)
    for name in matrix_names(data):
        rows, columns, _ = split_matrix_name(name)
        take_matrix(
            ctx.output,
            name,
            data.get_data2d(name),
            rows=keep if rows == axis else None,
            columns=keep if columns == axis else None,
        )
    ctx.results["kept"] = len(keep)


@operation(
    "aggregate",
    parameters={
        "matrix": MATRIX,
        "by": {**VECTOR, "description": "the rows' vector whose values form the groups"},
        "method": {"enum": ["sum", "mean"], "default": "sum"},
        "axis": {**AXIS, "type": ["string", "null"], "default": None,
                 "description": "the new axis of groups (default: the property's name)"},
    },
    check=lambda params: vector_on(params, "by", split_matrix_name(params["matrix"])[0]),
)  # fmt: skip
def aggregate(data: Any, params: dict[str, Any], ctx: Context) -> None:
    """Sum or average the rows of a matrix per group of a rows' property, onto a new axis."""
    name = params["matrix"]
    _, columns, prop = split_matrix_name(name)
    labels, group_of = group_codes(data, params["by"])
    group_axis = params["axis"] or params["by"].split("#", 1)[1]
    if group_axis in data.axis_names():
        raise OpchainError(f"aggregate: the dataset already has an axis '{group_axis}'")
    totals, counts = group_sums(data.get_data2d(name), group_of, len(labels))
    if params["method"] == "mean":
        totals /= np.maximum(counts, 1)[:, None]
    carry(data, ctx.output)
    ctx.output.create_axis(group_axis, labels.astype(object))
    ctx.output.set_data2d(f"{group_axis},{columns}#{prop}", totals)
    ctx.results["groups"] = len(labels)


def fold_of_folds(params: dict[str, Any]) -> tuple[str, str] | None:
    fold, folds = params["fold"], params["folds"]
    if fold < folds:
        return None
    problem = f"fold {fold} is not one of the {folds} folds 0..{folds - 1}"
    return (
        "fold",
        f'{problem} (a grid over both drops such settings: constraints: ["fold < folds"])',
    )


@operation(
    "kfold",
    random=True,
    parameters={
        "axis": {**AXIS, "description": "the axis whose entries are split into folds"},
        "folds": {"type": "integer", "minimum": 2, "default": 5},
        "fold": {"type": "integer", "minimum": 0, "default": 0,
                 "description": "the fold marked as test: a range over 0..folds-1 gives one dataset per fold"},
    },
    check=fold_of_folds,
)  # fmt: skip
def kfold(data: Any, params: dict[str, Any], ctx: Context) -> None:
    """Mark fold ``fold`` of a random k-fold partition of ``axis`` as test (``axis#is_test``);
    every fold of one run draws the same partition, so the folds are disjoint and cover the axis."""
    axis, folds, fold = params["axis"], params["folds"], params["fold"]
    size = data.axis_size(axis)
    assert ctx.rng is not None
    order = ctx.rng.permutation(size)
    is_test = np.zeros(size, dtype=bool)
    is_test[order[fold::folds]] = True
    carry(data, ctx.output)
    copy_matrices(data, ctx.output)
    ctx.output.set_data1d(f"{axis}#is_test", is_test)
    ctx.results["test_entries"] = int(is_test.sum())


@operation(
    "convert",
    parameters={
        "matrix": MATRIX,
        "dtype": {"enum": NUMERIC_DTYPES, "default": "float32"},
        "layout": {"enum": ["keep", "dense", "sparse"], "default": "keep"},
    },
)
def convert(data: Any, params: dict[str, Any], ctx: Context) -> None:
    """Change a matrix's element type and, or, its layout (dense or sparse CSR)."""
    name, dtype, layout = params["matrix"], np.dtype(params["dtype"]), params["layout"]
    matrix = data.get_data2d(name)
    carry(data, ctx.output)
    copy_matrices(data, ctx.output, but=name)
    sparse_in = is_sparse(matrix)
    if layout == "sparse" or (layout == "keep" and sparse_in):
        if sparse_in:
            map_sparse_values(ctx, name, matrix, cast_into, dtype)
        else:
            dense_to_sparse(ctx.output, name, matrix, dtype)
    elif sparse_in or matrix.dtype != dtype:  # cast in reused buffers, not fresh ones per block
        map_rows(ctx, name, matrix, cast_into, dtype)
    else:  # the same bytes: written straight from the input's blocks
        write_rows(
            ctx.output, name, ((b, dense_rows(matrix, b)) for b in row_blocks(*matrix.shape)), dtype
        )


def cast_into(values: np.ndarray, *args: Any) -> None:
    """``values`` into the last argument, converted as ``astype`` does."""
    np.copyto(args[-1], values.reshape(args[-1].shape), casting="unsafe")


def dense_to_sparse(out: Any, name: str, matrix: Any, dtype: np.dtype) -> None:
    """CSR from a dense matrix in two passes over row blocks (count, then fill), so memory stays
    flat whatever the size."""
    blocks = list(row_blocks(*matrix.shape))
    counts = [np.count_nonzero(dense_rows(matrix, b), axis=1) for b in blocks]
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts or [[]]))]).astype(np.int64)

    def nonzeros() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for block in blocks:
            rows = dense_rows(matrix, block)
            nonzero = np.nonzero(rows)  # row-major order: CSR's
            yield rows[nonzero], nonzero[1]

    write_csr(out, name, indptr, dtype, nonzeros())
