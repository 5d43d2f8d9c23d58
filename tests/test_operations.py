"""The built-in operations, called directly on small daf datasets, against plain numpy."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from opchain.daf import FilesReader, FilesWriter, H5Writer, open_reader
from opchain.datastore import DataStore
from opchain.errors import OpchainError, SpecError
from opchain.operations import Context, builtin, get_operation

RNG = np.random.default_rng(7)
X = RNG.poisson(3.0, size=(40, 6)).astype(np.float32)
OUTPUTS = itertools.count()
LABELS = np.array(["a", "b"] * 20, dtype=object)


def dataset(path: Path, matrix: object = X) -> Path:
    with FilesWriter(path) as out:
        out.set_item("organism", "test")
        out.create_axis("cell", np.array([f"c{i}" for i in range(40)], dtype=object))
        out.create_axis("gene", np.array([f"g{j}" for j in range(6)], dtype=object))
        out.set_data1d("cell#type", LABELS)
        out.set_data2d("cell,gene#X", matrix)
    return path


def apply(
    name: str,
    source: Path,
    params: dict,
    seed: int | None = None,
    out: str | None = None,
    threads: int = 1,
) -> tuple[object, Context]:
    """Run a registered operation as a job would (defaults filled in) and reopen its output."""
    op = get_operation(name)
    output = source.parent / (out or f"{name}_{next(OUTPUTS)}")
    writer = FilesWriter(output)
    ctx = Context(writer, DataStore(), logging.getLogger("test"), seed, op.random, None, threads)
    op.function(open_reader(source), {**op.defaults, **params}, ctx)
    writer.close()
    return open_reader(output), ctx


@pytest.mark.parametrize("sparse", [False, True])
def test_normalize_scales_rows_to_the_target_sum(tmp_path: Path, sparse: bool) -> None:
    source = dataset(tmp_path / "in", sp.csr_matrix(X) if sparse else X)
    out, _ = apply("normalize", source, {"matrix": "cell,gene#X", "target_sum": 100})
    result = out.get_data2d("cell,gene#X")
    dense = result.toarray() if sparse else np.asarray(result)
    sums = X.sum(axis=1)
    np.testing.assert_allclose(dense.sum(axis=1), np.where(sums > 0, 100, 0), rtol=1e-5)
    assert out.get_item("organism") == "test" and list(out.get_data1d("cell#type")) == list(LABELS)


@pytest.mark.parametrize("store", ["files", "h5"])
def test_sparse_operations_stream_row_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str
) -> None:
    """normalize and log1p on the shipped daf example's sparse UMIs, in blocks of a few non-zeros
    (as a billion non-zeros would go, in 64 MiB blocks): the input's structure, the values scipy
    computes on the whole matrix, and the same bytes whatever the block size."""

    cells = Path(__file__).resolve().parents[1] / "storage/example_data/cells/daf_example"
    umis = open_reader(cells).get_data2d("cell,gene#UMIs")
    whole = umis.astype(np.float64)
    sums = np.asarray(whole.sum(axis=1)).ravel()
    expected = {
        "normalize": sp.diags(np.divide(1e4, sums, out=np.zeros_like(sums), where=sums != 0))
        @ whole,
        "log1p": sp.csr_matrix((np.log1p(umis.data, dtype=np.float32), umis.indices, umis.indptr)),
    }
    results = {}
    for block_bytes in (builtin.BLOCK_BYTES, 8 * 7):  # 7 non-zeros a block: many blocks
        monkeypatch.setattr(builtin, "BLOCK_BYTES", block_bytes)
        for name, params in (("normalize", {"target_sum": 1e4}), ("log1p", {})):
            op = get_operation(name)
            target = tmp_path / f"{name}-{block_bytes}"
            writer = H5Writer(target.with_suffix(".h5")) if store == "h5" else FilesWriter(target)
            ctx = Context(writer, DataStore(), logging.getLogger("test"), None, False)
            op.function(
                open_reader(cells), {**op.defaults, **params, "matrix": "cell,gene#UMIs"}, ctx
            )
            writer.close()
            result = open_reader(writer.path).get_data2d("cell,gene#UMIs")
            assert sp.issparse(result) and result.dtype == np.float32
            np.testing.assert_array_equal(result.indices, umis.indices)
            np.testing.assert_allclose(result.toarray(), expected[name].toarray(), rtol=1e-6)
            results.setdefault(name, []).append(np.asarray(result.data).tobytes())
    assert all(len(set(found)) == 1 for found in results.values())


@pytest.mark.parametrize("sparse", [False, True])
def test_log1p(tmp_path: Path, sparse: bool) -> None:
    source = dataset(tmp_path / "in", sp.csr_matrix(X) if sparse else X)
    out, _ = apply("log1p", source, {"matrix": "cell,gene#X"})
    result = out.get_data2d("cell,gene#X")
    assert sp.issparse(result) == sparse
    np.testing.assert_allclose(result.toarray() if sparse else result, np.log1p(X), rtol=1e-6)


@pytest.mark.parametrize("sparse", [False, True])
def test_log1p_is_numpys_to_4_ulps_at_any_value(tmp_path: Path, sparse: bool) -> None:
    """Over 80 orders of magnitude, at the edges (0, -1, below -1, infinities, NaN), from
    float64 and int64 data: numpy's float32 log1p, to 4 units in the last place."""
    rng = np.random.default_rng(3)
    spread = np.concatenate([
        10.0 ** rng.uniform(-45, 38, 200), -(10.0 ** rng.uniform(-12, 0, 20)), rng.uniform(0, 5, 8),
        [0, 2.0**-24, 2.0**-23, 1e-8, 0.5, 1, -0.5, 7, 1e20, 1e-30, 3, np.finfo(np.float32).max],
    ])  # fmt: skip
    edges = np.tile([-1, -2, np.inf, -np.inf, np.nan, 3.0], 40)
    cubes = np.arange(240, dtype=np.int64) ** 3
    for values in (spread, edges, cubes):
        matrix = values.reshape(40, 6)
        source = dataset(
            tmp_path / f"in{next(OUTPUTS)}", sp.csr_matrix(matrix) if sparse else matrix
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            out, _ = apply("log1p", source, {"matrix": "cell,gene#X"})
            wanted = np.log1p(values.astype(np.float32))
        found = out.get_data2d("cell,gene#X")
        found = (found.toarray() if sparse else np.asarray(found)).ravel()
        finite = np.isfinite(wanted)
        np.testing.assert_array_equal(found[~finite], wanted[~finite])
        error = np.abs(found[finite] - wanted[finite].astype(np.float64))
        assert (error <= 4 * np.spacing(np.abs(wanted[finite]))).all()


def test_standardize_columns_and_rows(tmp_path: Path) -> None:
    source = dataset(tmp_path / "in")
    out, _ = apply("standardize", source, {"matrix": "cell,gene#X", "axis": "gene"})
    z = np.asarray(out.get_data2d("cell,gene#X"), dtype=np.float64)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-5)
    out, _ = apply("standardize", source, {"matrix": "cell,gene#X", "axis": "cell"})
    np.testing.assert_allclose(np.asarray(out.get_data2d("cell,gene#X")).mean(axis=1), 0, atol=1e-5)


