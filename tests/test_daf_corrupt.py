"""Corrupt daf data, in both stores: every kind is refused with one line naming the file and the
problem (``<file>[:<line>]: <problem>``), never read as data nor crashing inside an operation."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from daf_fuzz import Mutation, make_dataset, mutations, run_one
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_daf import small

from opchain.daf import H5Writer, Reader, files, mapping, open_reader, trust
from opchain.daf.files import FilesWriter
from opchain.errors import DafError
from opchain.operations.builtin import carry, copy_matrices


@pytest.fixture
def files_ds(tmp_path: Path) -> Path:
    with FilesWriter(tmp_path / "ds") as writer:
        small(writer)
    return tmp_path / "ds"


@pytest.fixture
def h5_ds(tmp_path: Path) -> Path:
    with H5Writer(tmp_path / "ds.h5") as writer:
        small(writer)
    return tmp_path / "ds.h5"


def raw(values: list[int], dtype: str = "<i4") -> bytes:
    return np.array(values, dtype=dtype).tobytes()


def read_all(reader: Reader) -> None:
    """Everything a dataset holds, as an operation would use it."""
    for name in reader.item_names():
        reader.get_item(name)
    for axis in reader.axis_names():
        reader.axis_entries(axis)
        for name in reader.data1d_names(axis):
            reader.get_data1d(name)
        for columns in reader.axis_names():
            for name in reader.data2d_names(axis, columns):
                reader.get_data2d(name)


def the_error(path: Path) -> str:
    with pytest.raises(DafError) as error:
        read_all(open_reader(path))
    message = str(error.value)
    assert "\n" not in message
    return message


def check(message: str, expected: str) -> None:
    """``expected`` is the whole message, or its start when it ends with ``...``."""
    if expected.endswith("..."):
        assert message.startswith(expected[:-3]), message
    else:
        assert message == expected


# The files store ---------------------------------------------------------------------------------

# (kind, mutation of the dataset directory, expected message with {ds} for its path)
FILES_CASES: list[tuple[str, Callable[[Path], Any], str]] = [
    ("indptr decreases",
     lambda ds: (ds / "cell,gene#sparse.indptr").write_bytes(raw([0, 2, 1, 2])),
     "{ds}/cell,gene#sparse.indptr: indptr decreases at row 1"),
    ("indptr points past nnz",
     lambda ds: (ds / "cell,gene#sparse.indptr").write_bytes(raw([0, 1, 5, 2])),
     "{ds}/cell,gene#sparse.indptr: indptr decreases at row 2"),
    ("indptr not starting at 0",
     lambda ds: (ds / "cell,gene#sparse.indptr").write_bytes(raw([1, 1, 1, 2])),
     "{ds}/cell,gene#sparse.indptr: indptr starts at 1, expected 0"),
    ("indptr not ending at nnz",
     lambda ds: (ds / "cell,gene#sparse.indptr").write_bytes(raw([0, 1, 1, 1])),
     "{ds}/cell,gene#sparse.indptr: indptr ends at 1, expected nnz 2"),
    ("column index too large",
     lambda ds: (ds / "cell,gene#sparse.indices").write_bytes(raw([1, 5])),
     "{ds}/cell,gene#sparse.indices: column index 5 at position 1 is out of the range [0, 2)"),
    ("negative column index",
     lambda ds: (ds / "cell,gene#sparse.indices").write_bytes(raw([-1, 0])),
     "{ds}/cell,gene#sparse.indices: column index -1 at position 0 is out of the range [0, 2)"),
    ("truncated sparse part",
     lambda ds: (ds / "cell,gene#sparse.indices").write_bytes(raw([1])),
     "{ds}/cell,gene#sparse.indices: truncated data file: 4 bytes, expected 8 "
     "(shape [2] of int32)"),
    ("sparse part larger than nnz",
     lambda ds: (ds / "cell,gene#sparse.data").write_bytes(raw([1, 2, 3], "<f8")),
     "{ds}/cell,gene#sparse.data: data file too large: 24 bytes, expected 16 "
     "(shape [2] of float64)"),
    ("missing sparse part",
     lambda ds: (ds / "cell,gene#sparse.indptr").unlink(),
     "{ds}/cell,gene#sparse.yaml: missing data file: cell,gene#sparse.indptr"),
    ("malformed nnz",
     lambda ds: edit(ds / "cell,gene#sparse.yaml", "nnz: 2", "nnz: -2"),
     "{ds}/cell,gene#sparse.yaml: malformed nnz: -2"),
    ("unknown index dtype",
     lambda ds: edit(ds / "cell,gene#sparse.yaml", "indices_dtype: int32", "indices_dtype: float32"),
     "{ds}/cell,gene#sparse.yaml: unknown indices_dtype: float32 (expected one of: int8, ..."),
    ("truncated array",
     lambda ds: (ds / "cell#score.array").write_bytes(b"\0" * 10),
     "{ds}/cell#score.array: truncated data file: 10 bytes, expected 12 (shape [3] of float32)"),
    ("array larger than its shape",
     lambda ds: (ds / "cell,gene#UMIs.array").write_bytes(b"\0" * 28),
     "{ds}/cell,gene#UMIs.array: data file too large: 28 bytes, expected 24 "
     "(shape [3, 2] of int32)"),
    ("missing array",
     lambda ds: (ds / "cell#score.array").unlink(),
     "{ds}/cell#score.yaml: missing data file: cell#score.array"),
    ("shape not matching the axis",
     lambda ds: edit(ds / "cell#score.yaml", "- 3", "- 4"),
     "{ds}/cell#score.yaml: shape [4] does not match the axes cell with [3] entries"),
    ("malformed shape",
     lambda ds: edit(ds / "cell,gene#UMIs.yaml", "- 3\n- 2", "- 3"),
     "{ds}/cell,gene#UMIs.yaml: malformed shape: [3]"),
    ("unknown dtype",
     lambda ds: edit(ds / "cell#score.yaml", "float32", "complex64"),
     "{ds}/cell#score.yaml: unknown dtype: complex64 (expected one of: bool, int8, ..."),
    ("dtype not a string",
     lambda ds: edit(ds / "cell#score.yaml", "dtype: float32", "dtype: [float32]"),
     "{ds}/cell#score.yaml: malformed dtype: ['float32']"),
    ("sidecar of another major version",
     lambda ds: edit(ds / "cell#score.yaml", "- 1\n- 0", "- 2\n- 1"),
     "{ds}/cell#score.yaml: unsupported daf format version: 2.1 (this reader supports 1.x)"),
    ("malformed sidecar YAML",
     lambda ds: (ds / "cell#score.yaml").write_text("dtype: [float32\n"),
     "{ds}/cell#score.yaml: malformed YAML (..."),
    ("sidecar not a mapping",
     lambda ds: (ds / "cell#score.yaml").write_text("- 1\n"),
     "{ds}/cell#score.yaml: malformed sidecar (expected a mapping)"),
    ("malformed header YAML",
     lambda ds: (ds / "__daf__.yaml").write_text("version: [1, 0\n"),
     "{ds}/__daf__.yaml: malformed YAML (..."),
    ("malformed header version",
     lambda ds: (ds / "__daf__.yaml").write_text("version: one\n"),
     "{ds}/__daf__.yaml: malformed daf format version: 'one'"),
    ("header without version",
     lambda ds: (ds / "__daf__.yaml").write_text("{}\n"),
     "{ds}/__daf__.yaml: malformed daf header (expected a version key)"),
    ("missing dataset",
     lambda ds: shutil.rmtree(ds),
     "{ds}: missing daf dataset"),
    ("missing header",
     lambda ds: (ds / "__daf__.yaml").unlink(),
     "{ds}: not a daf dataset (no __daf__.yaml nor data.h5)"),
    ("malformed item YAML",
     lambda ds: (ds / "organism.yaml").write_text("a: b: c\n"),
     "{ds}/organism.yaml: malformed YAML (..."),
    ("impossible date in an item",
     lambda ds: (ds / "organism.yaml").write_text("2022-13-45\n"),
     "{ds}/organism.yaml: malformed YAML (month must be in 1..12)"),
    ("item nested 100,000 deep",
     lambda ds: (ds / "organism.yaml").write_text("[" * 100_000 + "]" * 100_000),
     "{ds}/organism.yaml: malformed YAML (maximum recursion depth exceeded..."),
    ("sidecar nested 100,000 deep",
     lambda ds: (ds / "cell#score.yaml").write_text("- " * 100_000 + "x\n"),
     "{ds}/cell#score.yaml: malformed YAML (maximum recursion depth exceeded..."),
    ("duplicate axis entries",
     lambda ds: (ds / "gene#.csv").write_text("gene\ng1\ng1\n"),
     "{ds}/gene#.csv:3: duplicate axis entry: 'g1'"),
    ("empty axis entry",
     lambda ds: (ds / "gene#.csv").write_text('gene\ng1\n""\n'),
     "{ds}/gene#.csv:3: empty axis entry"),
    ("wrong axis header",
     lambda ds: (ds / "gene#.csv").write_text("genes\ng1\ng2\n"),
     "{ds}/gene#.csv:1: malformed CSV header: genes (expected: gene)"),
    ("axis line with two fields",
     lambda ds: (ds / "gene#.csv").write_text("gene\ng1\ng2,x\n"),
     "{ds}/gene#.csv:3: malformed CSV (2 fields, expected 1)"),
    ("empty axis file",
     lambda ds: (ds / "gene#.csv").write_text(""),
     "{ds}/gene#.csv: malformed CSV (empty, expected the header: gene)"),
    ("axis lengths not matching the data",
     lambda ds: (ds / "gene#.csv").write_text("gene\ng1\ng2\ng3\n"),
     "{ds}/cell,gene#UMIs.yaml: shape [3, 2] does not match the axes cell,gene with [3, 3] ..."),
    ("missing axis file",
     lambda ds: (ds / "gene#.csv").unlink(),
     "{ds}/cell,gene#UMIs.yaml: missing axis file: gene#.csv"),
    ("wrong strings header",
     lambda ds: (ds / "cell#type.csv").write_text("cell,kind\nc1,x\n"),
     "{ds}/cell#type.csv:1: malformed CSV header: cell,kind (expected: cell,type)"),
    ("strings line with too few fields",
     lambda ds: (ds / "gene,cell#note.csv").write_text("gene,cell,note\ng1,c1\n"),
     "{ds}/gene,cell#note.csv:2: malformed CSV (2 fields, expected 3)"),
    ("strings of an unknown entry",
     lambda ds: (ds / "cell#type.csv").write_text("cell,type\nc9,x\n"),
     "{ds}/cell#type.csv:2: unknown cell entry: 'c9'"),
    ("strings given twice",
     lambda ds: (ds / "gene,cell#note.csv").write_text("gene,cell,note\ng1,c1,x\n\ng1,c1,z\n"),
     "{ds}/gene,cell#note.csv:4: duplicate value for the same entries"),
    ("strings not UTF-8",
     lambda ds: (ds / "cell#type.csv").write_bytes(b"cell,type\nc1,\xff\n"),
     "{ds}/cell#type.csv: malformed CSV (not UTF-8: invalid start byte)"),
    ("unterminated quote",
     lambda ds: (ds / "cell#type.csv").write_text('cell,type\nc1,"unterminated\n'),
     "{ds}/cell#type.csv:2: malformed CSV (unexpected end of data)"),
    ("string and binary data of one name",
     lambda ds: (ds / "cell#score.csv").write_text("cell,score\n"),
     "{ds}/cell#score.csv: both string and binary data (also cell#score.yaml)"),
]  # fmt: skip


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [case[1:] for case in FILES_CASES],
    ids=[case[0] for case in FILES_CASES],
)
def test_corrupt_files_store(files_ds: Path, mutate: Callable[[Path], Any], expected: str) -> None:
    mutate(files_ds)
    check(the_error(files_ds), expected.replace("{ds}", str(files_ds)))


def test_corrupt_matrix_is_refused_when_read_and_other_data_still_reads(files_ds: Path) -> None:
    """Opening stays lazy: a corrupt matrix is refused when it is read, not when other data is."""
    (files_ds / "cell,gene#sparse.indptr").write_bytes(raw([0, 2, 1, 2]))
    reader = open_reader(files_ds)
    assert reader.get_data2d("cell,gene#UMIs").tolist() == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(DafError, match=r"indptr decreases at row 1$"):
        reader.get_data2d("gene,cell#sparse")  # the transposed view is checked too


def test_a_checked_file_is_trusted_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a step's check of a file established (an axis's entries, a string vector listing
    its axis, a CSR structure) is recorded on the file, so the next step, carrying the same file
    (linked), checks nothing; a change to the file brings the check back and the corruption is
    refused. A file written moments ago is not vouched for (coarse file clocks)."""
    source = tmp_path / "in"
    with FilesWriter(source) as writer:
        writer.create_axis("cell", ["c1", "c2", "c3"])
        writer.create_axis("gene", ["g1", "g2"])
        writer.set_data1d("cell#kind", np.array(["x", "y", "z"], dtype=object))
        writer.set_data2d("cell,gene#sparse", sp.csr_matrix(np.array([[0, 1.0], [0, 0], [2, 0]])))
    read_all(open_reader(source))
    assert trust.vouched(source / "cell#.csv", "axis") == []  # too recent
    if not supports_xattrs(tmp_path):
        pytest.skip("no extended attributes here: every check runs each time")
    old = time.time_ns() - 3600 * 10**9
    for path in source.iterdir():
        os.utime(path, ns=(old, old))
    step(open_reader(source), tmp_path / "first")  # checks, and records what passed
    assert trust.vouched(source / "cell#.csv", "axis") == ["cell", 3]

    def checked_again(*_: object) -> None:
        raise AssertionError("checked again")

    with monkeypatch.context() as patched:
        for module, name in ((files, "_check_plain_axis"), (files, "_lists_axis"),
                             (mapping, "check_csr")):  # fmt: skip
            patched.setattr(module, name, checked_again)
        second = step(open_reader(tmp_path / "first"), tmp_path / "second")
        read_all(open_reader(second))
    (second / "cell#.csv").write_text("cell\nc1\nc1\nc3\n")  # the same size, in every step
    with pytest.raises(DafError, match=r"cell#\.csv:3: duplicate axis entry: 'c1'$"):
        step(open_reader(second), tmp_path / "third")
    (second / "cell,gene#sparse.indices").write_bytes(raw([1, 5]))
    with pytest.raises(DafError, match="column index 5 at position 1 is out of the range"):
        open_reader(source).get_data2d("cell,gene#sparse")


