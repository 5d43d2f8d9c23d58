"""The daf storage layer: both stores, round trips, exact bytes, the fixture (corruption: in
test_daf_corrupt.py)."""

from __future__ import annotations

import csv
import datetime
import gc
import math
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import scipy.sparse as sp
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opchain.daf import (
    DTYPES,
    FilesReader,
    FilesWriter,
    H5Reader,
    H5Writer,
    Reader,
    Writer,
    open_reader,
)
from opchain.daf import files as files_module
from opchain.daf import interface as interface_module
from opchain.errors import DafError

# The daf example as the repo ships it (an unchanged copy of shared/fixtures/daf-example).
FIXTURE = Path(__file__).resolve().parents[1] / "storage" / "example_data" / "cells" / "daf_example"
STORES = ["files", "h5"]
SPARSE_DTYPES = [name for name in DTYPES if name != "float16"]  # scipy.sparse has no float16
TRICKY_STRINGS = [
    "None",
    "7",
    "yes",
    "",
    " leading",
    "trailing ",
    'a "quoted" word',
    '"',
    "a,b",
    "line\nbreak",
    "cr\rlf\r\n",
    "ünïcödé ✓ 中文",
    "null",
    "~",
    "#",
    "x\x01y",
]
HYPOTHESIS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# Helpers ----------------------------------------------------------------------------------------


def dataset_path(store: str, folder: Path, name: str = "ds") -> Path:
    return folder / (name if store == "files" else f"{name}.h5")


def new_writer(store: str, path: Path, **options: Any) -> Writer:
    return (FilesWriter if store == "files" else H5Writer)(path, **options)


def fresh_reader(store: str, path: Path) -> Reader:
    reader = (FilesReader if store == "files" else H5Reader)(path)
    assert type(open_reader(path)) is type(reader)
    return reader


def write(store: str, path: Path, fill: Any) -> Reader:
    """Write a dataset with ``fill(writer)`` and return a fresh reader over it."""
    with new_writer(store, path) as writer:
        fill(writer)
    return fresh_reader(store, path)


def same_bits(left: np.ndarray, right: np.ndarray) -> bool:
    left, right = np.asarray(left), np.asarray(right)
    return (
        left.dtype == right.dtype
        and left.shape == right.shape
        and (np.ascontiguousarray(left).tobytes() == np.ascontiguousarray(right).tobytes())
    )


def same_item(left: Any, right: Any) -> bool:
    if type(left) is not type(right):
        return False
    if isinstance(left, float):
        return left == right or (math.isnan(left) and math.isnan(right))
    if isinstance(left, list):
        return len(left) == len(right) and all(map(same_item, left, right))
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same_item(left[k], right[k]) for k in left)
    return bool(left == right)


def assert_mapped(array: np.ndarray) -> None:
    """Binary data comes back memory-mapped (when not empty) and read-only."""
    assert not array.flags.writeable
    if array.size:
        assert isinstance(array, np.memmap) or isinstance(array.base, np.memmap)