def test_pca_matches_the_svd_projection(tmp_path: Path) -> None:
    source = dataset(tmp_path / "in")
    out, ctx = apply("pca", source, {"matrix": "cell,gene#X", "components": 3})
    projected = np.asarray(out.get_data2d("cell,pc#pca"), dtype=np.float64)
    centered = X.astype(np.float64) - X.mean(axis=0)
    u, s, _ = np.linalg.svd(centered, full_matrices=False)
    expected = u[:, :3] * s[:3]
    np.testing.assert_allclose(np.abs(projected), np.abs(expected), rtol=1e-4, atol=1e-4)
    assert list(out.axis_entries("pc")) == ["pc_1", "pc_2", "pc_3"]
    assert 0 < ctx.results["explained_variance_ratio"] <= 1
    with pytest.raises(OpchainError, match="components 7 exceeds the 6 columns"):
        apply("pca", source, {"matrix": "cell,gene#X", "components": 7})


def test_randomized_pca_matches_the_exact_one(tmp_path: Path) -> None:
    """On data with a clear spectrum (a low-rank signal plus noise), the randomized method's
    variances and projections agree with the exact method's to 1e-4 relative, deterministically."""
    rng = np.random.default_rng(7)
    signal = rng.standard_normal((300, 5)) * [40, 30, 20, 10, 5] @ rng.standard_normal((5, 60))
    source = tmp_path / "in"
    with FilesWriter(source) as out:
        out.create_axis("cell", np.array([f"c{i}" for i in range(300)], dtype=object))
        out.create_axis("gene", np.array([f"g{j}" for j in range(60)], dtype=object))
        out.set_data2d("cell,gene#X", (signal + rng.standard_normal((300, 60))).astype(np.float32))
    results = {}
    for method in ("exact", "randomized"):
        params = {"matrix": "cell,gene#X", "components": 5, "method": method}
        out, ctx = apply("pca", source, params)
        results[method] = (
            np.asarray(out.get_data1d("pc#explained_variance"), dtype=np.float64),
            np.asarray(out.get_data2d("cell,pc#pca"), dtype=np.float64),
            ctx.results["explained_variance_ratio"],
        )
    (ev, proj, ratio), (rev, rproj, rratio) = results["exact"], results["randomized"]
    np.testing.assert_allclose(rev, ev, rtol=1e-4)
    np.testing.assert_allclose(rproj, proj, rtol=1e-4, atol=1e-4 * np.abs(proj).max())
    assert rratio == pytest.approx(ratio, rel=1e-4)
    again, _ = apply(
        "pca", source, {"matrix": "cell,gene#X", "components": 5, "method": "randomized"}
    )
    assert np.array_equal(np.asarray(again.get_data2d("cell,pc#pca")), rproj.astype(np.float32))


@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_pca_of_a_sparse_matrix_is_the_dense_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """Sparse blocks are centered without densifying them: the same variances and projection
    as the dense matrix's, at blocks of five non-zeros."""
    monkeypatch.setattr(builtin, "BLOCK_BYTES", 8 * 5)
    params = {"matrix": "cell,gene#X", "components": 3, "method": method}
    dense, _ = apply("pca", dataset(tmp_path / "dense"), params)
    sparse, _ = apply("pca", dataset(tmp_path / "sparse", sp.csr_matrix(X)), params)
    for name in ("pc#explained_variance", "cell,pc#pca"):
        expected = np.asarray(dense.get_data1d(name) if "," not in name else dense.get_data2d(name))
        found = sparse.get_data1d(name) if "," not in name else sparse.get_data2d(name)
        np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_pca_plots_at_most_20000_rows(tmp_path: Path) -> None:
    rows = 25_000
    source = tmp_path / "in"
    with FilesWriter(source) as out:
        out.create_axis("cell", np.array([f"c{i}" for i in range(rows)], dtype=object))
        out.create_axis("gene", np.array([f"g{j}" for j in range(6)], dtype=object))
        out.set_data2d("cell,gene#X", RNG.poisson(3.0, size=(rows, 6)).astype(np.float32))
    out, ctx = apply("pca", source, {"matrix": "cell,gene#X", "components": 2})
    points = ctx.figures["first_components"].axes[0].collections[0].get_offsets()
    projected = np.asarray(out.get_data2d("cell,pc#pca"))
    np.testing.assert_array_equal(points, projected[::2])  # every other row: 12,500 points