def step(data: Reader, path: Path) -> Path:
    """A step that carries everything of ``data`` into a new dataset at ``path``."""
    with FilesWriter(path) as out:
        carry(data, out)
        copy_matrices(data, out)
    return path


def supports_xattrs(folder: Path) -> bool:
    probe = folder / "probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.opchain.probe", b"1")
    except (OSError, AttributeError):
        return False
    return True


# The HDF5 store ----------------------------------------------------------------------------------


def h5_edit(change: Callable[[h5py.File], Any]) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        with h5py.File(path, "r+") as file:
            change(file)

    return mutate


def replace(name: str, data: Any, **options: Any) -> Callable[[Path], None]:
    def change(file: h5py.File) -> None:
        del file[name]
        file.create_dataset(name, data=data, **options)

    return h5_edit(change)


def setter(name: str, values: list[int]) -> Callable[[Path], None]:
    return h5_edit(lambda file: file[name].__setitem__(Ellipsis, values))


def set_attr(name: str, key: str, value: Any) -> Callable[[Path], None]:
    return h5_edit(lambda file: file[name].attrs.__setitem__(key, value))


def truncate(path: Path) -> None:
    with h5py.File(path, "r") as file:
        offset = file["cell#score"].id.get_offset()
    os.truncate(path, offset + 4)


