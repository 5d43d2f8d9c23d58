"""Data in and out: `opchain import` / `opchain export` with the real anndata package, numpy and
CSV; round trips keep values, dtypes, axis order and sparsity; bad files leave nothing."""

from __future__ import annotations

import shutil

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import REPO, Project

from opchain.daf import open_reader

CELLS = REPO / "storage" / "example_data" / "cells" / "daf_example"


def test_daf_to_h5ad_and_back_keeps_everything(project: Project) -> None:
    target = project.root / "cells.h5ad"
    project.opchain("export", str(CELLS), str(target))
    adata = anndata.read_h5ad(target)
    assert sp.issparse(adata.X) and adata.shape == (524, 10)
    project.opchain("import", str(target), "imported/cells")
    before, after = open_reader(CELLS), open_reader(project.storage / "imported" / "cells")
    for axis in ("cell", "gene"):
        assert list(after.axis_entries(axis)) == list(before.axis_entries(axis))
        assert after.data1d_names(axis) == before.data1d_names(axis)
        for name in before.data1d_names(axis):
            old, new = before.get_data1d(name), after.get_data1d(name)
            assert new.dtype == old.dtype and list(new) == list(old), name
    old, new = before.get_data2d("cell,gene#UMIs"), after.get_data2d("cell,gene#UMIs")
    assert sp.issparse(new) and new.dtype == old.dtype and (old != new).nnz == 0


def test_an_anndata_file_with_layers_and_embeddings(project: Project) -> None:
    rng = np.random.default_rng(0)
    adata = anndata.AnnData(
        X=sp.random(6, 4, density=0.5, format="csr", dtype=np.float32, random_state=1),
        obs=pd.DataFrame({"kind": pd.Categorical(list("aabbcc")), "size": np.arange(6.0)},
                         index=[f"c{i}" for i in range(6)]),
        var=pd.DataFrame({"used": [True, False, True, True]}, index=list("wxyz")),
        layers={"counts": np.arange(24, dtype=np.int64).reshape(6, 4)},
        obsm={"X_pca": rng.standard_normal((6, 2))},
    )  # fmt: skip
    adata.write_h5ad(project.root / "a.h5ad")
    project.opchain("import", "a.h5ad", "imported/a")
    data = open_reader(project.storage / "imported" / "a")
    assert list(data.axis_entries("gene")) == list("wxyz")
    assert list(data.get_data1d("cell#kind")) == list("aabbcc")
    assert data.get_data1d("cell#size").dtype == np.float64
    assert data.get_data1d("gene#used").dtype == bool
    assert sp.issparse(data.get_data2d("cell,gene#X"))
    np.testing.assert_array_equal(data.get_data2d("cell,gene#counts"), adata.layers["counts"])
    np.testing.assert_array_equal(data.get_data2d("cell,X_pca#X_pca"), adata.obsm["X_pca"])
    # A chain on the imported data, then its result out to scanpy's format.
    project.edit(
        "config/operations/log.yaml", "type: log1p\nparameters: {matrix: 'cell,gene#counts'}\n"
    )
    project.opchain("run-op", "config/operations/log.yaml", "imported", "--cores", "1")
    (result,) = project.storage.glob("operation_results/*/dataset_1")
    project.opchain("export", str(result), "out.h5ad", "--matrix", "cell,gene#counts")
    out = anndata.read_h5ad(project.root / "out.h5ad")
    np.testing.assert_allclose(out.X, np.log1p(adata.layers["counts"]).astype(np.float32))