def test_subsample_is_random_per_seed_and_reproducible(tmp_path: Path) -> None:
    source = dataset(tmp_path / "in")
    first, ctx = apply("subsample", source, {"matrix": "cell,gene#X", "fraction": 0.25}, seed=1)
    again, _ = apply("subsample", source, {"matrix": "cell,gene#X", "fraction": 0.25}, seed=1)
    other, _ = apply("subsample", source, {"matrix": "cell,gene#X", "fraction": 0.25}, seed=2)
    kept = [int(name[1:]) for name in first.axis_entries("cell")]
    assert len(kept) == 10 == ctx.results["rows_kept"] and kept == sorted(kept)
    assert list(again.axis_entries("cell")) == list(first.axis_entries("cell"))
    assert list(other.axis_entries("cell")) != list(first.axis_entries("cell"))
    np.testing.assert_array_equal(first.get_data2d("cell,gene#X"), X[kept])
    assert list(first.get_data1d("cell#type")) == list(LABELS[kept])


def test_split_marks_the_test_fraction(tmp_path: Path) -> None:
    source = dataset(tmp_path / "in")
    out, _ = apply("split", source, {"axis": "cell", "test_fraction": 0.25}, seed=0)
    is_test = np.asarray(out.get_data1d("cell#is_test"))
    assert is_test.dtype == bool and is_test.sum() == 10
    np.testing.assert_array_equal(out.get_data2d("cell,gene#X"), X)  # data carried over


def test_nearest_centroid_scores_separable_classes_perfectly(tmp_path: Path) -> None:
    separable = np.where((np.arange(40) % 2 == 0)[:, None], 0.0, 10.0) + X / 100
    source = dataset(tmp_path / "in", separable.astype(np.float32))
    apply("split", source, {"axis": "cell", "test_fraction": 0.5}, seed=3, out="split")
    out, ctx = apply(
        "nearest_centroid", tmp_path / "split", {"matrix": "cell,gene#X", "labels": "cell#type"}
    )
    assert ctx.results["accuracy"] == 1.0
    assert ctx.datastore["scores"]["accuracy"] == 1.0 and ctx.datastore["centroids"].shape == (2, 6)
    assert list(out.get_data1d("cell#predicted")) == list(LABELS)


def grouped(path: Path, matrix: object, labels: np.ndarray, is_test: np.ndarray) -> Path:
    with FilesWriter(path) as out:
        out.create_axis("cell", np.array([f"c{i}" for i in range(len(labels))], dtype=object))
        out.create_axis("gene", np.array([f"g{j}" for j in range(6)], dtype=object))
        out.set_data1d("cell#type", labels)
        out.set_data1d("cell#is_test", is_test)
        out.set_data2d("cell,gene#X", matrix)
    return path


@pytest.mark.parametrize("sparse", [False, True])
def test_nearest_centroid_streams_what_numpy_computes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sparse: bool
) -> None:
    """At blocks of a row, dense or sparse: the centroids, predictions and accuracy of a direct
    numpy computation, a class seen only in test rows scored wrong, and no training rows an
    error."""
    monkeypatch.setattr(builtin, "BLOCK_BYTES", 8)
    labels = np.array(list("abcab" * 7) + ["z"] * 5, dtype=object)  # z: test rows only
    is_test = (np.arange(40) % 3 == 0) | (labels == "z")
    source = grouped(tmp_path / "in", sp.csr_matrix(X) if sparse else X, labels, is_test)
    out, ctx = apply("nearest_centroid", source, {"matrix": "cell,gene#X", "labels": "cell#type"})
    classes = ["a", "b", "c"]
    centroids = np.stack([X[~is_test & (labels == c)].mean(axis=0) for c in classes])
    np.testing.assert_allclose(ctx.datastore["centroids"], centroids)
    predicted = np.array(classes)[((X[:, None] - centroids[None]) ** 2).sum(axis=2).argmin(axis=1)]
    assert out.get_data1d("cell#predicted").tolist() == predicted.tolist()
    assert ctx.results["accuracy"] == (predicted == labels)[is_test].mean()
    assert ctx.datastore["classes"] == classes
    no_training = grouped(tmp_path / "all", X, labels, np.ones(40, bool))
    with pytest.raises(OpchainError, match="no training rows"):
        apply("nearest_centroid", no_training, {"matrix": "cell,gene#X", "labels": "cell#type"})


def test_kmeans_finds_separated_clusters(tmp_path: Path) -> None:
    blobs = np.where((np.arange(40) < 20)[:, None], 0.0, 50.0) + X / 10
    source = dataset(tmp_path / "in", blobs.astype(np.float32))
    out, ctx = apply("kmeans", source, {"matrix": "cell,gene#X", "clusters": 2}, seed=0)
    cluster = np.asarray(out.get_data1d("cell#cluster"))
    assert len(set(cluster[:20])) == 1 and len(set(cluster[20:])) == 1 and cluster[0] != cluster[-1]
    assert ctx.results["inertia"] == ctx.datastore["scores"]["inertia"] > 0