def all_bytes(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {child.name: child.read_bytes() for child in sorted(path.iterdir())}


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    return request.param


def small(writer: Writer) -> None:
    writer.set_item("organism", "human")
    writer.create_axis("cell", ["c1", "c2", "c3"])
    writer.create_axis("gene", ["g1", "g2"])
    writer.set_data1d("cell#score", np.array([1.5, -2.0, 3.25], dtype="float32"))
    writer.set_data1d("cell#type", np.array(["T", None, ""], dtype=object))
    writer.set_data2d("cell,gene#UMIs", np.arange(6, dtype="int32").reshape(3, 2))
    writer.set_data2d("cell,gene#sparse", sp.csr_matrix(np.array([[0, 1.0], [0, 0], [2.0, 0]])))
    writer.set_data2d(
        "gene,cell#note", np.array([["a", None, "b"], [None, "c", None]], dtype=object)
    )


# Round trips ------------------------------------------------------------------------------------


def test_small_dataset_round_trip(store: str, tmp_path: Path) -> None:
    reader = write(store, dataset_path(store, tmp_path), small)
    assert reader.item_names() == ["organism"]
    assert reader.get_item("organism") == "human"
    assert reader.axis_names() == ["cell", "gene"]
    assert list(reader.axis_entries("cell")) == ["c1", "c2", "c3"]
    assert reader.axis_size("gene") == 2
    assert reader.data1d_names("cell") == ["cell#score", "cell#type"]
    assert reader.data2d_names("cell", "gene") == ["cell,gene#UMIs", "cell,gene#sparse"]
    assert reader.data2d_names("gene", "cell") == ["gene,cell#note"]
    score = reader.get_data1d("cell#score")
    assert_mapped(score)
    assert same_bits(score, np.array([1.5, -2.0, 3.25], dtype="float32"))
    assert list(reader.get_data1d("cell#type")) == ["T", None, ""]
    umis = reader.get_data2d("cell,gene#UMIs")
    assert_mapped(umis)
    assert same_bits(umis, np.arange(6, dtype="int32").reshape(3, 2))
    matrix = reader.get_data2d("cell,gene#sparse")
    assert isinstance(matrix, sp.csr_matrix)
    assert_mapped(matrix.data)
    assert_mapped(matrix.indices)
    assert_mapped(matrix.indptr)
    assert (matrix.toarray() == [[0, 1], [0, 0], [2, 0]]).all()
    note = reader.get_data2d("gene,cell#note")
    assert note.tolist() == [["a", None, "b"], [None, "c", None]]
    assert reader.get_data2d("cell,gene#note").tolist() == [["a", None], [None, "c"], ["b", None]]


def test_transposed_lookup(store: str, tmp_path: Path) -> None:
    reader = write(store, dataset_path(store, tmp_path), small)
    assert reader.has_data2d("gene,cell#UMIs")
    transposed = reader.get_data2d("gene,cell#UMIs")
    assert transposed.shape == (2, 3)
    assert np.shares_memory(transposed, reader.get_data2d("cell,gene#UMIs"))
    assert (transposed == np.arange(6).reshape(3, 2).T).all()
    sparse_t = reader.get_data2d("gene,cell#sparse")
    assert sparse_t.shape == (2, 3)
    assert (sparse_t.toarray() == [[0, 0, 2], [1, 0, 0]]).all()


def test_writer_reads_its_own_data(store: str, tmp_path: Path) -> None:
    with new_writer(store, dataset_path(store, tmp_path)) as writer:
        small(writer)
        assert writer.get_item("organism") == "human"
        assert list(writer.axis_entries("cell")) == ["c1", "c2", "c3"]
        assert writer.get_data1d("cell#score")[2] == 3.25
        assert writer.get_data2d("cell,gene#UMIs")[2, 1] == 5
        assert writer.get_data2d("cell,gene#sparse")[2, 0] == 2.0
        assert writer.get_data1d("cell#type")[1] is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_dense_and_sparse(store: str, tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(1)
    values = (rng.random((5, 4)) * 50).astype(dtype)
    values[1] = 0
    values[:, -1] = 0  # an empty last column must survive in the sparse form

    def fill(writer: Writer) -> None:
        writer.create_axis("r", [f"r{i}" for i in range(5)])
        writer.create_axis("c", [f"c{i}" for i in range(4)])
        writer.set_data1d("r#v", values[:, 0])
        writer.set_data2d("r,c#dense", values)
        if dtype in SPARSE_DTYPES:
            writer.set_data2d("r,c#sparse", sp.csr_matrix(values))

    reader = write(store, dataset_path(store, tmp_path), fill)
    assert same_bits(reader.get_data1d("r#v"), values[:, 0])
    assert same_bits(reader.get_data2d("r,c#dense"), values)
    if dtype in SPARSE_DTYPES:
        matrix = reader.get_data2d("r,c#sparse")
        assert matrix.shape == (5, 4) and matrix.dtype == np.dtype(dtype)
        assert same_bits(matrix.toarray(), values)


def test_float16_sparse_files_get_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    write("files", path, small)  # scipy.sparse can't even build a float16 matrix to write
    sidecar = path / "cell,gene#sparse.yaml"
    sidecar.write_text(sidecar.read_text().replace("data_dtype: float64", "data_dtype: float16"))
    (path / "cell,gene#sparse.data").write_bytes(np.array([1, 2], dtype="<f2").tobytes())
    with pytest.raises(
        DafError, match=r"sparse\.data: float16 sparse data \(scipy\.sparse does not"
    ):
        FilesReader(path).get_data2d("cell,gene#sparse")


def test_zero_length_axes_and_arrays(store: str, tmp_path: Path) -> None:
    def fill(writer: Writer) -> None:
        writer.create_axis("empty", [])
        writer.create_axis("one", ["x"])
        writer.set_data1d("empty#v", np.zeros(0, dtype="int16"))
        writer.set_data1d("empty#s", np.array([], dtype=object))
        writer.set_data2d("empty,one#d", np.zeros((0, 1), dtype="float32"))
        writer.set_data2d("one,empty#d2", np.zeros((1, 0), dtype="float64"))
        writer.set_data2d("empty,one#sp", sp.csr_matrix((0, 1), dtype="float32"))
        writer.set_data2d("one,empty#sp2", sp.csr_matrix((1, 0), dtype="int8"))
        writer.set_data2d("one,one#nnz0", sp.csr_matrix((1, 1), dtype="uint8"))
        writer.set_data2d("one,empty#s", np.empty((1, 0), dtype=object))
        with writer.create_dense_in_rows("empty,empty#x", dtype="bool") as block:
            assert block.shape == (0, 0)

    reader = write(store, dataset_path(store, tmp_path), fill)
    assert reader.axis_size("empty") == 0
    assert same_bits(reader.get_data1d("empty#v"), np.zeros(0, dtype="int16"))
    assert reader.get_data1d("empty#s").shape == (0,)
    assert reader.get_data2d("empty,one#d").shape == (0, 1)
    assert reader.get_data2d("one,empty#d2").shape == (1, 0)
    assert reader.get_data2d("one,empty#d").shape == (1, 0)  # transposed
    assert reader.get_data2d("empty,one#sp").shape == (0, 1)
    assert reader.get_data2d("one,empty#sp2").shape == (1, 0)
    nnz0 = reader.get_data2d("one,one#nnz0")
    assert nnz0.shape == (1, 1) and nnz0.nnz == 0 and nnz0.dtype == np.uint8
    assert reader.get_data2d("one,empty#s").shape == (1, 0)
    assert reader.get_data2d("empty,empty#x").dtype == bool


def test_sparse_int64_indices_are_mapped_not_copied(store: str, tmp_path: Path) -> None:
    matrix = sp.csr_matrix(np.eye(3, dtype="float32"))
    matrix.indices = matrix.indices.astype("int64")
    matrix.indptr = matrix.indptr.astype("int64")

    def fill(writer: Writer) -> None:
        writer.create_axis("a", ["x", "y", "z"])
        writer.set_data2d("a,a#eye", matrix)

    read = write(store, dataset_path(store, tmp_path), fill).get_data2d("a,a#eye")
    assert read.indices.dtype == np.int64 and read.indptr.dtype == np.int64
    assert_mapped(read.indices)
    assert_mapped(read.indptr)
    assert (read.toarray() == np.eye(3)).all()


def test_non_canonical_sparse_is_stored_canonical(store: str, tmp_path: Path) -> None:
    coo = sp.coo_matrix(([1.0, 2.0, 5.0], ([0, 0, 1], [2, 2, 0])), shape=(2, 3))

    def fill(writer: Writer) -> None:
        writer.create_axis("r", ["a", "b"])
        writer.create_axis("c", ["x", "y", "z"])
        writer.set_data2d("r,c#m", coo)
        writer.set_data2d("r,c#csc", sp.csc_array(coo))

    reader = write(store, dataset_path(store, tmp_path), fill)
    for name in ("r,c#m", "r,c#csc"):
        matrix = reader.get_data2d(name)
        assert matrix.has_canonical_format
        assert (matrix.toarray() == [[0, 0, 3], [5, 0, 0]]).all()


def test_fortran_and_strided_and_big_endian_inputs(store: str, tmp_path: Path) -> None:
    values = np.arange(12, dtype="float64").reshape(3, 4)

    def fill(writer: Writer) -> None:
        writer.create_axis("r", ["a", "b", "c"])
        writer.create_axis("c", ["w", "x", "y", "z"])
        writer.set_data2d("r,c#fortran", np.asfortranarray(values))
        writer.set_data2d("c,r#view", values.T)
        writer.set_data1d("c#strided", values[0, ::1][::-1])
        writer.set_data1d("r#big", values[:, 0].astype(">i4"))

    reader = write(store, dataset_path(store, tmp_path), fill)
    assert same_bits(reader.get_data2d("r,c#fortran"), values)
    assert same_bits(np.asarray(reader.get_data2d("c,r#view")), values.T.copy())
    assert same_bits(reader.get_data1d("c#strided"), values[0, ::-1].copy())
    assert same_bits(reader.get_data1d("r#big"), np.array([0, 4, 8], dtype="<i4"))


def test_string_edge_cases(store: str, tmp_path: Path) -> None:
    entries = [f"e{i}" for i in range(len(TRICKY_STRINGS) + 1)]
    vector = np.array([*TRICKY_STRINGS, None], dtype=object)
    matrix = np.array([vector, vector[::-1]], dtype=object).T

    def fill(writer: Writer) -> None:
        writer.create_axis("e", entries)
        writer.create_axis("two", ["a", "b"])
        writer.create_axis("tricky", [s for s in TRICKY_STRINGS if s])
        writer.set_data1d("e#s", vector)
        writer.set_data2d("e,two#s", matrix)
        writer.set_item("texts", TRICKY_STRINGS)

    reader = write(store, dataset_path(store, tmp_path), fill)
    assert reader.get_data1d("e#s").tolist() == vector.tolist()
    assert reader.get_data2d("e,two#s").tolist() == matrix.tolist()
    assert list(reader.axis_entries("tricky")) == [s for s in TRICKY_STRINGS if s]
    assert reader.get_item("texts") == TRICKY_STRINGS


def test_items_round_trip(store: str, tmp_path: Path) -> None:
    values = {
        "none": None,
        "true": True,
        "zero": 0,
        "negative": -7,
        "huge": 2**80,
        "float": 0.1,
        "nan": float("nan"),
        "inf": -float("inf"),
        "text": "human",
        "empty": "",
        "None_text": "None",
        "seven_text": "7",
        "yes_text": "yes",
        "nul_text": "a\0b",
        "unicode": "ünïcödé ✓",
        "list": [1, "two", 3.0, None, [True]],
        "dict": {"b": [1, 2], "a": {"nested": None}, "": "empty key"},
        "empty_list": [],
        "empty_dict": {},
        "date": datetime.datetime(2022, 7, 6, 16, 49, 44),
        "numpy": np.int32(5),
    }
    reader = write(
        store,
        dataset_path(store, tmp_path),
        lambda w: [w.set_item(k, v) for k, v in values.items()],
    )
    assert reader.item_names() == sorted(values)
    for name, value in values.items():
        expected = value.item() if isinstance(value, np.generic) else value
        assert same_item(reader.get_item(name), expected), name


def test_items_come_back_as_fresh_copies(store: str, tmp_path: Path) -> None:
    reader = write(store, dataset_path(store, tmp_path), lambda w: w.set_item("d", {"k": [1]}))
    reader.get_item("d")["k"].append(2)
    assert reader.get_item("d") == {"k": [1]}


def test_create_dense_in_rows_writes_into_the_mapped_file(store: str, tmp_path: Path) -> None:
    rows, cols = 1000, 300
    path = dataset_path(store, tmp_path)
    with new_writer(store, path) as writer:
        writer.create_axis("cell", [f"c{i}" for i in range(rows)])
        writer.create_axis("gene", [f"g{j}" for j in range(cols)])
        with writer.create_dense_in_rows("cell,gene#X", dtype="float32") as matrix:
            assert isinstance(matrix, np.memmap) and matrix.shape == (rows, cols)
            assert matrix.dtype == np.float32 and not matrix.any()
            assert not writer.has_data2d("cell,gene#X")
            for start in range(0, rows, 128):
                stop = min(rows, start + 128)
                matrix[start:stop] = np.arange(start * cols, stop * cols).reshape(-1, cols)
        assert writer.has_data2d("cell,gene#X")
    read = fresh_reader(store, path).get_data2d("cell,gene#X")
    assert_mapped(read)
    assert same_bits(read, np.arange(rows * cols, dtype="float32").reshape(rows, cols))


def test_create_dense_in_rows_every_way_of_writing(store: str, tmp_path: Path) -> None:
    path = dataset_path(store, tmp_path)
    expected = np.zeros((6, 4), dtype="int16")
    with new_writer(store, path) as writer:
        writer.create_axis("r", [f"r{i}" for i in range(6)])
        writer.create_axis("c", [f"c{j}" for j in range(4)])
        with writer.create_dense_in_rows("r,c#m", "int16") as matrix:
            matrix[0:2] = np.arange(8).reshape(2, 4)  # whole rows (written with pwrite)
            expected[0:2] = np.arange(8).reshape(2, 4)
            assert matrix[1, 3] == 7  # visible through the mapping at once
            matrix[-1] = [9, 9, 9, 9.7]  # one row, converted like numpy does
            expected[-1] = [9, 9, 9, 9]
            matrix[2:4] = 5  # broadcast: through the mapping
            expected[2:4] = 5
            matrix[4, 1:3] = -1  # part of a row
            expected[4, 1:3] = -1
            view = matrix[3:5]
            view[1] = [1, 2, 3, 4]  # a view: through the mapping
            expected[4] = [1, 2, 3, 4]
            matrix[:, 0] += 100  # a column
            expected[:, 0] += 100
            assert same_bits(np.asarray(matrix), expected)
    assert same_bits(fresh_reader(store, path).get_data2d("r,c#m"), expected)


def test_create_dense_in_rows_failure_leaves_nothing(store: str, tmp_path: Path) -> None:
    path = dataset_path(store, tmp_path)
    with new_writer(store, path) as writer:
        writer.create_axis("a", ["x", "y"])
        with pytest.raises(RuntimeError), writer.create_dense_in_rows("a,a#m", "int8") as matrix:
            matrix[0] = 1
            raise RuntimeError("boom")
        assert not writer.has_data2d("a,a#m")
        writer.set_data2d("a,a#m", np.ones((2, 2), dtype="int8"))
    assert (fresh_reader(store, path).get_data2d("a,a#m") == 1).all()


def test_copy_between_stores_and_description(tmp_path: Path) -> None:
    first = write("files", tmp_path / "first", small)
    with H5Writer(tmp_path / "second.h5") as writer:
        writer.copy_from(first)
    second = H5Reader(tmp_path / "second.h5")
    with FilesWriter(tmp_path / "third") as writer:
        writer.copy_from(second)
    third = FilesReader(tmp_path / "third")
    assert all_bytes(tmp_path / "first") == all_bytes(tmp_path / "third")
    description = first.description()
    assert description == {
        "path": str(tmp_path / "first"),
        "format": "files",
        "axes": {"cell": 3, "gene": 2},
        "items": ["organism"],
        "data1d": {
            "cell#score": {"dtype": "float32", "shape": [3]},
            "cell#type": {"dtype": "str", "shape": [3]},
        },
        "data2d": {
            "cell,gene#UMIs": {"dtype": "int32", "shape": [3, 2], "layout": "dense"},
            "cell,gene#sparse": {"dtype": "float64", "shape": [3, 2], "layout": "sparse", "nnz": 2},
            "gene,cell#note": {"dtype": "str", "shape": [2, 3], "layout": "dense"},
        },
    }
    assert {**second.description(), "path": "", "format": ""} == {
        **description,
        "path": "",
        "format": "",
    }
    assert yaml.safe_load(yaml.safe_dump(third.description())) == third.description()


def test_a_description_does_not_read_the_vectors_it_describes(tmp_path: Path) -> None:
    """A job describes its input for input_metadata.yaml: a string vector of 10 million entries
    read to learn its dtype would take a gigabyte of memory."""
    n = 300_000
    with FilesWriter(tmp_path / "big") as writer:
        writer.create_axis("cell", np.array([f"c{i}" for i in range(n)], dtype=object))
        writer.set_data1d("cell#batch", np.array([f"b{i % 16}" for i in range(n)], dtype=object))
        writer.set_data1d("cell#age", np.arange(n, dtype=np.int16))

    def peak(work: Callable[[FilesReader], Any]) -> tuple[Any, int]:
        tracemalloc.start()
        try:
            return work(FilesReader(tmp_path / "big")), tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    description, described = peak(lambda reader: reader.description())
    assert description["data1d"] == {
        "cell#age": {"dtype": "int16", "shape": [n]},
        "cell#batch": {"dtype": "str", "shape": [n]},
    }
    _, read = peak(lambda reader: reader.get_data1d("cell#batch"))
    assert described * 5 < read


# Hypothesis round trips --------------------------------------------------------------------------

shapes_1d = st.integers(0, 12).map(lambda n: (n,))
shapes_2d = st.tuples(st.integers(0, 6), st.integers(0, 6))
texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=6
).filter(lambda text: text != "\x01")
strings = st.one_of(st.none(), texts, st.sampled_from(TRICKY_STRINGS))
entries = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
    min_size=1,
    max_size=6,
).filter(lambda text: text != "\x01")  # the HDF5 store reserves it for None (tested on its own)


