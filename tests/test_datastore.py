"""DataStore / DataStoreIO: round trips, URL safety, wiping, laziness, pickle consent."""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opchain.datastore import (
    DataStore,
    DataStoreError,
    DataStoreIO,
    path_to_url,
    url_to_path,
)
from opchain.errors import OpchainError


class Model:
    """A small module-level class, so pickle can find it."""

    def __init__(self, weights: list[float]) -> None:
        self.weights = weights

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Model) and other.weights == self.weights


@pytest.fixture
def root(tmp_path: Path) -> Path:
    storage = tmp_path / "storage"
    storage.mkdir()
    return storage


@pytest.fixture
def folder(root: Path) -> Path:
    return root / "operation_chain_results" / "c" / "s" / "dataset_1" / "datastore"


def _round_trip(value: object, root: Path, folder: Path, *, allow_pickle: bool = False) -> object:
    urls = DataStore(v=value).save(folder, root)
    return DataStore.load(urls, root, allow_pickle=allow_pickle)["v"]


def _same(a: object, b: object) -> bool:
    """Equal with the same types, NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


# ------------------------------------------------------------------------------ round trips


ARRAYS = [
    np.arange(12, dtype=np.float64).reshape(3, 4),
    np.arange(5, dtype=np.int8),
    np.array([True, False]),
    np.array(["a", "bcd", "é"]),
    np.array([b"x", b"yz"]),
    np.array([1 + 2j], dtype=np.complex64),
    np.array(["2024-01-02"], dtype="datetime64[D]"),
    np.array(3.5),  # 0-d
    np.zeros((0, 3), dtype=np.uint16),  # empty
    np.asfortranarray(np.arange(6).reshape(2, 3)),
    np.arange(10)[::3],  # not contiguous
    np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}-{a.shape}")
def test_ndarray_round_trip(array: np.ndarray, root: Path, folder: Path) -> None:
    urls = DataStore(a=array).save(folder, root)
    assert urls == {"a": "file:///operation_chain_results/c/s/dataset_1/datastore/a.npy"}
    back = DataStore.load(urls, root)["a"]
    assert type(back) is np.ndarray
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_npy_is_written_without_pickle(root: Path, folder: Path) -> None:
    DataStore(a=np.arange(3)).save(folder, root)
    np.load(folder / "a.npy", allow_pickle=False)  # readable by any numpy, no pickle inside


@pytest.mark.parametrize(
    "value",
    [
        "text",
        "",
        "naïve \x85 \u2028 ☃",
        "null",
        "1.0",
        0,
        -(2**80),
        1.5,
        float("nan"),
        float("-inf"),
        -0.0,
        True,
        False,
        None,
        [],
        {},
        [1, "a", [None, 2.5], {"k": [True]}],
        {"b": 1, "a": {"nested": [1, 2]}, 3: "int key"},
    ],
    ids=repr,
)
def test_plain_round_trip_as_yaml(value: object, root: Path, folder: Path) -> None:
    back = _round_trip(value, root, folder)
    assert (folder / "v.yaml").exists()
    assert _same(back, value)


def test_dict_order_is_kept(root: Path, folder: Path) -> None:
    value = {"z": 1, "a": 2, "m": 3}
    assert list(_round_trip(value, root, folder)) == ["z", "a", "m"]


def test_bytes_are_written_as_is(root: Path, folder: Path) -> None:
    data = bytes(range(256))
    assert _round_trip(data, root, folder) == data
    assert (folder / "v.bin").read_bytes() == data


@pytest.mark.parametrize(
    ("scalar", "expected"),
    [
        (np.float64(0.25), 0.25),
        (np.float32(0.1), float(np.float32(0.1))),
        (np.int64(-7), -7),
        (np.uint8(200), 200),
        (np.bool_(True), True),
        (np.str_("s"), "s"),
    ],
    ids=repr,
)
def test_numpy_scalars_become_python_scalars(
    scalar: np.generic, expected: object, root: Path, folder: Path
) -> None:
    back = _round_trip(scalar, root, folder)
    assert (folder / "v.yaml").exists()
    assert type(back) is type(expected) and back == expected


def test_numpy_scalars_inside_plain_data(root: Path, folder: Path) -> None:
    value = {"accuracy": np.float64(0.9), "counts": [np.int32(3)]}
    assert _same(_round_trip(value, root, folder), {"accuracy": 0.9, "counts": [3]})


@pytest.mark.parametrize(
    "value",
    [
        Model([1.0, 2.0]),
        (1, 2),
        {1, 2},
        [1, (2, 3)],
        {"a": {1, 2}},
        np.array([1, "a", None], dtype=object),
        np.complex128(1 + 1j),
        np.longdouble(1) / 3,
        bytearray(b"ab"),
        np.ma.masked_array([1, 2], mask=[True, False]),
        "\ud800",  # lone surrogate: not writable as YAML
    ],
    ids=lambda v: type(v).__name__,
)
def test_non_plain_values_go_to_pickle(value: object, root: Path, folder: Path) -> None:
    back = _round_trip(value, root, folder, allow_pickle=True)
    assert (folder / "v.pkl").exists()
    assert type(back) is type(value)
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(back, value)
    else:
        assert back == value


def test_cyclic_list_goes_to_pickle(root: Path, folder: Path) -> None:
    value: list[object] = [1]
    value.append(value)
    back = _round_trip(value, root, folder, allow_pickle=True)
    assert back[1] is back


PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text() | st.integers(), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=PLAIN)
def test_plain_data_round_trips_exactly(tmp_path_factory: pytest.TempPathFactory, value: object):
    root = tmp_path_factory.mktemp("storage")
    assert _same(_round_trip(value, root, root / "ds"), value)


def test_same_value_same_bytes(root: Path) -> None:
    values = {
        "a": np.arange(4.0),
        "p": {"x": [1, 2], "y": "z"},
        "m": Model([3.0]),
        "b": b"raw",
    }
    DataStore(values).save(root / "one", root)
    DataStore(copy.deepcopy(values)).save(root / "two", root)
    for name in ("a.npy", "p.yaml", "m.pkl", "b.bin"):
        assert (root / "one" / name).read_bytes() == (root / "two" / name).read_bytes()


# ---------------------------------------------------------------------- save/load semantics


def test_save_returns_relative_urls_and_metadata_friendly_mapping(root: Path, folder: Path) -> None:
    urls = DataStore(model=Model([1.0]), scores={"f1": 0.5}).save(folder, root)
    assert urls == {
        "model": "file:///operation_chain_results/c/s/dataset_1/datastore/model.pkl",
        "scores": "file:///operation_chain_results/c/s/dataset_1/datastore/scores.yaml",
    }
    assert type(urls) is dict
    assert yaml.safe_load(yaml.safe_dump({"datastore": urls})) == {"datastore": urls}


def test_saving_again_wipes_stale_values(root: Path, folder: Path) -> None:
    DataStore(old=1, kept=np.arange(2), stale=Model([0.0])).save(folder, root)
    (folder / "leftover.txt").write_text("from an earlier run")
    urls = DataStore(kept="now a string").save(folder, root)
    assert sorted(p.name for p in folder.iterdir()) == ["kept.yaml"]
    assert dict(DataStore.load(urls, root)) == {"kept": "now a string"}


def test_resaving_lazy_store_into_its_own_folder_keeps_values(root: Path, folder: Path) -> None:
    urls = DataStore(m=Model([2.0]), a=np.arange(3), t="x").save(folder, root)
    lazy = DataStore.load(urls, root)  # pickle not allowed: it is copied, never unpickled
    lazy["extra"] = 7
    urls2 = lazy.save(folder, root)
    back = DataStore.load(urls2, root, allow_pickle=True)
    assert back.m == Model([2.0]) and back.t == "x" and back.extra == 7
    np.testing.assert_array_equal(back.a, np.arange(3))


def test_final_folder_names_the_urls_for_a_renamed_directory(root: Path) -> None:
    # The engine writes a dataset under a temporary name, then renames it into place.
    step = root / "operation_chain_results" / "c" / "s"
    temporary, final = step / ".tmp_dataset_1", step / "dataset_1"
    urls = DataStore(a=[1]).save(temporary / "datastore", root, final_folder=final / "datastore")
    assert urls == {"a": "file:///operation_chain_results/c/s/dataset_1/datastore/a.yaml"}
    assert not final.exists()
    temporary.rename(final)
    assert DataStore.load(urls, root).a == [1]
    with pytest.raises(DataStoreError, match="not inside the storage root"):
        DataStore(a=1).save(root / "x", root, final_folder=root.parent / "y")


def test_existing_non_directory_folder_is_refused(root: Path) -> None:
    (root / "real").mkdir()
    (root / "real" / "keep.txt").write_text("keep")
    (root / "link").symlink_to(root / "real")
    (root / "file").write_text("x")
    for target in ("link", "file"):
        with pytest.raises(DataStoreError, match="not a plain directory"):
            DataStore(a=1).save(root / target, root)
    assert (root / "real" / "keep.txt").exists()


def test_empty_store(root: Path, folder: Path) -> None:
    assert DataStore().save(folder, root) == {}
    assert folder.is_dir() and not any(folder.iterdir())
    assert DataStore.load({}, root) == {}


def test_moved_storage_root_still_loads(root: Path, folder: Path, tmp_path: Path) -> None:
    urls = DataStore(a=np.arange(3), s={"k": "v"}, b=b"01").save(folder, root)
    io = DataStoreIO(root)
    own = io.write(np.ones(2), "self_managed/x/a.npy")
    moved = tmp_path / "elsewhere" / "storage2"
    moved.parent.mkdir()
    shutil.move(root, moved)
    assert not root.exists()
    back = DataStore.load(urls, moved)
    np.testing.assert_array_equal(back.a, np.arange(3))
    assert back.s == {"k": "v"} and back.b == b"01"
    np.testing.assert_array_equal(DataStoreIO(moved).read(own), np.ones(2))


def test_deleted_result_takes_its_datastore(root: Path) -> None:
    # The engine removes a result's dataset directory; the datastore lives inside it.
    dataset = root / "operation_chain_results" / "c" / "s" / "dataset_1"
    urls = DataStore(a=1).save(dataset / "datastore", root)
    shutil.rmtree(dataset)
    with pytest.raises(DataStoreError, match=r"file:///operation_chain_results/.*/a\.yaml"):
        DataStore.load(urls, root)["a"]


def test_folder_must_be_inside_root(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataStoreError, match="not inside the storage root"):
        DataStore(a=1).save(tmp_path / "outside", root)
    with pytest.raises(DataStoreError, match="not inside the storage root"):
        DataStore(a=1).save(root, root)  # never wipe the root itself
    with pytest.raises(DataStoreError, match="not inside the storage root"):
        DataStore(a=1).save(root / ".." / "x", root)
    assert (root).is_dir()


def test_unpicklable_value_is_a_clear_error(root: Path, folder: Path) -> None:
    with pytest.raises(DataStoreError, match="cannot pickle a value of type function"):
        DataStore(f=lambda: 1).save(folder, root)


# -------------------------------------------------------------------------------- laziness


def test_values_are_read_only_on_access(root: Path, folder: Path) -> None:
    urls = DataStore(a=np.arange(3), b="text").save(folder, root)
    ds = DataStore.load(urls, root)
    assert set(ds) == {"a", "b"} and len(ds) == 2 and "a" in ds  # no reads needed
    assert "not loaded: file:///" in repr(ds)
    (folder / "a.npy").unlink()
    assert ds.b == "text"
    with pytest.raises(DataStoreError, match=r"cannot read file:///.*/datastore/a\.npy"):
        ds["a"]
    with pytest.raises(OpchainError):
        _ = ds.a  # not swallowed into AttributeError


def test_a_loaded_value_is_read_once(root: Path, folder: Path) -> None:
    urls = DataStore(a=[1, 2]).save(folder, root)
    ds = DataStore.load(urls, root)
    first = ds["a"]
    (folder / "a.yaml").unlink()
    assert ds["a"] is first


def test_dict_accessors_see_loaded_values(root: Path, folder: Path) -> None:
    urls = DataStore(x=1, y=[2]).save(folder, root)
    expected = {"x": 1, "y": [2]}

    def fresh() -> DataStore:
        return DataStore.load(urls, root)

    assert dict(fresh()) == expected
    assert {**fresh()} == expected
    assert dict(fresh().items()) == expected
    assert list(fresh().values()) == [1, [2]]
    assert fresh().get("y") == [2] and fresh().get("nope", 0) == 0
    assert fresh() == expected and expected == fresh() and (fresh() != expected) is False
    assert fresh() == fresh()
    assert json.loads(json.dumps(fresh())) == expected
    assert pickle.loads(pickle.dumps(fresh())) == expected
    assert copy.deepcopy(fresh()) == expected
    assert fresh().copy() == expected
    assert fresh() | {"z": 3} == {**expected, "z": 3}
    assert {"z": 3} | fresh() == {"z": 3, **expected}
    ds = fresh()
    assert ds.pop("x") == 1 and ds.popitem() == ("y", [2]) and ds == {}
    assert fresh().setdefault("x", 9) == 1


def test_copy_and_update_keep_placeholders(root: Path, folder: Path) -> None:
    urls = DataStore(a=1).save(folder, root)
    ds = DataStore.load(urls, root)
    other = DataStore(ds)
    clone = ds.copy()
    (folder / "a.yaml").write_text("2\n")  # neither copy has read the file yet
    assert other.a == 2 and clone.a == 2


def test_pickle_is_refused_unless_allowed(root: Path, folder: Path) -> None:
    urls = DataStore(m=Model([1.0]), ok=3).save(folder, root)
    ds = DataStore.load(urls, root)
    assert ds.ok == 3  # the other values are still usable
    with pytest.raises(DataStoreError, match="allow_pickle=True"):
        _ = ds.m
    assert DataStore.load(urls, root, allow_pickle=True).m == Model([1.0])


# ---------------------------------------------------------------------- dict/attribute API


def test_attribute_access() -> None:
    ds = DataStore(model="m")
    assert ds.model == "m"
    ds.score = 0.5
    assert ds["score"] == 0.5
    assert hasattr(ds, "score") and not hasattr(ds, "missing")
    assert getattr(ds, "missing", "default") == "default"
    with pytest.raises(AttributeError, match="missing"):
        _ = ds.missing
    del ds.score
    assert "score" not in ds
    with pytest.raises(AttributeError):
        del ds.score
    with pytest.raises(KeyError):
        ds["missing"]
    ds["items"] = 1  # shadowed by the method as an attribute, reachable by key
    assert callable(ds.items) and ds["items"] == 1
    assert isinstance(ds, dict)


@pytest.mark.parametrize("key", ["", ".", "..", "a/b", "nul\0", 3, "x" * 300, "\ud800"], ids=repr)
def test_bad_keys_are_refused(key: object) -> None:
    with pytest.raises(DataStoreError):
        DataStore({key: 1})
    ds = DataStore()
    with pytest.raises(DataStoreError):
        ds[key] = 1  # type: ignore[index]
    with pytest.raises(DataStoreError):
        ds.update({key: 1})
    with pytest.raises(DataStoreError):
        DataStore.load({key: "file:///a.yaml"}, Path("/tmp"))  # type: ignore[dict-item]


def test_odd_but_valid_keys_round_trip(root: Path, folder: Path) -> None:
    keys = ["with space", "100%", "q?#", ".hidden", "é", "a.b"]
    urls = DataStore({k: k for k in keys}).save(folder, root)
    back = DataStore.load(urls, root)
    assert dict(back) == {k: k for k in keys}
    assert all(url.startswith("file:///") and " " not in url for url in urls.values())


# ---------------------------------------------------------------------------- URL safety


@pytest.mark.parametrize(
    "url",
    [
        "file:///../x",
        "file:///a/../../x",
        "file:///a/../b",
        "file:///%2e%2e/x",
        "file:///..%2fx",
        "http://x/y",
        "https:///x",
        "s3://bucket/x",
        "file://host/x",
        "file://localhost/x",
        "file:////etc/passwd",
        "file:relative",
        "/abs/path",
        "relative/path",
        "file:///",
        "file:///x?q=1",
        "file:///x#frag",
        "file:///x%00y",
    ],
)
def test_escaping_or_foreign_urls_are_refused(url: str, root: Path) -> None:
    with pytest.raises(DataStoreError):
        url_to_path(url, root)
    with pytest.raises(DataStoreError):
        DataStore.load({"k": url}, root)
    with pytest.raises(DataStoreError):
        DataStoreIO(root).read(url, allow_pickle=True)


def test_symlink_out_of_root_is_refused(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.pkl").write_bytes(pickle.dumps(Model([9.0])))
    (root / "link").symlink_to(outside)
    (root / "file_link.yaml").symlink_to(outside / "secret.pkl")
    for url in ("file:///link/secret.pkl", "file:///file_link.yaml"):
        with pytest.raises(DataStoreError, match="not inside the storage root"):
            url_to_path(url, root)
        with pytest.raises(DataStoreError, match="not inside the storage root"):
            DataStoreIO(root).read(url, allow_pickle=True)
    with pytest.raises(DataStoreError, match="not inside the storage root"):
        DataStoreIO(root).write(b"x", "link/new.bin")
    assert not (outside / "new.bin").exists()
    with pytest.raises(DataStoreError, match="not inside the storage root"):
        DataStore(a=1).save(root / "link" / "ds", root)
    assert (outside / "secret.pkl").exists()


def test_url_checked_again_at_access(root: Path, folder: Path, tmp_path: Path) -> None:
    urls = DataStore(a=1).save(folder, root)
    ds = DataStore.load(urls, root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.yaml").write_text("666\n")
    shutil.rmtree(folder)
    folder.symlink_to(outside)  # swapped for a symlink after load()
    with pytest.raises(DataStoreError, match="not inside the storage root"):
        _ = ds.a


def test_symlink_inside_root_is_fine(root: Path) -> None:
    (root / "real").mkdir()
    (root / "alias").symlink_to(root / "real")
    url = DataStoreIO(root).write([1], "alias/v.yaml")
    assert url == "file:///alias/v.yaml"
    assert DataStoreIO(root).read(url) == [1]


def test_path_url_conversions(root: Path, tmp_path: Path) -> None:
    path = root / "a b" / "c%.npy"
    url = path_to_url(path, root)
    assert url == "file:///a%20b/c%25.npy"
    assert url_to_path(url, root) == path.resolve()
    with pytest.raises(DataStoreError):
        path_to_url(tmp_path / "elsewhere", root)
    with pytest.raises(DataStoreError):
        path_to_url(root, root)
    with pytest.raises(DataStoreError):
        path_to_url(Path("/etc/passwd"), root)


def test_root_given_through_symlink(tmp_path: Path, root: Path) -> None:
    link = tmp_path / "root_link"
    link.symlink_to(root)
    assert path_to_url(root / "x.bin", link) == "file:///x.bin"
    assert path_to_url(link / "x.bin", root) == "file:///x.bin"


def test_relative_storage_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(root.parent)
    urls = DataStore(a=1).save(Path("storage/ds"), Path("storage"))
    assert urls == {"a": "file:///ds/a.yaml"}
    assert DataStore.load(urls, Path("storage")).a == 1


# ----------------------------------------------------------------------------- DataStoreIO


def test_io_round_trips(root: Path) -> None:
    io = DataStoreIO(root)
    cases = {
        "self_managed/run/a.npy": np.zeros(10),
        "self_managed/run/b": b"11111",
        "self_managed/run/c.yaml": {"k": [1, 2.5, None]},
        "self_managed/run/c.yml": "text",
        "self_managed/run/d.json": {"k": [1, "x", True]},
        "self_managed/run/e.pkl": Model([4.0]),
        "self_managed/run/f.pkl": np.arange(3),
    }
    for rel, value in cases.items():
        url = io.write(value, rel)
        assert url == io.url(rel) == "file:///" + rel
        back = io.read(url, allow_pickle=True)
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(back, value)
        else:
            assert back == value
    assert (root / "self_managed/run/b").read_bytes() == b"11111"
    assert json.loads((root / "self_managed/run/d.json").read_text()) == {"k": [1, "x", True]}


def test_io_bytes_are_written_as_is_whatever_the_extension(root: Path) -> None:
    io = DataStoreIO(root)
    raw = DataStore(a=np.arange(3)).save(root / "ds", root)
    npy = (root / "ds" / "a.npy").read_bytes()
    url = io.write(npy, "copy.npy")
    np.testing.assert_array_equal(io.read(url), np.arange(3))
    assert raw  # the DataStore folder is untouched by IO writes
    assert io.read(io.write(b"{}", "x.txt")) == b"{}"


def test_io_overwrites_and_never_deletes(root: Path) -> None:
    io = DataStoreIO(root)
    io.write(b"1", "dir/x.bin")
    io.write(b"2", "dir/x.bin")
    io.write(b"3", "dir/y.bin")
    assert sorted(p.name for p in (root / "dir").iterdir()) == ["x.bin", "y.bin"]
    assert (root / "dir/x.bin").read_bytes() == b"2"


def test_io_refuses_mismatched_formats(root: Path) -> None:
    io = DataStoreIO(root)
    with pytest.raises(DataStoreError, match=r"use '\.npy'"):
        io.write(np.arange(2), "a")
    with pytest.raises(DataStoreError, match=r"use \.pkl"):
        io.write(Model([]), "a.yaml")
    with pytest.raises(DataStoreError, match=r"\.pkl"):
        io.write(np.array([None]), "a.npy")
    with pytest.raises(DataStoreError, match="only numpy arrays"):
        io.write([1], "a.npy")
    with pytest.raises(DataStoreError, match="JSON"):
        io.write({1: "int key"}, "a.json")
    with pytest.raises(DataStoreError, match="JSON"):
        io.write(float("nan"), "a.json")
    assert not list(root.iterdir())


@pytest.mark.parametrize("rel", ["", "/abs", "../x", "a/../../x", "a/../b", "nul\0"], ids=repr)
def test_io_refuses_escaping_paths(rel: str, root: Path) -> None:
    with pytest.raises(DataStoreError):
        DataStoreIO(root).write(b"x", rel)
    with pytest.raises(DataStoreError):
        DataStoreIO(root).url(rel)


def test_io_pickle_needs_consent(root: Path) -> None:
    io = DataStoreIO(root)
    url = io.write(Model([1.0]), "m.pkl")
    with pytest.raises(DataStoreError, match="allow_pickle=True"):
        io.read(url)
    obj_url = io.write(np.array([1, None], dtype=object), "objects.pkl")
    assert io.read(obj_url, allow_pickle=True)[1] is None


def test_io_missing_root_and_file(tmp_path: Path) -> None:
    io = DataStoreIO(tmp_path / "absent")
    with pytest.raises(DataStoreError, match="not an existing directory"):
        io.write(b"x", "a.bin")
    with pytest.raises(DataStoreError, match="does not exist"):
        io.read("file:///a.bin")


def test_corrupt_file_is_a_clear_one_line_error(root: Path) -> None:
    (root / "bad.npy").write_bytes(b"not an npy file")
    (root / "bad.yaml").write_text("a: [\n")
    for name in ("bad.npy", "bad.yaml"):
        with pytest.raises(DataStoreError, match=f"cannot read file:///{name}") as info:
            DataStoreIO(root).read(f"file:///{name}")
        assert "\n" not in str(info.value)


def test_atomic_write_leaves_no_temporary_files(root: Path, folder: Path) -> None:
    DataStore(a=np.arange(3), b=b"x", c=1, d=Model([])).save(folder, root)
    assert sorted(os.listdir(folder)) == ["a.npy", "b.bin", "c.yaml", "d.pkl"]