@pytest.mark.parametrize("sparse", [False, True])
def test_kmeans_streams_what_lloyds_algorithm_computes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sparse: bool
) -> None:
    """At blocks of a row, dense or sparse: the clusters and inertia of Lloyd's algorithm run on
    the whole matrix in numpy from the same random rows, converged or stopped early."""
    monkeypatch.setattr(builtin, "BLOCK_BYTES", 8)
    source = dataset(tmp_path / "in", sp.csr_matrix(X) if sparse else X)
    for iterations in (1, 50):
        params = {"matrix": "cell,gene#X", "clusters": 3, "iterations": iterations}
        params |= {"init": "random", "n_init": 1}
        out, ctx = apply("kmeans", source, params, seed=4)
        centroids = X[np.random.default_rng(4).choice(40, size=3, replace=False)].astype(float)
        for _ in range(iterations):
            assigned = ((X[:, None] - centroids[None]) ** 2).sum(axis=2).argmin(axis=1)
            moved = np.stack([X[assigned == c].mean(axis=0) for c in range(3)])
            if np.allclose(moved, centroids):
                break
            centroids = moved
        assigned = ((X[:, None] - centroids[None]) ** 2).sum(axis=2).argmin(axis=1)
        assert out.get_data1d("cell#cluster").tolist() == assigned.tolist(), iterations
        inertia = ((X - centroids[assigned]) ** 2).sum()
        assert ctx.results["inertia"] == pytest.approx(inertia, rel=1e-9), iterations


def digits_pca(tmp_path: Path) -> Path:
    """The shipped digits (first half) standardized and projected on 10 components."""
    digits = Path(__file__).resolve().parents[1] / "storage/example_data/digits/first_half"
    params = {"matrix": "sample,pixel#value", "axis": "pixel"}
    standardized, _ = apply("standardize", digits, params, out=str(tmp_path / "standardized"))
    params = {"matrix": "sample,pixel#value", "components": 10}
    projected, _ = apply("pca", Path(standardized.path), params, out=str(tmp_path / "pca"))
    return Path(projected.path)


def test_kmeans_inertia_is_within_2_percent_of_scikit_learn_on_real_data(tmp_path: Path) -> None:
    """By default (k-means++, 10 starts), on the digits after standardize and pca and on the
    shipped cells after normalize and log1p: at each seed, an inertia at most 2% above
    scikit-learn's KMeans(n_init=10) (on the cells, one start from random rows, what kmeans did
    before, is over 2% above it at every seed)."""
    from sklearn.cluster import KMeans  # a test dependency only

    cells = Path(__file__).resolve().parents[1] / "storage/example_data/cells/daf_example"
    params = {"matrix": "cell,gene#UMIs", "target_sum": 1e4}
    normalized, _ = apply("normalize", cells, params, out=str(tmp_path / "normalized"))
    params = {"matrix": "cell,gene#UMIs"}
    logged, _ = apply("log1p", Path(normalized.path), params, out=str(tmp_path / "logged"))
    for source, name in (
        (digits_pca(tmp_path), "sample,pc#pca"),
        (Path(logged.path), "cell,gene#UMIs"),
    ):
        matrix = open_reader(source).get_data2d(name)
        dense = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
        theirs = KMeans(8, n_init=10, random_state=0).fit(dense.astype(np.float64)).inertia_
        for seed in range(3):
            _, ctx = apply("kmeans", source, {"matrix": name}, seed=seed)
            assert ctx.results["inertia"] <= 1.02 * theirs, (name, seed)
    once = {"matrix": "cell,gene#UMIs", "init": "random", "n_init": 1}
    for seed in range(3):
        assert (
            apply("kmeans", Path(logged.path), once, seed=seed)[1].results["inertia"]
            > 1.02 * theirs
        )