@st.composite
def binary_arrays(draw: st.DrawFn, shapes: st.SearchStrategy[tuple[int, ...]]) -> np.ndarray:
    dtype = draw(st.sampled_from(DTYPES))
    return draw(hnp.arrays(np.dtype(dtype), draw(shapes)))


def axes_for(shape: tuple[int, ...]) -> list[list[str]]:
    return [[f"e{i}" for i in range(size)] for size in shape]


@HYPOTHESIS
@given(vector=binary_arrays(shapes_1d), matrix=binary_arrays(shapes_2d))
def test_hypothesis_binary_round_trip(store: str, vector: np.ndarray, matrix: np.ndarray) -> None:
    with tempfile.TemporaryDirectory() as folder:

        def fill(writer: Writer) -> None:
            writer.create_axis("v", axes_for(vector.shape)[0])
            rows, cols = axes_for(matrix.shape)
            writer.create_axis("r", rows)
            writer.create_axis("c", cols)
            writer.set_data1d("v#x", vector)
            writer.set_data2d("r,c#x", matrix)
            if matrix.dtype.name in SPARSE_DTYPES:
                writer.set_data2d("c,r#s", sp.csr_matrix(matrix.T))

        reader = write(store, dataset_path(store, Path(folder)), fill)
        assert same_bits(reader.get_data1d("v#x"), vector)
        assert same_bits(reader.get_data2d("r,c#x"), matrix)
        if matrix.dtype.name in SPARSE_DTYPES:
            back = reader.get_data2d("r,c#s")  # stored transposed: comes back as CSC
            assert isinstance(back, sp.csc_matrix)
            expected = matrix.copy()
            expected[matrix == 0] = 0  # scipy drops zeros, -0.0 included
            assert same_bits(back.toarray(), expected)


@HYPOTHESIS
@given(
    names=st.lists(entries, unique=True, max_size=8),
    data=st.data(),
)
def test_hypothesis_strings_round_trip(store: str, names: list[str], data: st.DataObject) -> None:
    vector = data.draw(st.lists(strings, min_size=len(names), max_size=len(names)))
    columns = data.draw(st.integers(0, 3))
    matrix = data.draw(
        st.lists(
            st.lists(strings, min_size=columns, max_size=columns),
            min_size=len(names),
            max_size=len(names),
        )
    )
    with tempfile.TemporaryDirectory() as folder:

        def fill(writer: Writer) -> None:
            writer.create_axis("name", names)
            writer.create_axis("col", [f"c{j}" for j in range(columns)])
            writer.set_data1d("name#value", np.array(vector, dtype=object))
            as_array = np.empty((len(names), columns), dtype=object)
            for i, row in enumerate(matrix):
                for j, value in enumerate(row):
                    as_array[i, j] = value
            writer.set_data2d("name,col#value", as_array)

        reader = write(store, dataset_path(store, Path(folder)), fill)
        assert list(reader.axis_entries("name")) == names
        assert reader.get_data1d("name#value").tolist() == vector
        read = reader.get_data2d("name,col#value")
        assert read.shape == (len(names), columns)
        assert read.tolist() == matrix


items = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8),
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)


@HYPOTHESIS
@given(value=items)
def test_hypothesis_items_round_trip_or_refused(store: str, value: Any) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = dataset_path(store, Path(folder))
        try:
            reader = write(store, path, lambda writer: writer.set_item("x", value))
        except DafError as error:
            assert "can't store" in str(error)  # never silently wrong
            return
        assert same_item(reader.get_item("x"), value)


# Names, preconditions, messages ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda w: w.set_item("a/b", 1), "invalid item name: 'a/b'"),
        (lambda w: w.set_item("a\0b", 1), "NUL"),
        (lambda w: w.set_item(".", 1), "invalid item name: '.'"),
        (lambda w: w.set_item("..", 1), "invalid item name: '..'"),
        (lambda w: w.set_item("", 1), "empty"),
        (lambda w: w.set_item("x#y", 1), "holds a #"),
        (lambda w: w.set_item("metadata", 1), "reserved"),
        (lambda w: w.set_item("input_metadata", 1), "reserved"),
        (lambda w: w.set_item("__daf__", 1), "reserved"),
        (lambda w: w.set_item("x" * 300, 1), "longer than"),
        (lambda w: w.set_item("a\ud800", 1), "not encodable as UTF-8"),
        (lambda w: w.create_axis("a,b", ["x"]), "invalid axis name: 'a,b'"),
        (lambda w: w.create_axis("a#b", ["x"]), "invalid axis name: 'a#b'"),
        (lambda w: w.create_axis("a/b", ["x"]), "invalid axis name"),
        (lambda w: w.create_axis("..", ["x"]), "invalid axis name"),
        (lambda w: w.create_axis("new", ["x", "x"]), "duplicate entry: 'x'"),
        (lambda w: w.create_axis("new", ["x", ""]), "empty entry"),
        (lambda w: w.create_axis("new", [1, 2]), "unsupported string value: 1 in: the entries"),
        (lambda w: w.create_axis("new", ["a", None]), "unsupported string value: None"),
        (lambda w: w.create_axis("new", np.zeros((1, 1), dtype=object)), "expected a 1D vector"),
        (lambda w: w.create_axis("cell", ["x"]), "existing axis: cell"),
        (lambda w: w.set_data1d("cell#a/b", [1, 2]), "invalid property name: 'a/b'"),
        (lambda w: w.set_data1d("cell#..", [1, 2]), "invalid property name"),
        (lambda w: w.set_data1d("nope#x", [1, 2]), "missing axis: nope in the dataset: "),
        (lambda w: w.set_data1d("cell", [1, 2]), "invalid 1D data name"),
        (lambda w: w.set_data1d("cell#x", [1, 2, 3]), "wrong length: 3"),
        (lambda w: w.set_data1d("cell#x", [1j, 2j]), "unsupported dtype: complex128"),
        (lambda w: w.set_data1d("cell#x", np.array([b"a", b"b"])), "unsupported dtype"),
        (lambda w: w.set_data1d("cell#x", np.array([1, "a"], dtype=object)), "unsupported string"),
        (lambda w: w.set_data1d("cell#x", ["a\0", "b"]), "NUL"),  # trailing: numpy would drop it
        (lambda w: w.set_data2d("cell,cell#x", [["a", "b\0c"], ["d", None]]), "NUL"),
        (lambda w: w.create_axis("new", ["x\0"]), "NUL"),
        (lambda w: w.set_data1d("cell#x", ["\ud800", "b"]), "UTF-8"),
        (lambda w: w.set_data1d("cell#x", np.zeros((2, 1))), "expected a 1D vector"),
        (lambda w: w.set_data1d("cell#score", [1, 2]), "existing 1D data: cell#score"),
        (lambda w: w.set_data2d("cell#x", np.zeros((2, 2))), "invalid 2D data name"),
        (lambda w: w.set_data2d("cell,cell#x", np.zeros((2, 3))), "wrong shape: [2, 3]"),
        (lambda w: w.set_data2d("cell,cell#x", np.zeros(2)), "expected a 2D matrix"),
        (lambda w: w.set_data2d("cell,cell#m", np.zeros((2, 2))), "existing 2D data"),
        (lambda w: w.set_data2d("cell,cell#x", np.zeros((2, 2), "f16")), "unsupported dtype"),
        (lambda w: w.set_item("x", {1: 2}), "non-string key"),
        (lambda w: w.set_item("x", object()), "unsupported value type"),
        (lambda w: w.set_item("organism", "again"), "existing item: organism"),
        (lambda w: w.create_dense_in_rows("cell,cell#m", "float32").__enter__(), "existing 2D"),
        (lambda w: w.create_dense_in_rows("cell,cell#y", "complex64").__enter__(), "unsupported"),
        (lambda w: w.get_item("nope"), "missing item: nope in the dataset: "),
        (lambda w: w.get_data1d("cell#nope"), "missing 1D data: cell#nope in the dataset: "),
        (lambda w: w.get_data2d("cell,cell#nope"), "missing 2D data: cell,cell#nope in the"),
        (lambda w: w.axis_entries("nope"), "missing axis: nope in the dataset: "),
    ],
)
def test_refusals(store: str, tmp_path: Path, call: Any, message: str) -> None:
    path = dataset_path(store, tmp_path)
    with new_writer(store, path) as writer:
        writer.set_item("organism", "human")
        writer.create_axis("cell", ["c1", "c2"])
        writer.set_data1d("cell#score", [1, 2])
        writer.set_data2d("cell,cell#m", np.eye(2))
        with pytest.raises(DafError, match=None) as error:
            call(writer)
        assert message in str(error.value)
        if "in the dataset: " in message:
            assert str(error.value).endswith(f"in the dataset: {path}")


