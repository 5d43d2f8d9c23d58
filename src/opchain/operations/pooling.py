"""Built-in operations over the datasets of a summary (pySPACE's shuffle, merge and concatenate):
each pools the entries of one ``axis`` of its members into one dataset.

The pooled dataset holds the training members' entries of ``axis`` and then the test members',
in the combination's order; every vector of ``axis`` and every matrix whose rows are ``axis`` is
concatenated in that order (dense or sparse), and everything else (items, other axes, their
vectors, matrices not on ``axis``) is copied from the first member, so every member must have the
same other axes (same entries, same order), vectors and matrices. If any entry of ``axis`` occurs
in two members, every entry is renamed ``<member>/<entry>`` so that all stay unique. shuffle and
merge mark the test member's entries in ``<axis>#is_test`` (as ``split`` does, so evaluations
downstream train on the rest); concatenate records each entry's member in ``<axis>#source``.
Members are pooled in memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from opchain.daf.mapping import is_sparse, sparse
from opchain.errors import OpchainError
from opchain.operations import Context, operation
from opchain.operations.builtin import AXIS, matrix_names, split_matrix_name

POOLED_AXIS = {**AXIS, "description": "the axis whose entries are pooled (e.g. sample, cell)"}


def check_pool(data: dict[str, Any], params: dict[str, Any]) -> None:
    """Refuse members that cannot be pooled along ``params["axis"]``, naming the first two that
    differ and how (run at planning on input datasets, and by every job)."""
    axis = params["axis"]
    names = list(data)
    first = data[names[0]]
    for name in names:
        if not data[name].has_axis(axis):
            raise OpchainError(f"dataset '{name}' has no axis '{axis}' to pool")
    for matrix in matrix_names(first):
        if split_matrix_name(matrix)[1] == axis:
            raise OpchainError(
                f"dataset '{names[0]}': axis '{axis}' is not the rows of the matrix '{matrix}' "
                f"(pool along the rows of every matrix that has '{axis}')"
            )
    for name in names[1:]:
        _same_structure(names[0], first, name, data[name], axis)


def _same_structure(a: str, x: Any, b: str, y: Any, axis: str) -> None:
    def differ(what: str) -> OpchainError:
        return OpchainError(f"datasets '{a}' and '{b}' cannot be pooled along '{axis}': {what}")

    if sorted(x.axis_names()) != sorted(y.axis_names()):
        raise differ(f"axes {sorted(x.axis_names())} vs {sorted(y.axis_names())}")
    for other in x.axis_names():
        if other != axis:
            left, right = x.axis_entries(other), y.axis_entries(other)
            if len(left) != len(right):
                raise differ(f"axis '{other}' has {len(left)} vs {len(right)} entries")
            unequal = np.flatnonzero(left != right)
            if len(unequal):
                i = unequal[0]
                raise differ(f"axis '{other}' entry {i}: {left[i]!r} vs {right[i]!r}")
    left, right = sorted(x.data1d_names(axis)), sorted(y.data1d_names(axis))
    if left != right:
        raise differ(f"vectors of '{axis}' {left} vs {right}")
    left, right = sorted(matrix_names(x)), sorted(matrix_names(y))
    if left != right:
        raise differ(f"matrices {left} vs {right}")


def pool(data: dict[str, Any], axis: str, out: Any, marks: dict[str, np.ndarray]) -> None:
    """Write ``data``'s members pooled along ``axis`` to ``out``, with the vectors ``marks``
    (``<axis>#<name>`` -> one value per pooled entry) added."""
    check_pool(data, {"axis": axis})
    names, readers = list(data), list(data.values())
    first = readers[0]
    for item in first.item_names():
        out.set_item(item, first.get_item(item))
    entries = [r.axis_entries(axis) for r in readers]
    pooled = np.concatenate(entries)
    if len(set(pooled.tolist())) < len(pooled):  # a collision: prefix every entry by its member
        pooled = np.concatenate(
            [
                np.array([f"{n}/{e}" for e in es], dtype=object)
                for n, es in zip(names, entries, strict=True)
            ]
        )
    for other in first.axis_names():
        if other == axis:
            out.create_axis(axis, pooled)
            for vector in first.data1d_names(axis):
                if vector not in marks:
                    out.set_data1d(vector, np.concatenate([r.get_data1d(vector) for r in readers]))
        else:
            out.copy_axis(first, other)
            for vector in first.data1d_names(other):
                out.copy_data1d(first, vector)
    for name, values in marks.items():
        out.set_data1d(name, values)
    for matrix in matrix_names(first):
        if split_matrix_name(matrix)[0] != axis:
            out.set_data2d(matrix, first.get_data2d(matrix))
            continue
        parts = [r.get_data2d(matrix) for r in readers]
        if any(is_sparse(p) for p in parts):
            out.set_data2d(matrix, sparse().vstack(parts, format="csr"))
        else:
            out.set_data2d(matrix, np.concatenate([np.asarray(p) for p in parts]))


def _sizes(data: dict[str, Any], axis: str, members: list[str]) -> int:
    return sum(data[m].axis_size(axis) for m in members)


def pool_train_test(data: dict[str, Any], params: dict[str, Any], ctx: Context) -> None:
    """The training members' entries, then the test members', marked in ``<axis>#is_test``."""
    axis, combination = params["axis"], ctx.combination
    assert combination is not None
    train = _sizes(data, axis, combination["train"])
    is_test = np.arange(train + _sizes(data, axis, combination["test"])) >= train
    pool(data, axis, ctx.output, {f"{axis}#is_test": is_test})
    ctx.results["train_entries"] = int(train)
    ctx.results["test_entries"] = int(is_test.sum())


@operation("shuffle", combine="pairs", check_members=check_pool, parameters={"axis": POOLED_AXIS})
def shuffle(data: dict[str, Any], params: dict[str, Any], ctx: Context) -> None:
    """For every ordered pair of datasets X != Y of the summary, ``X_vs_Y``: X's entries of
    ``axis`` to train on, then Y's marked in ``<axis>#is_test``."""
    pool_train_test(data, params, ctx)


@operation(
    "merge",
    combine="leave_one_out",
    check_members=check_pool,
    parameters={
        "axis": POOLED_AXIS,
        "reverse": {
            "type": "boolean",
            "default": False,
            "description": "X_vs_Rest (train on X, test on the rest) instead of Rest_vs_X",
        },
    },
)
def merge(data: dict[str, Any], params: dict[str, Any], ctx: Context) -> None:
    """For every dataset X of the summary, ``Rest_vs_X``: the other datasets' entries of
    ``axis`` to train on, then X's marked in ``<axis>#is_test`` (``reverse``: ``X_vs_Rest``)."""
    pool_train_test(data, params, ctx)


@operation("concatenate", combine="all", check_members=check_pool, parameters={"axis": POOLED_AXIS})
def concatenate(data: dict[str, Any], params: dict[str, Any], ctx: Context) -> None:
    """Every dataset of the summary in one: their entries of ``axis`` in order, each one's
    dataset in ``<axis>#source``."""
    axis = params["axis"]
    source = np.concatenate(
        [np.full(reader.axis_size(axis), name, dtype=object) for name, reader in data.items()]
    )
    pool(data, axis, ctx.output, {f"{axis}#source": source})