def test_kmeans_is_deterministic_per_seed_whatever_the_block_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same seed gives byte-identical clusters and the same inertia, also in blocks of a
    few rows; another seed starts from other rows."""
    source = digits_pca(tmp_path)
    params = {"matrix": "sample,pc#pca", "clusters": 6, "n_init": 3}
    runs = [apply("kmeans", source, params, seed=seed) for seed in (1, 1, 2)]
    monkeypatch.setattr(builtin, "BLOCK_BYTES", 8 * 10 * 6 * 3)  # 3 rows a block
    runs.append(apply("kmeans", source, params, seed=1))
    clusters = [(Path(out.path) / "sample#cluster.array").read_bytes() for out, _ in runs]
    inertias = [ctx.results["inertia"] for _, ctx in runs]
    assert clusters[0] == clusters[1] == clusters[3] and inertias[0] == inertias[1]
    assert inertias[3] == pytest.approx(inertias[0], rel=1e-12)
    assert clusters[2] != clusters[0]  # the same clusters numbered otherwise, at least


def test_unknown_and_undecorated_operations_are_refused() -> None:
    with pytest.raises(SpecError, match="unknown operation 'nope'"):
        get_operation("nope")
    with pytest.raises(SpecError, match="is not an operation"):
        get_operation("os.path:join")


def test_context_rng_is_seeded_for_random_operations_only() -> None:
    log = logging.getLogger("test")
    ctx = Context(None, DataStore(), log, 5, True)
    assert ctx.rng.integers(1 << 62) == np.random.default_rng(5).integers(1 << 62)
    assert ctx.rng is ctx.rng  # one generator per job: later draws continue, never restart
    assert Context(None, DataStore(), log, 5, False).rng is None


def tiny(path: Path, rows: int) -> Path:
    """A dataset with ``rows`` cells (0 or 1 for the edge cases) and the usual columns."""
    with FilesWriter(path) as out:
        out.create_axis("cell", np.array([f"c{i}" for i in range(rows)], dtype=object))
        out.create_axis("gene", np.array([f"g{j}" for j in range(6)], dtype=object))
        out.set_data1d("cell#type", LABELS[:rows])
        out.set_data2d("cell,gene#X", X[:rows])
    return path


@pytest.mark.parametrize("sparse_x", [False, True])
def test_filter_keeps_the_entries_that_pass(tmp_path: Path, sparse_x: bool) -> None:
    source = dataset(tmp_path / "in", sp.csr_matrix(X) if sparse_x else X)
    params = {"axis": "cell", "property": "cell#type", "op": "==", "value": "a"}
    out, ctx = apply("filter", source, params)
    keep = LABELS == "a"
    kept = out.get_data2d("cell,gene#X")
    np.testing.assert_array_equal(kept.toarray() if sparse_x else kept, X[keep])
    assert list(out.axis_entries("cell")) == [f"c{i}" for i in np.flatnonzero(keep)]
    assert ctx.results["kept"] == 20
    genes, _ = apply(
        "filter", source, {"axis": "cell", "property": "cell#type", "op": "in", "value": ["b"]}
    )
    assert list(genes.get_data1d("cell#type")) == ["b"] * 20
    for rows in (0, 1):
        empty, _ = apply("filter", tiny(tmp_path / f"t{rows}", rows), params)
        assert empty.axis_size("cell") == rows and empty.get_data2d("cell,gene#X").shape == (
            rows,
            6,
        )
    with pytest.raises(OpchainError, match="values of cell#type can't be compared with 3 by <"):
        apply("filter", source, {**params, "op": "<", "value": 3})


@pytest.mark.parametrize("store", ["files", "h5"])
def test_take_matrix_streams_what_indexing_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str
) -> None:
    """filter and subsample write ``matrix[rows][:, columns]`` block by block: at many tiny
    blocks the same values, dtypes, layout and CSR arrays as numpy and scipy indexing."""
    counts = RNG.poisson(0.7, size=(30, 30)).astype(np.int64)
    matrices = {
        "dense": counts.astype(np.float32),
        "flags": counts > 1,
        "sparse": sp.csr_matrix(counts),
        "sparse_empty_rows": sp.csr_matrix(counts * (np.arange(30) % 3 == 0)[:, None]),
    }
    source = tmp_path / "source"
    with FilesWriter(source) as out:
        out.create_axis("cell", np.array([f"c{i}" for i in range(30)], dtype=object))
        for name, matrix in matrices.items():
            out.set_data2d(f"cell,cell#{name}", matrix)
    picks = {
        "rows": (np.array([0, 3, 4, 17, 29]), None),
        "columns": (None, np.array([1, 2, 28])),
        "both": (np.arange(0, 30, 2), np.arange(0, 30, 2)),
        "none": (np.array([], dtype=np.int64), np.array([], dtype=np.int64)),
    }
    monkeypatch.setattr(builtin, "BLOCK_BYTES", 8 * 5)  # a row or five non-zeros a block
    for pick, (rows, columns) in picks.items():
        path = tmp_path / (pick + (".h5" if store == "h5" else ""))
        writer = H5Writer(path) if store == "h5" else FilesWriter(path)
        reader = open_reader(source)
        size = 30 if rows is None else len(rows)
        writer.create_axis("row", np.array([f"r{i}" for i in range(size)], dtype=object))
        size = 30 if columns is None else len(columns)
        writer.create_axis("column", np.array([f"k{i}" for i in range(size)], dtype=object))
        for name in matrices:
            matrix = reader.get_data2d(f"cell,cell#{name}")
            builtin.take_matrix(writer, f"row,column#{name}", matrix, rows, columns)
        writer.close()
        taken = open_reader(path)
        for name, matrix in matrices.items():
            expected = matrix[rows if rows is not None else slice(None)]
            expected = expected[:, columns if columns is not None else slice(None)]
            found = taken.get_data2d(f"row,column#{name}")
            assert sp.issparse(found) == sp.issparse(expected), (pick, name)
            if sp.issparse(expected):
                expected = sp.csr_matrix(expected)
                for part in ("data", "indices", "indptr"):
                    assert same_array(getattr(found, part), getattr(expected, part)), (pick, name)
            else:
                assert same_array(found, expected), (pick, name)


def same_array(found: object, expected: object) -> bool:
    found, expected = np.asarray(found), np.asarray(expected)
    return found.dtype == expected.dtype and np.array_equal(found, expected)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("method", ["sum", "mean"])
def test_aggregate_groups_rows_by_a_property(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, sparse: bool
) -> None:
    monkeypatch.setattr(builtin, "BLOCK_BYTES", 8 * 5)  # a row, or five non-zeros, a block
    source = dataset(tmp_path / "in", sp.csr_matrix(X) if sparse else X)
    params = {"matrix": "cell,gene#X", "by": "cell#type", "method": method}
    out, _ = apply("aggregate", source, params)
    assert list(out.axis_entries("type")) == ["a", "b"]
    reduce = np.sum if method == "sum" else np.mean
    expected = np.stack([reduce(X[g == LABELS], axis=0) for g in ("a", "b")])
    np.testing.assert_allclose(out.get_data2d("type,gene#X"), expected)
    numbers = grouped(tmp_path / "numbers", X, np.arange(40) % 12, np.zeros(40, bool))
    by_number, _ = apply("aggregate", numbers, {**params, "by": "cell#type"})
    groups = sorted(str(g) for g in range(12))  # the groups' names, in their order as strings
    assert by_number.axis_entries("type").tolist() == groups
    expected = np.stack([reduce(X[np.arange(40) % 12 == int(g)], axis=0) for g in groups])
    np.testing.assert_allclose(by_number.get_data2d("type,gene#X"), expected)
    one, _ = apply(
        "aggregate", tiny(tmp_path / "one", 1), {"matrix": "cell,gene#X", "by": "cell#type"}
    )
    np.testing.assert_array_equal(one.get_data2d("type,gene#X"), X[:1])
    none, _ = apply(
        "aggregate", tiny(tmp_path / "none", 0), {"matrix": "cell,gene#X", "by": "cell#type"}
    )
    assert none.axis_size("type") == 0


def test_steps_scan_string_properties_without_holding_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """filter, aggregate and nearest_centroid read a files dataset's string property in pieces
    and write their string results onto the copied axis without reading its entries: of 10
    million rows, either would be a gigabyte of strings."""
    is_test = np.arange(40) % 4 == 0
    source = grouped(tmp_path / "in", X, LABELS, is_test)
    read_whole = FilesReader.get_data1d

    def numbers_only(reader: FilesReader, name: str) -> np.ndarray:
        assert name != "cell#type", "the string property was read whole"
        return read_whole(reader, name)

    monkeypatch.setattr(FilesReader, "get_data1d", numbers_only)
    monkeypatch.setattr(FilesReader, "_axis_entries", None)  # the cell entries are never read
    kept, _ = apply("filter", source, {"axis": "cell", "property": "cell#type", "value": "b"})
    groups, _ = apply("aggregate", source, {"matrix": "cell,gene#X", "by": "cell#type"})
    params = {"matrix": "cell,gene#X", "labels": "cell#type"}
    fitted, _ = apply("nearest_centroid", source, params)
    monkeypatch.undo()
    assert kept.get_data1d("cell#type").tolist() == ["b"] * 20
    assert groups.axis_entries("type").tolist() == ["a", "b"]
    centroids = np.stack([X[~is_test & (c == LABELS)].mean(axis=0) for c in "ab"])
    nearest = ((X[:, None] - centroids[None]) ** 2).sum(axis=2).argmin(axis=1)
    assert fitted.get_data1d("cell#predicted").tolist() == np.array(["a", "b"])[nearest].tolist()


def test_reshaping_built_ins_on_the_shipped_daf_fixture(tmp_path: Path) -> None:
    """filter, aggregate, kfold and convert on the real daf example (a sparse cells x genes
    matrix, a dense metacells x genes one, string and number properties) give what numpy and
    scipy compute on it directly."""
    fixture = tmp_path / "daf_example"  # a copy: results are written beside it
    shutil.copytree(
        Path(__file__).resolve().parents[1] / "storage/example_data/cells/daf_example", fixture
    )
    source = open_reader(fixture)
    umis, per_metacell = (
        source.get_data2d("cell,gene#UMIs"),
        source.get_data2d("metacell,gene#UMIs"),
    )
    batch, metacell = source.get_data1d("cell#batch"), source.get_data1d("cell#metacell")
    features = source.get_data1d("gene#feature_gene")

    cells, ctx = apply(
        "filter", fixture, {"axis": "cell", "property": "cell#batch", "value": "Batch_1"}
    )
    keep = batch == "Batch_1"
    assert ctx.results["kept"] == keep.sum() == cells.axis_size("cell")
    assert (cells.get_data2d("cell,gene#UMIs") != umis[keep]).nnz == 0
    assert cells.get_data1d("cell#metacell").tolist() == metacell[keep].tolist()
    assert np.array_equal(cells.get_data2d("metacell,gene#UMIs"), per_metacell)
    params = {"axis": "gene", "property": "gene#feature_gene", "op": ">=", "value": 4}
    genes, _ = apply("filter", fixture, params)
    wide = features >= 4
    assert (genes.get_data2d("cell,gene#UMIs") != umis[:, wide]).nnz == 0
    assert np.array_equal(genes.get_data2d("metacell,gene#UMIs"), per_metacell[:, wide])

    for by, values in (("cell#batch", batch), ("cell#metacell", metacell)):
        groups = sorted({str(value) for value in values})
        for method in ("sum", "mean"):
            params = {"matrix": "cell,gene#UMIs", "by": by, "method": method, "axis": "group"}
            out, _ = apply("aggregate", fixture, params)
            assert out.axis_entries("group").tolist() == groups
            rows = [values.astype(str) == group for group in groups]
            expected = np.stack([np.asarray(umis[r].sum(axis=0)).ravel() for r in rows])
            if method == "mean":
                expected = expected / np.array([r.sum() for r in rows])[:, None]
            np.testing.assert_allclose(out.get_data2d("group,gene#UMIs"), expected, rtol=1e-12)

    folds = [
        apply("kfold", fixture, {"axis": "cell", "folds": 3, "fold": f}, seed=5)[0].get_data1d(
            "cell#is_test"
        )
        for f in range(3)
    ]
    assert (np.sum(folds, axis=0) == 1).all() and sorted(map(np.sum, folds)) == [174, 175, 175]

    dense, _ = apply(
        "convert", fixture, {"matrix": "cell,gene#UMIs", "dtype": "float64", "layout": "dense"}
    )
    assert same_array(dense.get_data2d("cell,gene#UMIs"), umis.toarray().astype(np.float64))
    params = {"matrix": "metacell,gene#UMIs", "dtype": "int32", "layout": "sparse"}
    packed, _ = apply("convert", fixture, params)
    expected = sp.csr_matrix(np.asarray(per_metacell).astype(np.int32))
    found = packed.get_data2d("metacell,gene#UMIs")
    for part in ("data", "indices", "indptr"):
        assert same_array(getattr(found, part), getattr(expected, part)), part


def test_kfold_folds_are_disjoint_and_cover_the_axis(tmp_path: Path) -> None:
    source = dataset(tmp_path / "in")
    tests = [
        np.asarray(apply("kfold", source, {"axis": "cell", "folds": 4, "fold": f}, seed=3)[0].get_data1d("cell#is_test"))
        for f in range(4)
    ]  # fmt: skip
    assert all(t.sum() == 10 for t in tests) and np.array_equal(np.sum(tests, axis=0), np.ones(40))
    other = np.asarray(
        apply("kfold", source, {"axis": "cell", "folds": 4}, seed=4)[0].get_data1d("cell#is_test")
    )
    assert not np.array_equal(other, tests[0])  # another run, another partition


def test_convert_changes_dtype_and_layout(tmp_path: Path) -> None:
    source = dataset(tmp_path / "in")
    to_sparse, _ = apply(
        "convert", source, {"matrix": "cell,gene#X", "dtype": "float64", "layout": "sparse"}
    )
    m = to_sparse.get_data2d("cell,gene#X")
    assert sp.issparse(m) and m.dtype == np.float64
    np.testing.assert_array_equal(m.toarray(), X.astype(np.float64))
    back = tmp_path / "sparse_in"
    dataset(back, sp.csr_matrix(X))
    to_dense, _ = apply(
        "convert", back, {"matrix": "cell,gene#X", "dtype": "int32", "layout": "dense"}
    )
    d = np.asarray(to_dense.get_data2d("cell,gene#X"))
    assert d.dtype == np.int32 and np.array_equal(d, X.astype(np.int32))
    kept, _ = apply("convert", back, {"matrix": "cell,gene#X", "dtype": "float64"})
    assert sp.issparse(kept.get_data2d("cell,gene#X"))
    for i, matrix in enumerate((sp.csr_matrix(X / 2), X / 2, X)):  # as astype converts
        source = dataset(tmp_path / f"cast{i}", matrix)
        out, _ = apply("convert", source, {"matrix": "cell,gene#X", "dtype": "int16"})
        found = out.get_data2d("cell,gene#X")
        assert found.dtype == np.int16 and sp.issparse(found) == sp.issparse(matrix)
        values = found.toarray() if sp.issparse(found) else np.asarray(found)
        np.testing.assert_array_equal(values, (X if i == 2 else X / 2).astype(np.int16))
    same, _ = apply("convert", source, {"matrix": "cell,gene#X"})  # float32 as it is
    np.testing.assert_array_equal(same.get_data2d("cell,gene#X"), X)
    for rows in (0, 1):
        small, _ = apply(
            "convert",
            tiny(tmp_path / f"t{rows}", rows),
            {"matrix": "cell,gene#X", "layout": "sparse"},
        )
        assert small.get_data2d("cell,gene#X").shape == (rows, 6)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        (
            "filter",
            {"axis": "cell", "property": "cell#type", "op": "~", "value": 1},
            "'~' is not one of",
        ),
        (
            "aggregate",
            {"matrix": "cell,gene#X", "by": "cell#type", "method": "max"},
            "'max' is not one of",
        ),
        ("kfold", {"axis": "cell", "folds": 1}, "1 is less than the minimum of 2"),
        ("convert", {"matrix": "cell,gene#X", "dtype": "complex128"}, "'complex128' is not one of"),
        ("filter", {"axis": "cell", "op": "=="}, "'property' is a required property"),
        # checks across parameters (the operations' check=), at planning too
        ("kfold", {"axis": "cell", "folds": 4, "fold": 4}, "fold 4 is not one of the 4 folds"),
        ("standardize", {"matrix": "cell,gene#X", "axis": "batch"}, "'batch' is not an axis"),
        (
            "filter",
            {"axis": "cell", "property": "gene#x", "value": 1},
            "'gene#x' is not a vector of the axis 'cell'",
        ),
        (
            "filter",
            {"axis": "cell", "property": "cell#type", "op": "in", "value": "a"},
            "op 'in' needs a list value",
        ),
        (
            "aggregate",
            {"matrix": "cell,gene#X", "by": "gene#type"},
            "'gene#type' is not a vector of the axis 'cell'",
        ),
    ],
)
def test_bad_parameters_of_new_built_ins_are_refused_at_planning(
    tmp_path: Path, name: str, params: dict, message: str
) -> None:
    import yaml

    from opchain.spec import load_operation

    spec = tmp_path / "op.yaml"
    spec.write_text(yaml.safe_dump({"type": name, "parameters": params}))
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        load_operation(spec)


def keep_identity_but_change_bytes(path: Path) -> None:
    """Flip every byte of ``path`` and put its modification time back: the same inode, size and
    time, other bytes (what bit rot looks like to a stat)."""
    status = path.stat()
    path.write_bytes(bytes(255 - b for b in path.read_bytes()))
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))


@pytest.mark.parametrize("order", ["rows in order", "rows out of order", "another dtype"])
def test_a_matrix_written_in_row_order_is_hashed_on_the_way(tmp_path: Path, order: str) -> None:
    """A matrix written block by block in row order gets the digest of the bytes written, not
    read back (its file's bytes, changed behind its stat, do not change it); any other order or
    a dtype to convert from is read back: the digest is the file's either way."""
    from opchain import verify
    from opchain.operations.builtin import write_behind

    values = RNG.random((12, 5)).astype(np.float32)
    pieces = [(slice(i, i + 3), values[i : i + 3]) for i in range(0, 12, 3)]
    if order == "rows out of order":
        pieces.reverse()
    if order == "another dtype":
        pieces = [(rows, block.astype(np.float64)) for rows, block in pieces]
    with FilesWriter(tmp_path / "d") as out:
        out.create_axis("cell", np.array([f"c{i}" for i in range(12)], dtype=object))
        out.create_axis("gene", np.array([f"g{j}" for j in range(5)], dtype=object))
        with out.create_dense_in_rows("cell,gene#X", "float32") as target:
            write_behind(target, pieces)
    array = tmp_path / "d" / "cell,gene#X.array"
    assert np.array_equal(np.fromfile(array, np.float32).reshape(12, 5), values)
    written = verify.file_digest(array)
    keep_identity_but_change_bytes(array)
    found = verify.digests(tmp_path / "d", {})["cell,gene#X.array"]
    assert found == (written if order == "rows in order" else verify.file_digest(array))


@pytest.mark.parametrize("kind", ["the user's", "a result"])
def test_files_linked_from_an_input_take_its_recorded_digests(tmp_path: Path, kind: str) -> None:
    """A result's file hard-linked from an input has the digest the input recorded when first
    read, or a result's sealed one (a large input's files are not hashed again for every result
    that links them)."""
    from opchain import verify

    storage = tmp_path / "storage"
    source = dataset(storage / "inputs" / "a")
    if kind == "a result":
        sealed = verify.sealed("operation: x\n", verify.digests(source, {}))
        (source / "metadata.yaml").write_text(sealed)
    verify.record_input(storage, "inputs/a")
    recorded = verify.file_digest(source / "cell,gene#X.array")
    keep_identity_but_change_bytes(source / "cell,gene#X.array")
    result = tmp_path / "result"
    result.mkdir()
    os.link(source / "cell,gene#X.array", result / "cell,gene#X.array")
    assert verify.digests(result, {}) == {"cell,gene#X.array": recorded}


def test_each_piece_gives_each_thread_a_contiguous_run_of_the_pieces() -> None:
    import threading

    seen: list[tuple[int, int]] = []
    together = threading.Barrier(3, timeout=30)  # passed only if three runs are at work at once

    def work(i: int) -> None:
        if i in (0, 3, 6):  # the first piece of each run
            together.wait()
        seen.append((i, threading.get_ident()))

    builtin.each_piece(range(10), work, threads=3)
    assert sorted(i for i, _ in seen) == list(range(10))  # each piece once
    runs = [[i for i, t in sorted(seen) if t == thread] for thread in {t for _, t in seen}]
    assert sorted(runs) == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


def test_a_job_reuses_the_memory_numpy_frees() -> None:
    """The temporaries of a piece's arithmetic (256 KiB and more) are freed and allocated again
    piece after piece: in a job (``keep_freed_memory``) they reuse the same pages, where by
    default each would be fresh pages faulted in again (more work than the arithmetic)."""
    import subprocess
    import sys

    def page_faults(keep: bool) -> int:
        script = (
            "import resource, numpy as np\n"
            "from opchain.operations.builtin import PIECE_VALUES, log1p_into\n"
            "from opchain.run import keep_freed_memory\n"
            f"if {keep}: keep_freed_memory()\n"
            "x, into = np.ones(PIECE_VALUES, np.float32), np.empty(PIECE_VALUES, np.float32)\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(200): log1p_into(x, into)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
        )
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        return int(run.stdout)

    assert page_faults(True) * 10 < page_faults(False)


@pytest.mark.parametrize("sparse", [False, True])
def test_streaming_steps_write_the_same_bytes_at_any_thread_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sparse: bool
) -> None:
    """A dataset's pieces computed side by side (the job's spare threads) come out byte for byte
    as computed one after another: pieces are cut by the data, never by the thread count."""
    monkeypatch.setattr(builtin, "PIECE_VALUES", 4)  # a row or four non-zeros a piece
    monkeypatch.setattr(builtin, "BLOCK_BYTES", 8 * 60)  # and several blocks
    matrix = sp.csr_matrix(X) if sparse else X
    source = dataset(tmp_path / "storage" / "in", matrix)
    steps = [
        ("normalize", {"matrix": "cell,gene#X", "target_sum": 10.0}),
        ("log1p", {"matrix": "cell,gene#X"}),
        ("standardize", {"matrix": "cell,gene#X", "axis": "gene"}),
        ("standardize", {"matrix": "cell,gene#X", "axis": "cell"}),
        ("convert", {"matrix": "cell,gene#X", "dtype": "float64"}),
        ("pca", {"matrix": "cell,gene#X", "components": 2, "method": "exact"}),
    ]
    for k, (name, params) in enumerate(steps):
        written = {}
        for threads in (1, 2, 4):
            out = f"{name}{k}_{threads}"
            apply(name, source, params, out=out, threads=threads)
            files = sorted((tmp_path / "storage" / out).glob("cell,*#*.*"))
            written[threads] = {f.name: f.read_bytes() for f in files}
        assert written[1] == written[2] == written[4] and written[1], name