def test_transposed_duplicate_is_refused(store: str, tmp_path: Path) -> None:
    with new_writer(store, dataset_path(store, tmp_path)) as writer:
        writer.create_axis("a", ["x"])
        writer.create_axis("b", ["y", "z"])
        writer.set_data2d("a,b#m", np.zeros((1, 2)))
        with pytest.raises(DafError, match="existing 2D data: b,a#m"):
            writer.set_data2d("b,a#m", np.zeros((2, 1)))


def test_h5_refuses_the_none_marker_string(tmp_path: Path) -> None:
    with H5Writer(tmp_path / "x.h5") as writer:
        writer.create_axis("a", ["x"])
        with pytest.raises(DafError, match="reserved for None"):
            writer.set_data1d("a#s", ["\x01"])


def test_closed_writer_and_reader_refuse_use(store: str, tmp_path: Path) -> None:
    writer = new_writer(store, dataset_path(store, tmp_path))
    writer.create_axis("a", ["x"])
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(DafError, match="the writer is closed"):
        writer.set_item("x", 1)
    with pytest.raises(DafError, match="the dataset is closed"):
        writer.axis_names()
    reader = fresh_reader(store, dataset_path(store, tmp_path))
    kept = reader.axis_entries("a")
    reader.close()
    assert list(kept) == ["x"]
    with pytest.raises(DafError, match="the dataset is closed"):
        reader.axis_entries("a")


# Atomic placement ---------------------------------------------------------------------------------


def test_written_aside_and_renamed_on_close(store: str, tmp_path: Path) -> None:
    path = dataset_path(store, tmp_path)
    writer = new_writer(store, path)
    small(writer)
    assert not path.exists()
    (aside,) = list(tmp_path.iterdir())
    assert aside.name.startswith(f".{path.name}.tmp-")
    writer.close()
    assert [child.name for child in tmp_path.iterdir()] == [path.name]
    assert fresh_reader(store, path).get_item("organism") == "human"


def test_exception_inside_with_leaves_nothing(store: str, tmp_path: Path) -> None:
    path = dataset_path(store, tmp_path)
    with pytest.raises(RuntimeError), new_writer(store, path) as writer:
        small(writer)
        raise RuntimeError("operation failed")
    assert list(tmp_path.iterdir()) == []


def test_abandoned_writer_is_cleaned_up(store: str, tmp_path: Path) -> None:
    writer = new_writer(store, dataset_path(store, tmp_path))
    small(writer)
    del writer
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_nothing_that_passes_for_a_dataset(store: str, tmp_path: Path) -> None:
    path = dataset_path(store, tmp_path)
    script = f"""
import os, numpy as np
from opchain.daf import FilesWriter, H5Writer
w = ({"FilesWriter" if store == "files" else "H5Writer"})({str(path)!r})
w.set_item("organism", "human")
w.create_axis("cell", ["a", "b"])
w.set_data1d("cell#x", np.ones(2))
os._exit(3)  # a crash: no close, no cleanup
"""
    result = subprocess.run([sys.executable, "-c", script], check=False)
    assert result.returncode == 3
    assert not path.exists()
    with pytest.raises(DafError):
        open_reader(path)
    (aside,) = list(tmp_path.iterdir())
    assert aside.name.startswith(".")
    with pytest.raises(DafError):
        open_reader(aside)


def test_existing_dataset_refused_unless_overwrite(store: str, tmp_path: Path) -> None:
    path = dataset_path(store, tmp_path)
    write(store, path, small)
    with pytest.raises(DafError, match="refuse to overwrite"):
        new_writer(store, path)
    writer = new_writer(store, path, overwrite=True)
    writer.set_item("organism", "mouse")
    assert fresh_reader(store, path).get_item("organism") == "human"  # old one until close
    writer.close()
    assert fresh_reader(store, path).get_item("organism") == "mouse"
    assert [child.name for child in tmp_path.iterdir()] == [path.name]


def test_dataset_appearing_meanwhile_is_not_clobbered(store: str, tmp_path: Path) -> None:
    path = dataset_path(store, tmp_path)
    writer = new_writer(store, path)
    writer.set_item("organism", "mouse")
    write(store, path, small)
    with pytest.raises(DafError):
        writer.close()
    assert fresh_reader(store, path).get_item("organism") == "human"
    assert [child.name for child in tmp_path.iterdir()] == [path.name]


def test_files_writer_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    with pytest.raises(DafError, match="not a dataset"):
        FilesWriter(tmp_path / "ds", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DafError, match="non-directory"):
        FilesWriter(tmp_path / "file", overwrite=True)
    (tmp_path / "empty").mkdir()
    with FilesWriter(tmp_path / "empty") as writer:  # an empty directory is fine
        writer.create_axis("a", ["x"])
    assert FilesReader(tmp_path / "empty").axis_names() == ["a"]


def test_h5_writer_refuses_to_replace_a_foreign_file(tmp_path: Path) -> None:
    (tmp_path / "notes.h5").write_text("not HDF5")
    with pytest.raises(DafError, match="not HDF5"):
        H5Writer(tmp_path / "notes.h5", overwrite=True)
    (tmp_path / "dir.h5").mkdir()
    with pytest.raises(DafError, match="refuse to overwrite"):
        H5Writer(tmp_path / "dir.h5", overwrite=True)
    assert (tmp_path / "notes.h5").read_text() == "not HDF5"


def test_files_writer_into_a_premade_directory(tmp_path: Path) -> None:
    target = tmp_path / ".result.tmp-engine"
    target.mkdir()
    (target / "metadata.yaml").write_text("step: 1\n")
    (target / "datastore").mkdir()
    (target / ".snakemake_timestamp").write_text("")
    writer = FilesWriter(target, atomic=False)
    small(writer)
    assert not (target / "__daf__.yaml").exists()  # written last: incomplete is not a dataset
    writer.close()
    assert (target / "__daf__.yaml").read_text() == "version:\n- 1\n- 0\n"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    reader = FilesReader(target)
    assert reader.item_names() == ["organism"]
    assert (target / "metadata.yaml").read_text() == "step: 1\n"
    with pytest.raises(DafError, match="refuse to overwrite the existing dataset"):
        FilesWriter(target, atomic=False)
    with FilesWriter(target, overwrite=True, atomic=False) as writer:
        writer.set_item("organism", "mouse")
    reader = FilesReader(target)
    assert reader.item_names() == ["organism"] and reader.axis_names() == []
    assert (target / "metadata.yaml").exists() and (target / "datastore").is_dir()
    (target / "__daf__.yaml").unlink()
    with pytest.raises(DafError, match="refuse to overwrite the existing files"):
        FilesWriter(target, atomic=False)


def test_h5_writer_into_a_premade_directory(tmp_path: Path) -> None:
    (tmp_path / "result").mkdir()
    with H5Writer(tmp_path / "result" / "data.h5", atomic=False) as writer:
        small(writer)
    assert [p.name for p in (tmp_path / "result").iterdir()] == ["data.h5"]
    reader = open_reader(tmp_path / "result")
    assert isinstance(reader, H5Reader) and reader.get_item("organism") == "human"


def test_written_bytes_are_deterministic(store: str, tmp_path: Path) -> None:
    write(store, dataset_path(store, tmp_path, "one"), small)
    write(store, dataset_path(store, tmp_path, "two"), small)
    one = all_bytes(dataset_path(store, tmp_path, "one"))
    two = all_bytes(dataset_path(store, tmp_path, "two"))
    if store == "h5":
        one, two = list(one.values()), list(two.values())
    assert one == two


# Reading what others put on disk -----------------------------------------------------------------