def test_kmeans_clusters_go_to_scanpy(project: Project) -> None:
    """A result of vectors only (kmeans' cell#cluster): an AnnData with the clusters as an obs
    column, on the cells and genes of the matrix the step read, that matrix (from the step's
    input) as X; without its input, no X; without metadata, axes by --rows/--columns."""
    shutil.copytree(CELLS, project.storage / "cells" / "daf_example")
    project.edit(
        "config/operations/k.yaml",
        "type: kmeans\nparameters: {matrix: 'cell,gene#UMIs', clusters: 3, n_init: 1}\n",
    )
    project.opchain("run-op", "config/operations/k.yaml", "cells", "--cores", "1")
    (result,) = project.storage.glob("operation_results/*/dataset_1")
    assert not open_reader(result).data2d_names("cell", "gene")
    project.opchain("export", str(result), "clusters.h5ad")
    adata = anndata.read_h5ad(project.root / "clusters.h5ad")
    clusters = open_reader(result).get_data1d("cell#cluster")
    assert list(adata.obs_names) == list(open_reader(CELLS).axis_entries("cell"))
    assert list(adata.var_names) == list(open_reader(CELLS).axis_entries("gene"))
    np.testing.assert_array_equal(adata.obs["cluster"], clusters)
    assert (open_reader(CELLS).get_data2d("cell,gene#UMIs") != adata.X).nnz == 0
    assert list(adata.var["feature_gene"]) == list(
        open_reader(CELLS).get_data1d("gene#feature_gene")
    )
    shutil.rmtree(project.storage / "cells")  # the input gone: the vectors alone
    project.opchain("export", str(result), "alone.h5ad")
    alone = anndata.read_h5ad(project.root / "alone.h5ad")
    assert alone.X is None and alone.shape == (524, 10)
    np.testing.assert_array_equal(alone.obs["cluster"], clusters)
    copy = project.root / "copy"  # a plain dataset: no metadata to name the axes
    shutil.copytree(result, copy, ignore=shutil.ignore_patterns("metadata.yaml"))
    project.opchain(
        "export", str(copy), "metacells.h5ad", "--rows", "metacell", "--columns", "gene"
    )
    metacells = anndata.read_h5ad(project.root / "metacells.h5ad")
    assert metacells.shape == (10, 10) and "umap_x" in metacells.obs
    failed = project.opchain("export", str(copy), "x.npz", check=False)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1
    assert "holds no matrix to export (only vectors: export to .h5ad)" in failed.stderr
    failed = project.opchain("export", str(copy), "x.h5ad", "--rows", "sample", check=False)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1
    assert "no axis 'sample' for obs/var" in failed.stderr, failed.stderr


def test_numpy_and_csv_sources(project: Project) -> None:
    matrix = sp.random(5, 3, density=0.4, format="csr", random_state=2)
    sp.save_npz(project.root / "m.npz", matrix)
    np.save(project.root / "d.npy", np.arange(6.0).reshape(2, 3))
    (project.root / "t.csv").write_text(",g1,g2\nc1,1,2\nc2,3,4.5\n")
    for name in ("m.npz", "d.npy", "t.csv"):
        project.opchain("import", name, f"imported/{name.split('.')[0]}")
    m = open_reader(project.storage / "imported" / "m").get_data2d("cell,gene#value")
    assert sp.issparse(m) and (m != matrix).nnz == 0
    d = open_reader(project.storage / "imported" / "d").get_data2d("cell,gene#value")
    np.testing.assert_array_equal(d, np.arange(6.0).reshape(2, 3))
    t = open_reader(project.storage / "imported" / "t")
    assert list(t.axis_entries("cell")) == ["c1", "c2"] and list(t.axis_entries("gene")) == [
        "g1",
        "g2",
    ]
    np.testing.assert_array_equal(t.get_data2d("cell,gene#value"), [[1, 2], [3, 4.5]])
    project.opchain("export", str(project.storage / "imported" / "m"), "back.npz")
    assert (sp.load_npz(project.root / "back.npz") != matrix).nnz == 0


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.h5ad", b"\x89HDF\r\n truncated", "bad.h5ad: cannot import: "),
        ("bad.csv", b",a,b\nr1,1\n", "bad.csv:2: 2 fields, the header has 3"),
        ("bad.npy", b"not numpy", "bad.npy: cannot import: ValueError: "),
    ],
)
def test_a_malformed_source_is_one_line_and_leaves_nothing(
    project: Project, name: str, content: bytes, message: str
) -> None:
    (project.root / name).write_bytes(content)
    before = sorted(p.name for p in project.storage.rglob("*"))
    result = project.opchain("import", name, "imported/x", check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"opchain: {message}"), result.stderr
    assert sorted(p.name for p in project.storage.rglob("*")) == before


def test_a_destination_outside_the_storage_root_is_refused(project: Project) -> None:
    np.save(project.root / "d.npy", np.ones((2, 2)))
    result = project.opchain("import", "d.npy", "../escaped", check=False)
    assert result.returncode == 1 and "leaves the storage root" in result.stderr
    assert not (project.root / "escaped").exists()