SPARSE = "{ds}:/cell,gene#sparse"
H5_CASES: list[tuple[str, Callable[[Path], Any], str]] = [
    ("indptr decreases", setter("cell,gene#sparse/indptr", [0, 2, 1, 2]),
     SPARSE + "/indptr: indptr decreases at row 1"),
    ("indptr points past nnz", setter("cell,gene#sparse/indptr", [0, 1, 5, 2]),
     SPARSE + "/indptr: indptr decreases at row 2"),
    ("indptr not starting at 0", setter("cell,gene#sparse/indptr", [1, 1, 1, 2]),
     SPARSE + "/indptr: indptr starts at 1, expected 0"),
    ("indptr not ending at nnz", setter("cell,gene#sparse/indptr", [0, 1, 1, 1]),
     SPARSE + "/indptr: indptr ends at 1, expected nnz 2"),
    ("column index too large", setter("cell,gene#sparse/indices", [1, 5]),
     SPARSE + "/indices: column index 5 at position 1 is out of the range [0, 2)"),
    ("negative column index", setter("cell,gene#sparse/indices", [-1, 0]),
     SPARSE + "/indices: column index -1 at position 0 is out of the range [0, 2)"),
    ("indices longer than data", replace("cell,gene#sparse/indices", np.array([1, 0, 1], "i4")),
     SPARSE + "/indices: 3 entries, but nnz is 2"),
    ("indptr of the wrong length", replace("cell,gene#sparse/indptr", np.array([0, 1, 2], "i4")),
     SPARSE + "/indptr: 3 entries, expected 4 (rows + 1)"),
    ("sparse shape not matching the axes", set_attr("cell,gene#sparse", "shape", [3, 3]),
     SPARSE + ": shape [3, 3] does not match the axes cell,gene with [3, 2] entries"),
    ("malformed sparse shape", set_attr("cell,gene#sparse", "shape", ["3", "2"]),
     SPARSE + ": malformed or missing shape attribute: ['3', '2']"),
    ("missing sparse shape", h5_edit(lambda f: f["cell,gene#sparse"].attrs.__delitem__("shape")),
     SPARSE + ": malformed or missing shape attribute: None"),
    ("unknown index dtype", replace("cell,gene#sparse/indices", np.array([1.0, 0.0])),
     SPARSE + "/indices: unsupported dtype: float64"),
    ("unknown dtype", replace("cell#score", np.zeros(3, "complex64")),
     "{ds}:/cell#score: unsupported dtype: complex64"),
    ("shape not matching the axis", replace("cell#score", np.zeros(4, "float32")),
     "{ds}:/cell#score: shape [4] does not match the axes cell with [3] entries"),
    ("2D shape not matching the axes", replace("cell,gene#UMIs", np.zeros((2, 3), "int32")),
     "{ds}:/cell,gene#UMIs: shape [2, 3] does not match the axes cell,gene with [3, 2] entries"),
    ("scalar data", replace("cell#score", 1.0),
     "{ds}:/cell#score: shape [] does not match the axes cell with [3] entries"),
    ("duplicate axis entries", replace("gene#", np.array([b"g1", b"g1"])),
     "{ds}:/gene#: duplicate axis entry: 'g1'"),
    ("empty axis entry", replace("gene#", np.array([b"g1", b""])),
     "{ds}:/gene#: empty or missing axis entry"),
    ("axis not a vector", replace("gene#", np.array([[b"g1"], [b"g2"]])),
     "{ds}:/gene#: malformed axis (not a vector of strings)"),
    ("scalar axis", replace("gene#", b"g1"),
     "{ds}:/gene#: malformed axis (not a vector of strings)"),
    ("numeric axis", replace("gene#", np.array([1, 2])),
     "{ds}:/gene#: malformed axis (not a vector of strings)"),
    ("axis lengths not matching the data", replace("gene#", np.array([b"g1", b"g2", b"g3"])),
     "{ds}:/cell,gene#UMIs: shape [3, 2] does not match the axes cell,gene with [3, 3] entries"),
    ("missing axis", h5_edit(lambda f: f.__delitem__("gene#")),
     "{ds}:/cell,gene#UMIs: missing axis: /gene#"),
    ("strings not UTF-8", replace("cell#type", np.array([b"T", b"\xff", b""])),
     "{ds}:/cell#type: string not UTF-8"),
    ("malformed YAML item", set_attr("__daf__", "organism", np.void(b"[unclosed")),
     "{ds}:/__daf__@organism: malformed YAML item (..."),
    ("missing dataset", lambda ds: ds.unlink(),
     "{ds}: missing daf dataset"),
    ("missing header", h5_edit(lambda f: f.__delitem__("__daf__")),
     "{ds}: not a daf dataset (no /__daf__)"),
    ("header of another major version", setter("__daf__", [3, 0]),
     "{ds}:/__daf__: unsupported daf format version: 3.0 (this reader supports 1.x)"),
    ("header not numbers", replace("__daf__", np.array([b"1", b"0"])),
     "{ds}:/__daf__: malformed daf format version: ..."),
    ("not HDF5", lambda ds: ds.write_bytes(b"not hdf5 at all"),
     "{ds}: not a readable HDF5 file (OSError: ..."),
    ("truncated file", truncate,
     "{ds}: not a readable HDF5 file (OSError: ..."),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "expected"), [case[1:] for case in H5_CASES], ids=[case[0] for case in H5_CASES]
)
def test_corrupt_h5_store(h5_ds: Path, mutate: Callable[[Path], Any], expected: str) -> None:
    mutate(h5_ds)
    check(the_error(h5_ds), expected.replace("{ds}", str(h5_ds)))