def test_readers_ignore_unknown_files_and_reserved_names(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    write("files", path, small)
    (path / "metadata.yaml").write_text("whatever: 1\n")
    (path / "input_metadata.yaml").write_text("- [\n")  # even malformed
    (path / ".snakemake_timestamp").write_text("")
    (path / "datastore").mkdir()
    (path / "datastore" / "x.yaml").write_text("1\n")
    (path / "notes.txt").write_text("hello")
    (path / "cell#orphan.array").write_bytes(b"\0" * 12)  # interrupted write: no sidecar
    (path / "a,b,c#x.csv").write_text("junk")
    (path / "cell#dir.yaml").mkdir()
    reader = FilesReader(path)
    assert reader.item_names() == ["organism"]
    assert reader.data1d_names("cell") == ["cell#score", "cell#type"]
    assert isinstance(open_reader(path), FilesReader)


def test_open_reader_picks_the_store(tmp_path: Path) -> None:
    write("files", tmp_path / "files", small)
    write("h5", tmp_path / "a.h5", small)
    write("h5", tmp_path / "a.hdf5", small)
    (tmp_path / "dir").mkdir()
    write("h5", tmp_path / "dir" / "data.h5", small)
    assert isinstance(open_reader(tmp_path / "files"), FilesReader)
    assert isinstance(open_reader(tmp_path / "a.h5"), H5Reader)
    assert isinstance(open_reader(str(tmp_path / "a.hdf5")), H5Reader)
    assert isinstance(open_reader(tmp_path / "dir"), H5Reader)
    (tmp_path / "plain").mkdir()
    with pytest.raises(DafError, match="not a daf dataset"):
        open_reader(tmp_path / "plain")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(DafError, match="not a daf dataset"):
        open_reader(tmp_path / "x.txt")
    with pytest.raises(DafError, match="missing daf dataset"):
        open_reader(tmp_path / "nope")


def test_files_reader_accepts_flow_style_extra_keys_minor_versions(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    write("files", path, small)
    (path / "__daf__.yaml").write_text("{version: [1, 7], comment: later}\n")
    (path / "cell#score.yaml").write_text(
        "{version: [1, 3], dtype: float32, shape: [3], extra: true}\n"
    )
    (path / "cell,gene#sparse.yaml").write_text(
        "{data_dtype: float64, indices_dtype: int32, indptr_dtype: int32, nnz: 2,"
        " shape: [3, 2], version: [1, 0]}"
    )
    reader = FilesReader(path)
    assert reader.get_data1d("cell#score")[0] == 1.5
    assert reader.get_data2d("cell,gene#sparse").nnz == 2


def test_files_reader_refuses_another_major_version(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    write("files", path, small)
    (path / "__daf__.yaml").write_text("version:\n- 2\n- 0\n")
    with pytest.raises(DafError, match=r"__daf__\.yaml: unsupported daf format version: 2\.0 "):
        FilesReader(path)


def test_strings_in_any_row_order_and_absent_rows(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    write("files", path, small)
    (path / "cell#type.csv").write_text('cell,type\nc3,three\r\nc1,"o,ne"\n\n')
    (path / "gene,cell#note.csv").write_text("gene,cell,note\ng2,c1,x\ng1,c3,y\n")
    (path / "cell#utf.csv").write_bytes("\ufeffcell,utf\nc2,é\n".encode())
    reader = FilesReader(path)
    assert reader.get_data1d("cell#type").tolist() == ["o,ne", None, "three"]
    assert reader.get_data2d("gene,cell#note").tolist() == [[None, None, "y"], ["x", None, None]]
    assert reader.get_data1d("cell#utf").tolist() == [None, "é", None]


def test_square_strings_named_like_the_axis_read_in_both_headers(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    write("files", path, lambda w: w.create_axis("g", ["x", "y"]))
    csv_file = path / "g,g#g.csv"
    for header in ("g.row,g.column,g.value", "g.row,g.column,g"):  # the reference's, opchain's old
        csv_file.write_text(f"{header}\ny,x,v\n")
        assert FilesReader(path).get_data2d("g,g#g").tolist() == [[None, None], ["v", None]]
    csv_file.write_text("g,g,g\ny,x,v\n")
    with pytest.raises(
        DafError, match=r"g,g#g\.csv:1: malformed CSV header: g,g,g \(expected: g\.row"
    ):
        FilesReader(path).get_data2d("g,g#g")


def test_sparse_shape_comes_from_the_sidecar(tmp_path: Path) -> None:
    matrix = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 2, 0, 0]], dtype="int16"))
    reader = write(
        "files",
        tmp_path / "ds",
        lambda w: (
            w.create_axis("r", ["a", "b"]),
            w.create_axis("c", ["w", "x", "y", "z"]),
            w.set_data2d("r,c#m", matrix),
        ),
    )
    assert reader.get_data2d("r,c#m").shape == (2, 4)  # indices never reach the last 2 columns


# Exact bytes of the files format -----------------------------------------------------------------


def test_exact_bytes_of_the_files_format(tmp_path: Path) -> None:
    path = tmp_path / "ds"

    def fill(writer: Writer) -> None:
        writer.set_item("organism", "human")
        writer.set_item("params", {"k": 3, "a": [1, 2]})
        writer.create_axis("cell", ["A", "b,c", 'q"d', "e\nf", " g"])
        writer.create_axis("gene", ["x", "y"])
        writer.set_data1d("gene#score", np.array([1.0, 2.0], dtype="float32"))
        writer.set_data1d("cell#cell", np.array(["1", None, "", "None", "a,b"], dtype=object))
        writer.set_data2d("gene,gene#gene", np.array([["p", None], [None, "q"]], dtype=object))
        writer.set_data2d("gene,gene#gene.row", np.array([["r", None], [None, None]], dtype=object))
        writer.set_data2d("gene,cell#c", np.array([[None] * 5, ["v", *[None] * 4]], dtype=object))
        writer.set_data2d("gene,gene#m", np.array([[1, 2], [3, 4]], dtype="uint8"))
        writer.set_data2d(
            "cell,gene#s",
            sp.csr_matrix(np.array([[0, 1], [0, 0], [2, 0], [0, 0], [0, 0]], dtype="float64")),
        )

    write("files", path, fill)
    files = all_bytes(path)
    assert files["__daf__.yaml"] == b"version:\n- 1\n- 0\n"
    assert files["organism.yaml"] == b"human\n...\n"
    assert files["params.yaml"] == b"a:\n- 1\n- 2\nk: 3\n"
    assert files["cell#.csv"] == b'cell\nA\n"b,c"\n"q""d"\n"e\nf"\n g\n'
    assert files["gene#score.yaml"] == b"dtype: float32\nshape:\n- 2\nversion:\n- 1\n- 0\n"
    assert files["gene#score.array"] == np.array([1, 2], dtype="<f4").tobytes()
    assert files["cell#cell.csv"] == b'cell,cell.value\nA,1\n"q""d",\n"e\nf",None\n g,"a,b"\n'
    # as the reference: a property named like its (same) axes is suffixed .value
    assert files["gene,gene#gene.csv"] == b"gene.row,gene.column,gene.value\nx,x,p\ny,y,q\n"
    assert files["gene,gene#gene.row.csv"] == b"gene.row,gene.column,gene.row.value\nx,x,r\n"
    assert files["gene,cell#c.csv"] == b"gene,cell,c\ny,A,v\n"
    assert files["gene,gene#m.yaml"] == b"dtype: uint8\nshape:\n- 2\n- 2\nversion:\n- 1\n- 0\n"
    assert files["gene,gene#m.array"] == bytes([1, 2, 3, 4])
    assert files["cell,gene#s.yaml"] == (
        b"data_dtype: float64\nindices_dtype: int32\nindptr_dtype: int32\nnnz: 2\n"
        b"shape:\n- 5\n- 2\nversion:\n- 1\n- 0\n"
    )
    assert files["cell,gene#s.data"] == np.array([1.0, 2.0], dtype="<f8").tobytes()
    assert files["cell,gene#s.indices"] == np.array([1, 0], dtype="<i4").tobytes()
    assert files["cell,gene#s.indptr"] == np.array([0, 1, 1, 2, 2, 2], dtype="<i4").tobytes()
    assert sorted(files) == sorted(
        [
            "__daf__.yaml", "organism.yaml", "params.yaml", "cell#.csv", "gene#.csv",
            "gene#score.yaml", "gene#score.array", "cell#cell.csv", "gene,gene#gene.csv",
            "gene,gene#gene.row.csv", "gene,cell#c.csv", "gene,gene#m.yaml", "gene,gene#m.array",
            "cell,gene#s.yaml", "cell,gene#s.data", "cell,gene#s.indices", "cell,gene#s.indptr",
        ]
    )  # fmt: skip


def test_h5_layout_matches_the_reference(tmp_path: Path) -> None:
    path = tmp_path / "ds.h5"
    write("h5", path, small)
    with h5py.File(path, "r") as file:
        header = file["__daf__"]
        assert header.dtype == np.int8 and header[()].tolist() == [1, 0]
        assert header.attrs["organism"] == "human"
        assert file["cell#"][()].tolist() == [b"c1", b"c2", b"c3"]
        assert file["cell#score"].dtype == np.float32
        assert file["cell#type"][()].tolist() == [b"T", b"\x01", b""]
        group = file["cell,gene#sparse"]
        assert isinstance(group, h5py.Group)
        assert sorted(group) == ["data", "indices", "indptr"]
        assert group.attrs["shape"].tolist() == [3, 2]
        assert file["cell,gene#UMIs"].id.get_create_plist().get_layout() == h5py.h5d.CONTIGUOUS
    dense = H5Reader(path).get_data2d("cell,gene#UMIs")
    assert isinstance(dense, np.memmap) and Path(dense.filename) == path.resolve()


def test_h5_reader_reads_plain_h5py_files_and_groups(tmp_path: Path) -> None:
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as file:
        group = file.create_group("inside")
        group.create_dataset("__daf__", data=np.array([1, 3], dtype="int8"))
        group["__daf__"].attrs["list"] = np.array([1, 2, 3])
        group["__daf__"].attrs["name"] = "x"
        group["__daf__"].attrs["bytes"] = np.bytes_(b"raw")
        group.create_dataset("cell#", data=np.array([b"a", b"b", b"c"]))  # ASCII, as the reference
        group.create_dataset("cell#s", data=np.array([b"x", b"\x01", b"z"]))
        group.create_dataset("cell#v", data=np.array(["p", "q", "r"], dtype=object),
                             dtype=h5py.string_dtype())  # fmt: skip
        group.create_dataset("cell#chunked", data=np.arange(3.0), chunks=(2,), compression="gzip")
        group.create_dataset("cell#big_endian", data=np.arange(3, dtype=">i4"))
        group.create_dataset("cell,cell#m", data=np.eye(3), chunks=(1, 3))
        group.create_dataset("other", data=[1])  # not daf: ignored
    with h5py.File(path, "r") as file:
        reader = H5Reader(file["inside"])
        assert reader.get_item("list") == [1, 2, 3]
        assert reader.get_item("name") == "x" and reader.get_item("bytes") == "raw"
        assert reader.get_data1d("cell#s").tolist() == ["x", None, "z"]
        assert reader.get_data1d("cell#v").tolist() == ["p", "q", "r"]
        chunked = reader.get_data1d("cell#chunked")
        assert chunked.tolist() == [0, 1, 2] and not chunked.flags.writeable
        assert same_bits(reader.get_data1d("cell#big_endian"), np.arange(3, dtype="<i4"))
        assert (reader.get_data2d("cell,cell#m") == np.eye(3)).all()


# The reference fixture ---------------------------------------------------------------------------


def test_fixture_is_read_completely_and_matches_its_sidecars() -> None:
    reader = FilesReader(FIXTURE)
    covered = {"__daf__.yaml"}
    assert reader.item_names() == ["created"]
    assert reader.get_item("created") == datetime.datetime(2022, 7, 6, 16, 49, 44)
    covered.add("created.yaml")
    sizes = {"batch": 13, "cell": 524, "cell_type": 7, "gene": 10, "metacell": 10, "sex": 2}
    assert {axis: reader.axis_size(axis) for axis in reader.axis_names()} == sizes
    for axis in sizes:
        with open(FIXTURE / f"{axis}#.csv", newline="", encoding="utf-8") as file:
            rows = list(csv.reader(file))
        assert rows[0] == [axis]
        assert list(reader.axis_entries(axis)) == [row[0] for row in rows[1:]]
        covered.add(f"{axis}#.csv")
    names = [name for axis in sizes for name in reader.data1d_names(axis)]
    names += [name for rows in sizes for cols in sizes for name in reader.data2d_names(rows, cols)]
    assert len(names) == 12
    for name in names:
        data = reader.get_data1d(name) if "," not in name else reader.get_data2d(name)
        csv_path = FIXTURE / f"{name}.csv"
        if csv_path.exists():
            covered.add(csv_path.name)
            with open(csv_path, newline="", encoding="utf-8") as file:
                rows = list(csv.reader(file))
            axis, prop = name.split("#")
            assert rows[0] == [axis, prop]
            by_entry = {row[0]: row[1] for row in rows[1:]}
            expected = [by_entry.get(entry) for entry in reader.axis_entries(axis)]
            assert data.tolist() == expected
            continue
        sidecar = yaml.safe_load((FIXTURE / f"{name}.yaml").read_text())
        covered.add(f"{name}.yaml")
        assert sidecar["version"] == [1, 0]
        axes = name.split("#")[0].split(",")
        assert sidecar["shape"] == [sizes[axis] for axis in axes]
        if "dtype" in sidecar:
            covered.add(f"{name}.array")
            assert_mapped(data)
            assert data.dtype == np.dtype(sidecar["dtype"])
            raw = np.fromfile(FIXTURE / f"{name}.array", dtype=sidecar["dtype"])
            assert same_bits(data, raw.reshape(sidecar["shape"]))
        else:
            assert isinstance(data, sp.csr_matrix) and data.nnz == sidecar["nnz"]
            for part in ("data", "indices", "indptr"):
                covered.add(f"{name}.{part}")
                raw = np.fromfile(FIXTURE / f"{name}.{part}", dtype=sidecar[f"{part}_dtype"])
                assert same_bits(getattr(data, part), raw)
                assert_mapped(getattr(data, part))
            data.check_format(full_check=True)
    assert covered == {path.name for path in FIXTURE.iterdir()}
    assert reader.get_data1d("gene#forbidden_gene").dtype == bool
    assert reader.get_data2d("cell,gene#UMIs").sum() == pytest.approx(
        np.fromfile(FIXTURE / "cell,gene#UMIs.data", dtype="float32").sum()
    )


def test_fixture_rewritten_is_byte_identical(tmp_path: Path) -> None:
    with FilesWriter(tmp_path / "copy") as writer:
        writer.copy_from(FilesReader(FIXTURE))
    original = all_bytes(FIXTURE)
    copy = all_bytes(tmp_path / "copy")
    assert sorted(original) == sorted(copy)
    # The fixture's only item was not written by PyYAML (no "..." document end); the value is.
    assert copy.pop("created.yaml") == b"2022-07-06 16:49:44\n...\n"
    original.pop("created.yaml")
    assert original == copy


def test_fixture_copies_to_h5_and_back(tmp_path: Path) -> None:
    with H5Writer(tmp_path / "fixture.h5") as writer:
        writer.copy_from(FilesReader(FIXTURE))
    with FilesWriter(tmp_path / "back") as writer:
        writer.copy_from(H5Reader(tmp_path / "fixture.h5"))
    original = all_bytes(FIXTURE)
    back = all_bytes(tmp_path / "back")
    original.pop("created.yaml")
    back.pop("created.yaml")
    assert original == back


def csr_source(tmp_path: Path) -> tuple[Reader, sp.csr_matrix]:
    """A files dataset holding a CSR with an empty row, and that CSR read back (memory-mapped)."""
    matrix = sp.csr_matrix(np.array([[0, 2, 0, 1], [0, 0, 0, 0], [5, 0, 3, 0]], dtype="int64"))
    with FilesWriter(tmp_path / "source") as writer:
        writer.create_axis("cell", ["a", "b", "c"])
        writer.create_axis("gene", ["w", "x", "y", "z"])
        writer.set_data2d("cell,gene#UMIs", matrix)
    reader = FilesReader(tmp_path / "source")
    return reader, reader.get_data2d("cell,gene#UMIs")


def test_create_sparse_values_keeps_the_structure(store: str, tmp_path: Path) -> None:
    reader, like = csr_source(tmp_path)
    path = dataset_path(store, tmp_path)
    with new_writer(store, path) as writer:
        for axis in ("cell", "gene"):
            writer.create_axis(axis, reader.axis_entries(axis))
        with writer.create_sparse_values("cell,gene#half", like, "float32") as values:
            assert values.shape == (4,)
            values[0:2] = np.asarray(like.data[0:2]) / 2  # in slices, as a streaming step does
            values[2:4] = np.asarray(like.data[2:4]) / 2
    result = fresh_reader(store, path).get_data2d("cell,gene#half")
    assert sp.issparse(result) and result.dtype == np.float32
    assert (result.toarray() == like.toarray() / 2).all()
    np.testing.assert_array_equal(result.indptr, like.indptr)
    if store == "files":  # the structure is the source's files, linked: no bytes written
        for part in ("indices", "indptr"):
            source = tmp_path / "source" / f"cell,gene#UMIs.{part}"
            assert (path / f"cell,gene#half.{part}").stat().st_ino == source.stat().st_ino


def test_create_sparse_values_failure_or_wrong_structure_leaves_nothing(
    store: str, tmp_path: Path
) -> None:
    reader, like = csr_source(tmp_path)
    path = dataset_path(store, tmp_path)
    with new_writer(store, path) as writer:
        writer.create_axis("cell", reader.axis_entries("cell"))
        writer.create_axis("gene", reader.axis_entries("gene"))
        with pytest.raises(RuntimeError), writer.create_sparse_values("cell,gene#v", like, "f4"):
            raise RuntimeError("boom")
        for wrong in (like[:2], like.toarray()):
            with pytest.raises(DafError, match="expected a CSR matrix of shape \\[3, 4\\]"):
                writer.create_sparse_values("cell,gene#v", wrong, "f4").__enter__()
        assert not writer.has_data2d("cell,gene#v")
        writer.set_data2d("cell,gene#v", like)
    assert (fresh_reader(store, path).get_data2d("cell,gene#v").toarray() == like.toarray()).all()
    if store == "files":
        assert sorted(p.name for p in path.glob("cell,gene#v*")) == [
            f"cell,gene#v.{suffix}" for suffix in ("data", "indices", "indptr", "yaml")
        ]


def test_create_sparse_in_rows_fills_values_and_indices(store: str, tmp_path: Path) -> None:
    """A CSR matrix of given row pointers, filled slice by slice straight into storage; a failure
    or wrong row pointers leave nothing, and the name free."""
    reader, like = csr_source(tmp_path)
    path = dataset_path(store, tmp_path)
    with new_writer(store, path) as writer:
        for axis in ("cell", "gene"):
            writer.create_axis(axis, reader.axis_entries(axis))
        for wrong in (like.indptr[:-1], like.indptr[::-1], like.indptr.astype(np.float64)):
            with pytest.raises(DafError, match="expected 4 increasing row pointers from 0"):
                writer.create_sparse_in_rows("cell,gene#v", wrong, "f4").__enter__()
        with (
            pytest.raises(RuntimeError),
            writer.create_sparse_in_rows("cell,gene#v", like.indptr, "f4"),
        ):
            raise RuntimeError("boom")
        assert not writer.has_data2d("cell,gene#v")
        with writer.create_sparse_in_rows("cell,gene#v", like.indptr, "float64") as (
            values,
            indices,
        ):
            assert values.shape == indices.shape == (4,) and indices.dtype == np.int32
            for low, high in ((0, 1), (1, 4)):  # in slices, as a streaming step does
                values[low:high] = np.asarray(like.data[low:high]) * 2
                indices[low:high] = like.indices[low:high]
    result = fresh_reader(store, path).get_data2d("cell,gene#v")
    assert sp.issparse(result) and result.dtype == np.float64
    assert (result.toarray() == like.toarray() * 2).all()
    if store == "files":
        assert sorted(p.name for p in path.glob("cell,gene#v*")) == [
            f"cell,gene#v.{suffix}" for suffix in ("data", "indices", "indptr", "yaml")
        ]


def test_whole_mapped_files_are_linked_and_parts_copied(tmp_path: Path) -> None:
    """A read-only map of a whole file is stored as a hard link of it; a view of part of one, or
    the same array writable, as a copy of its bytes: linking them would store the wrong values,
    or values that later change."""
    reader, like = csr_source(tmp_path)
    with FilesWriter(tmp_path / "copy") as writer:
        writer.create_axis("cell", reader.axis_entries("cell"))
        writer.create_axis("gene", reader.axis_entries("gene"))
        writer.set_data2d("cell,gene#same", like)
        writer.set_data1d("gene#first_row", like.toarray()[0])
        writer.set_data1d("cell#ends", like.indptr[1:])  # a view: its map's offset is stale
        writer.set_data1d("cell#starts", np.array(like.indptr[:-1]))  # a copy in memory
    copy = FilesReader(tmp_path / "copy")
    source = tmp_path / "source" / "cell,gene#UMIs.data"
    assert (tmp_path / "copy" / "cell,gene#same.data").stat().st_ino == source.stat().st_ino
    assert copy.get_data2d("cell,gene#same").toarray().tolist() == like.toarray().tolist()
    assert copy.get_data1d("cell#ends").tolist() == [2, 2, 4]
    assert copy.get_data1d("cell#starts").tolist() == [0, 2, 2]
    assert (tmp_path / "copy" / "cell#ends.array").stat().st_nlink == 1


def test_sidecars_are_the_bytes_yaml_safe_dump_writes() -> None:
    """Sidecars are formatted without PyYAML's emitter, byte for byte as it would write them."""
    for dtype in (*files_module.DTYPES, *files_module.INDEX_DTYPES):
        for content in (
            {"dtype": dtype, "shape": [3]},
            {"dtype": dtype, "shape": [0, 2**40]},
            {"data_dtype": dtype, "indices_dtype": "int32", "indptr_dtype": "int64", "nnz": 0,
             "shape": [5, 7]},
        ):  # fmt: skip
            content = {**content, "version": [1, 0]}
            assert files_module.sidecar_yaml(content) == yaml.safe_dump(content)


def test_a_sidecar_as_written_is_read_without_the_yaml_parser_to_the_same_content() -> None:
    """Sidecars in the form sidecar_yaml writes are read by a parser of that form alone, to what
    YAML reads; any other text (flow style, other key order, leading zeros, words YAML reads as
    something else, digits beyond ASCII) is left to the YAML parser."""
    for dtype in (*files_module.DTYPES, *files_module.INDEX_DTYPES):
        for content in (
            {"dtype": dtype, "shape": [3], "version": [1, 0]},
            {"data_dtype": dtype, "indices_dtype": "int32", "indptr_dtype": "int64", "nnz": 0,
             "shape": [5, 2**40], "version": [1, 0]},
            {"dtype": dtype, "shape": [], "version": [1, 0]},
        ):  # fmt: skip
            text = files_module.sidecar_yaml(content)
            assert files_module.sidecar_content(text) == yaml.safe_load(text) == content
    for text in (
        "{dtype: int64, shape: [3], version: [1, 0]}\n",
        "shape:\n- 3\ndtype: int64\n",
        "dtype: int64\nshape:\n- 03\n",
        "dtype: yes\n",
        "nnz: \u0661\u0662\n",
        "nnz: \u00b2\n",
        "dtype:  int64\n",
        "dtype: int64\ndtype: int64\n",
        "- 3\n",
        "dtype: int64",
    ):
        assert files_module.sidecar_content(text) is None, text


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "cell#score.array").write_bytes(b"\0" * 8),
         r"cell#score\.array: truncated data file: 8 bytes, expected 12"),
        (lambda d: (d / "cell#score.yaml").write_text(
            "dtype: float32\nshape:\n- 4\nversion:\n- 1\n- 0\n"),
         r"cell#score\.yaml: shape \[4\] does not match the axes cell with \[3\] entries"),
        (lambda d: (d / "cell#score.yaml").write_text("{dtype: complex64, shape: [3], version: [1, 0]}"),
         r"cell#score\.yaml: unknown dtype: complex64"),
    ],
)  # fmt: skip
def test_a_carried_vector_is_checked_as_reading_it_would_be(
    tmp_path: Path, damage: Callable[[Path], Any], message: str
) -> None:
    """A vector of numbers is carried by linking its files, not reading them, but only after the
    checks reading it makes: a damaged one is the reader's one-line error, and no dataset is
    left."""
    with FilesWriter(tmp_path / "source") as writer:
        writer.create_axis("cell", ["a", "b", "c"])
        writer.set_data1d("cell#score", np.array([1.0, 2.0, 3.0], dtype=np.float32))
    damage(tmp_path / "source")
    reader = FilesReader(tmp_path / "source")
    with pytest.raises(DafError, match=message), FilesWriter(tmp_path / "copy") as writer:
        writer.copy_axis(reader, "cell")
        writer.copy_data1d(reader, "cell#score")
    assert not (tmp_path / "copy").exists()