def test_column_moments_of_a_wide_block_keep_their_partial_sums_small() -> None:
    """Summing a block's pieces side by side keeps each run's sums until they are added in order:
    a few rows' worth, never a row of sums per piece of one row (as large as the block)."""
    import tracemalloc

    wide = RNG.random((64, 20_000)).astype(np.float32)  # pieces of a few rows: ~22 a block
    tracemalloc.start()
    mean, std = builtin.column_moments(wide, threads=2)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.allclose(mean, wide.mean(axis=0)) and np.allclose(std, wide.std(axis=0), atol=1e-6)
    assert peak < wide.nbytes, peak  # 5 MiB of float32; sums per piece alone would be 7 MiB


def test_write_behind_never_writes_a_buffer_being_refilled() -> None:
    """Blocks computed into two reused buffers while a slow writer writes the previous one: every
    block lands intact (a write still in flight on a buffer being refilled would mix blocks)."""
    import time

    from opchain.operations.builtin import Buffers, write_behind

    class SlowTarget:
        def __init__(self) -> None:
            self.rows = np.zeros((12, 3))

        def __setitem__(self, rows: slice, block: np.ndarray) -> None:
            time.sleep(0.01)  # the next block is computed meanwhile
            self.rows[rows] = block

    buffers = Buffers(np.float64)

    def blocks():
        for i in range(6):
            into = buffers.take(i, (2, 3))
            into[:] = i
            yield slice(2 * i, 2 * i + 2), into

    target = SlowTarget()
    write_behind(target, blocks())
    assert target.rows[:, 0].tolist() == [i for i in range(6) for _ in range(2)]