def test_h5_truncated_after_opening(h5_ds: Path) -> None:
    """HDF5 keeps its metadata before the data, so a file cut short can still open: the read of
    the data that is gone is refused."""
    with h5py.File(h5_ds, "r") as file:
        dataset = file["cell,gene#UMIs"]
        end = dataset.id.get_offset() + dataset.size * 4
    reader = open_reader(h5_ds)
    os.truncate(h5_ds, end - 4)
    with pytest.raises(DafError) as error:
        reader.get_data2d("cell,gene#UMIs")
    assert str(error.value) == (
        f"{h5_ds}:/cell,gene#UMIs: truncated HDF5 file: {end - 4} bytes, but the data ends at {end}"
    )


# Fuzzing -----------------------------------------------------------------------------------------
# benchmarks/fuzz.py runs the same with 10,000+ examples and prints the outcome counts.

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", params=["files", "h5"])
def template(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(request.param, tmp_path_factory.mktemp(request.param))


@FUZZ
@given(data=st.data())
def test_fuzzed_dataset_reads_consistently_or_gives_one_opchain_line(
    template: Path, data: st.DataObject
) -> None:
    store = "files" if template.is_dir() else "h5"
    mutation: Mutation = data.draw(mutations(store))
    folder = Path(tempfile.mkdtemp(dir=template.parent))
    result, detail = run_one(template, folder, mutation)
    assert result in ("correct", "opchain error"), detail