def test_a_carried_vector_links_its_files_and_an_equal_header_and_items(tmp_path: Path) -> None:
    """Copying a binary vector links its data file and, when it holds exactly the bytes that
    would be written, its sidecar; the header and items too. A file with other bytes (a flow
    style sidecar, another item) is written: the result is the same bytes either way."""
    with FilesWriter(tmp_path / "source") as writer:
        writer.create_axis("cell", ["a", "b", "c"])
        writer.set_data1d("cell#score", np.array([1.0, 2.0, 3.0], dtype=np.float32))
        writer.set_data1d("cell#count", np.array([1, 2, 3], dtype=np.int64))
        writer.set_item("organism", "human")
    source = tmp_path / "source"
    (source / "cell#count.yaml").write_text("{dtype: int64, shape: [3], version: [1, 0]}\n")
    reader = FilesReader(source)
    with FilesWriter(tmp_path / "copy") as writer:
        writer.copy_axis(reader, "cell")
        for name in reader.data1d_names("cell"):
            writer.copy_data1d(reader, name)
        writer.set_item("organism", "human")
        writer.set_item("tissue", "blood")
    copy = tmp_path / "copy"
    same = {
        path.name
        for path in copy.iterdir()
        if (source / path.name).exists()
        and path.stat().st_ino == (source / path.name).stat().st_ino
    }
    assert same == {
        "__daf__.yaml", "cell#.csv", "cell#score.array", "cell#score.yaml", "cell#count.array",
        "organism.yaml",
    }  # fmt: skip
    assert (
        copy / "cell#count.yaml"
    ).read_text() == "dtype: int64\nshape:\n- 3\nversion:\n- 1\n- 0\n"
    copied = FilesReader(copy)
    assert copied.get_data1d("cell#score").tolist() == [1.0, 2.0, 3.0]
    assert copied.get_data1d("cell#count").tolist() == [1, 2, 3]
    assert copied.get_item("tissue") == "blood"


def test_a_reopened_reader_shares_its_checks_but_not_its_matrices(tmp_path: Path) -> None:
    """A reopened reader (a batch job's next dataset of the same input) reads and checks nothing
    again, and gets its own csr_matrix over the same mapped buffers: changing the one an
    operation got changes nothing the next gets. Closing one leaves the other open."""
    reader, first = csr_source(tmp_path)
    values = first.toarray().tolist()
    first.data = np.zeros_like(first.data)  # an operation's own business
    reader.close()
    again = reader.reopened()
    matrix = again.get_data2d("cell,gene#UMIs")
    assert matrix is not first and matrix.toarray().tolist() == values
    key = ("csr", "cell", "gene", "UMIs")
    assert again._cache[key] is reader._cache[key]  # mapped and checked once
    with pytest.raises(DafError, match="closed"):
        reader.axis_names()


def test_copy_axis_links_a_checked_axis_file(store: str, tmp_path: Path) -> None:
    """Between files datasets an axis is copied as its file, linked, after a check that holds
    hashes, not strings; otherwise from its entries. Either way, the same entries."""
    reader, _ = csr_source(tmp_path)
    path = dataset_path(store, tmp_path)
    with new_writer(store, path) as writer:
        writer.copy_axis(reader, "cell")
        assert writer.axis_size("cell") == 3
        with pytest.raises(DafError, match="existing axis: cell"):
            writer.copy_axis(reader, "cell")
    assert fresh_reader(store, path).axis_entries("cell").tolist() == ["a", "b", "c"]
    if store == "files":
        source = tmp_path / "source" / "cell#.csv"
        assert (path / "cell#.csv").stat().st_ino == source.stat().st_ino
    with FilesWriter(tmp_path / "back") as writer:  # and back into files
        writer.copy_axis(fresh_reader(store, path), "cell")
    assert FilesReader(tmp_path / "back").axis_entries("cell").tolist() == ["a", "b", "c"]


def test_copy_data1d_links_a_string_vector_that_lists_the_axis(store: str, tmp_path: Path) -> None:
    """A string vector with a value for every entry, in the axis's order, is checked byte by byte
    and linked; any other (missing values, quoted values, another order) is read and written.
    Either way, the same values."""
    values = {
        "cell#plain": ["T", "", "ß cell"],
        "cell#missing": ["T", None, "B"],
        "cell#quoted": ["T, naive", 'say "B"', "B"],
    }
    with FilesWriter(tmp_path / "source") as writer:
        writer.create_axis("cell", ["a", "b", "c"])
        for name, vector in values.items():
            writer.set_data1d(name, np.array(vector, dtype=object))
    (tmp_path / "source" / "cell#shuffled.csv").write_text("cell,shuffled\nc,3\na,1\nb,2\n")
    values["cell#shuffled"] = ["1", "2", "3"]
    reader = FilesReader(tmp_path / "source")
    path = dataset_path(store, tmp_path)
    with new_writer(store, path) as writer:
        writer.copy_axis(reader, "cell")
        for name in reader.data1d_names("cell"):
            writer.copy_data1d(reader, name)
        with pytest.raises(DafError, match="existing 1D data: cell#plain"):
            writer.copy_data1d(reader, "cell#plain")
    copied = fresh_reader(store, path)
    assert {name: copied.get_data1d(name).tolist() for name in values} == values
    if store == "files":
        linked = {
            name
            for name in values
            if (path / f"{name}.csv").stat().st_ino
            == (tmp_path / "source" / f"{name}.csv").stat().st_ino
        }
        assert linked == {"cell#plain"}


@pytest.mark.parametrize(
    ("axis", "vector", "as_column"),
    [
        ("a\nb\nc\n", "a,x\nb,\nc,ß\n", True),  # in the axis's order
        ("a\nb\nc\n", "\ufeffcell,type\na,x\nb,y\nc,z\n", True),  # after a byte-order mark
        ("a\nb\nc\n", "a,x\nc,z\n", False),  # a missing value
        ("a\nb\nc\n", "b,y\na,x\nc,z\n", False),  # another order
        ("a\n\nb\n", "a,x\n,y\nb,z\n", False),  # a blank line in the axis, an empty entry
        ("a\nb\na\n", "a,x\nb,y\na,z\n", True),  # a duplicate axis entry
        ("a\nb\n", "a,x\nb,y,z\n", False),  # three fields
        ("a\nb\n", "a,x\nb,\xff\n", False),  # not UTF-8
    ],
)
def test_string_vectors_in_axis_order_read_as_any_other(
    tmp_path: Path, axis: str, vector: str, as_column: bool
) -> None:
    """A string vector listing its axis in order is read as its values column (no index of the
    axis), whole or in pieces, with the same values, or the same error, as matching entry by
    entry."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "__daf__.yaml").write_text("version: [1, 0]\n")
    (tmp_path / "d" / "cell#.csv").write_text("cell\n" + axis)
    header = "" if vector.startswith("\ufeff") else "cell,type\n"
    raw = (header + vector).encode("utf-8").replace("\xff".encode(), b"\xff")
    (tmp_path / "d" / "cell#type.csv").write_bytes(raw)

    def outcome(read: Callable[[FilesReader], np.ndarray | None]) -> object:
        try:
            found = read(FilesReader(tmp_path / "d"))
            return None if found is None else found.tolist()
        except DafError as error:
            return str(error)

    by_entry = outcome(
        lambda reader: reader._read_strings("cell#type", ("cell",), [["cell", "type"]])
    )

    def by_column(reader: FilesReader) -> np.ndarray | None:
        chunks = reader._strings_in_axis_order("cell", "type")
        return None if chunks is None else np.array([v for c in chunks for v in c], dtype=object)

    def in_pieces(reader: FilesReader) -> np.ndarray:
        return np.concatenate([np.zeros(0, object), *reader.data1d_chunks("cell#type")])

    assert outcome(lambda reader: reader.get_data1d("cell#type")) == by_entry
    assert outcome(in_pieces) == by_entry
    assert outcome(by_column) == (by_entry if as_column else None)


@pytest.mark.parametrize("chunk", [4 << 20, 1])
@pytest.mark.parametrize("take", [[], [0], [1, 2], [0, 2, 3, 4], [0, 1, 2, 3, 4]])
def test_copy_axis_and_data1d_take_entries(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, take: list[int], chunk: int
) -> None:
    """With ``take``, an axis and its vectors keep the entries at those positions, in order:
    between files datasets taken from the files' lines chunk by chunk (``chunk``: 1 puts every
    line in its own chunk, as lines fall across the chunks of a file of millions)."""
    chunks = files_module._line_chunks
    monkeypatch.setattr(files_module, "_line_chunks", lambda data, at: chunks(data, at, chunk))
    entries = ["a", "bb", "ß", "d d", "e"]
    values = {
        "cell#plain": ["T", "", "ß cell", "x", "y"],
        "cell#missing": ["T", None, "B", None, "C"],
        "cell#score": np.arange(5, dtype=np.float32),
    }
    with FilesWriter(tmp_path / "source") as writer:
        writer.create_axis("cell", entries)
        for name, vector in values.items():
            writer.set_data1d(name, np.array(vector, dtype=getattr(vector, "dtype", object)))
    reader = FilesReader(tmp_path / "source")
    positions = np.array(take, dtype=np.int64)
    path = dataset_path(store, tmp_path)
    with new_writer(store, path) as writer, monkeypatch.context() as strings:
        if store == "files":  # lines are taken from the files, never read as strings
            strings.setattr(FilesReader, "_axis_entries", None)
        writer.copy_axis(reader, "cell", positions)
        writer.copy_data1d(reader, "cell#plain", positions)
        strings.undo()
        writer.copy_data1d(reader, "cell#missing", positions)
        writer.copy_data1d(reader, "cell#score", positions)
    copied = fresh_reader(store, path)
    assert copied.axis_entries("cell").tolist() == [entries[i] for i in take]
    for name, vector in values.items():
        assert copied.get_data1d(name).tolist() == [vector[i] for i in take], name


def test_vectors_scan_in_pieces_and_strings_write_without_the_axis_entries(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``data1d_chunks`` gives a vector's values in axis order, in pieces; between files
    datasets a string vector listing its axis, and any string vector written onto a copied axis,
    never needs the axis's entries as strings (a line a chunk here, as in a file of millions)."""
    chunks = files_module._line_chunks
    monkeypatch.setattr(files_module, "_line_chunks", lambda data, at: chunks(data, at, 1))
    monkeypatch.setattr(interface_module, "CHUNK_ENTRIES", 2)
    entries = ["a", "bb", "ß", "d d", "e"]
    values = {
        "cell#plain": ["T", "", "ß cell", "x", "y"],
        "cell#missing": ["T", None, "B", None, "C"],
        "cell#tricky": TRICKY_STRINGS[:5],
        "cell#score": np.arange(5, dtype=np.float32),
    }
    path = dataset_path(store, tmp_path, "source")
    with new_writer(store, path) as writer:
        writer.create_axis("cell", entries)
        for name, vector in values.items():
            writer.set_data1d(name, np.array(vector, dtype=getattr(vector, "dtype", object)))
    with FilesWriter(tmp_path / "copy") as writer, monkeypatch.context() as strings:
        strings.setattr(FilesReader, "_axis_entries", None)  # neither dataset's entries are read
        reader = fresh_reader(store, path)
        writer.copy_axis(FilesReader(tmp_path / "source") if store == "files" else reader, "cell")
        if store == "files":
            pieces = list(reader.data1d_chunks("cell#plain"))
            assert [piece.tolist() for piece in pieces] == [
                [value] for value in values["cell#plain"]
            ]
            writer.set_data1d("cell#more", np.concatenate(pieces))
    reader = fresh_reader(store, path)
    for name, vector in values.items():
        pieces = list(reader.data1d_chunks(name))
        assert all(len(piece) <= 2 for piece in pieces), name
        assert np.concatenate(pieces).tolist() == list(vector), name
    if store == "files":
        assert (
            FilesReader(tmp_path / "copy").get_data1d("cell#more").tolist() == values["cell#plain"]
        )


@pytest.mark.parametrize(
    ("axis", "vector", "problem"),
    [
        ("a\nb\na\n", None, "cell#.csv:4: duplicate axis entry: 'a'"),
        ("b\na\nc\nc\na\n", None, "cell#.csv:5: duplicate axis entry: 'c'"),
        ("a\nb\n", "a,1\nz,2\n", "cell#type.csv:3: unknown cell entry: 'z'"),
        ("a\nb\n", "a,1\nb,2\na,3\n", "cell#type.csv:4: duplicate value for the same entries"),
        ("a\nb\n", "a,1\nb\n", "cell#type.csv:3: malformed CSV (1 fields, expected 2)"),
        ("a\nb\n", "a,1\nb,2,3\n", "cell#type.csv:3: malformed CSV (3 fields, expected 2)"),
    ],
)
def test_copying_reports_a_bad_file_as_reading_does(
    tmp_path: Path, axis: str, vector: str | None, problem: str
) -> None:
    """copy_axis and copy_data1d check files by bytes and hashes, not by reading them, and
    still fail with the same line as reading would."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "__daf__.yaml").write_text("version: [1, 0]\n")
    (tmp_path / "in" / "cell#.csv").write_text("cell\n" + axis)
    if vector is not None:
        (tmp_path / "in" / "cell#type.csv").write_text("cell,type\n" + vector)
    reader = FilesReader(tmp_path / "in")
    with pytest.raises(DafError) as read:
        again = FilesReader(tmp_path / "in")
        again.axis_entries("cell") if vector is None else again.get_data1d("cell#type")
    with FilesWriter(tmp_path / "out") as writer, pytest.raises(DafError) as copied:
        writer.copy_axis(reader, "cell")
        writer.copy_data1d(reader, "cell#type")
    assert str(copied.value) == str(read.value) == f"{tmp_path / 'in'}/{problem}"
