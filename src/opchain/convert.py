"""Data in and out: ``opchain import`` and ``opchain export`` between daf datasets and the files
scanpy, numpy and spreadsheets use.

In: ``.h5ad`` (AnnData: ``X`` and ``layers`` as ``<obs>,<var>#<name>`` matrices, sparse kept
sparse; ``obs``/``var`` columns as vectors; ``obsm``/``varm`` matrices on an axis of their own named
by their key), ``.npy`` (a 2D array), ``.npz`` (a scipy.sparse matrix, or numpy arrays of one shape)
and ``.csv`` (a matrix with a header row of column names; an empty first header cell means the first
column holds the row names). Out: ``.h5ad`` (one matrix as ``X``, the others on the same axes as
layers, vectors as obs/var columns, matrices from the row axis to another as obsm) and ``.npz``.

A dataset is written aside and renamed into place whole (daf writers), so a malformed source leaves
nothing; every problem is one ``OpchainError`` line naming the file.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from opchain.daf import FilesWriter, open_reader
from opchain.errors import OpchainError

__all__ = ["export_dataset", "import_dataset"]


def import_dataset(source: Path, dest: Path, rows: str = "cell", columns: str = "gene") -> None:
    """Write ``source`` as the daf dataset ``dest`` (which must not exist)."""
    if dest.exists():
        raise OpchainError(f"{dest}: already exists (choose a new dataset name)")
    readers = {".h5ad": _from_h5ad, ".npy": _from_npy, ".npz": _from_npz, ".csv": _from_csv}
    reader = readers.get(source.suffix.lower())
    if reader is None:
        raise OpchainError(
            f"{source}: cannot import {source.suffix or 'this'} files ({', '.join(readers)})"
        )
    if not source.is_file():
        raise OpchainError(f"{source}: no such file")
    created = [p for p in dest.parents if not p.exists()]  # folders the writer makes for dest
    try:
        with FilesWriter(dest) as out:
            reader(source, out, rows, columns)
    except Exception as error:  # a malformed file: whatever its parser raised, in one line
        for folder in created:  # deepest first: leave the storage root as it was
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if isinstance(error, OpchainError):
            raise
        raise OpchainError(f"{source}: cannot import: {type(error).__name__}: {error}") from None


def _names(values: Any) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=object)


def _matrix(name: str, x: Any) -> Any:
    """CSR or a dense ndarray, as daf stores them."""
    import scipy.sparse as sp

    if sp.issparse(x):
        return sp.csr_matrix(x)
    x = np.asarray(x)
    if x.ndim != 2:
        raise OpchainError(f"{name}: a matrix must be 2D, not of shape {x.shape}")
    return x


def _vector(values: Any) -> np.ndarray:
    """A column as daf stores it: numbers and bools as they are, anything else as strings."""
    array = np.asarray(values)
    if array.dtype.kind in "biuf":
        return array
    return np.array([None if v is None else str(v) for v in values], dtype=object)


def _from_h5ad(source: Path, out: FilesWriter, rows: str, columns: str) -> None:
    try:
        import anndata
    except ImportError:
        raise OpchainError(
            "importing .h5ad needs anndata: pip install 'opchain[anndata]'"
        ) from None
    adata = anndata.read_h5ad(source)
    out.create_axis(rows, _names(adata.obs_names))
    out.create_axis(columns, _names(adata.var_names))
    if adata.X is not None:
        name = adata.uns.get("opchain", {}).get("X", "X")  # an exported dataset's own name
        out.set_data2d(f"{rows},{columns}#{name}", _matrix("X", adata.X))
    for key, layer in adata.layers.items():
        out.set_data2d(f"{rows},{columns}#{key}", _matrix(key, layer))
    for axis, frame in ((rows, adata.obs), (columns, adata.var)):
        for key in frame.columns:
            out.set_data1d(f"{axis}#{key}", _vector(frame[key].to_numpy()))
    for axis, mapping in ((rows, adata.obsm), (columns, adata.varm)):
        for key, value in mapping.items():
            matrix = _matrix(key, value)
            out.create_axis(key, _names(range(matrix.shape[1])))
            out.set_data2d(f"{axis},{key}#{key}", matrix)


def _from_npy(source: Path, out: FilesWriter, rows: str, columns: str) -> None:
    _write_matrices(out, {"value": _matrix(str(source), np.load(source))}, rows, columns)


def _from_npz(source: Path, out: FilesWriter, rows: str, columns: str) -> None:
    with np.load(source, allow_pickle=False) as archive:
        if "format" in archive and "indptr" in archive:  # scipy.sparse.save_npz
            import scipy.sparse as sp

            matrices = {"value": _matrix(str(source), sp.load_npz(source))}
        else:
            matrices = {key: _matrix(f"{source}:{key}", archive[key]) for key in archive.files}
    _write_matrices(out, matrices, rows, columns)


def _write_matrices(out: FilesWriter, matrices: dict[str, Any], rows: str, columns: str) -> None:
    """Matrices already as daf stores them (:func:`_matrix`), on generated axis names."""
    shapes = {m.shape for m in matrices.values()}
    if len(shapes) != 1:
        raise OpchainError(f"the matrices have different shapes {sorted(shapes)}")
    (n_rows, n_columns) = shapes.pop()
    out.create_axis(rows, _names(range(n_rows)))
    out.create_axis(columns, _names(range(n_columns)))
    for key, matrix in matrices.items():
        out.set_data2d(f"{rows},{columns}#{key}", matrix)


def _from_csv(source: Path, out: FilesWriter, rows: str, columns: str) -> None:
    table = list(csv.reader(io.StringIO(source.read_text(encoding="utf-8"))))
    if not table or not table[0]:
        raise OpchainError(f"{source}: empty, no header row")
    header, body = table[0], table[1:]
    named_rows = header[0] == ""
    names = header[1:] if named_rows else header
    for line, row in enumerate(body, 2):
        if len(row) != len(header):
            raise OpchainError(f"{source}:{line}: {len(row)} fields, the header has {len(header)}")
    try:
        values = np.array([r[1:] if named_rows else r for r in body], dtype=np.float64)
    except ValueError as error:
        raise OpchainError(f"{source}: not a numeric matrix ({error})") from None
    out.create_axis(rows, _names(r[0] for r in body) if named_rows else _names(range(len(body))))
    out.create_axis(columns, _names(names))
    out.set_data2d(f"{rows},{columns}#value", values.reshape(len(body), len(names)))


def export_dataset(dataset: Path, target: Path, matrix: str | None = None) -> None:
    """Write the daf dataset at ``dataset`` as ``target`` (.h5ad or .npz), written aside first."""
    data = open_reader(dataset)
    names = [
        n for r in data.axis_names() for c in data.axis_names() for n in data.data2d_names(r, c)
    ]
    if not names:
        raise OpchainError(f"{dataset}: holds no matrix to export")
    main = matrix or names[0]
    if main not in names:
        raise OpchainError(f"{dataset}: no matrix '{main}' (it has: {', '.join(names)})")
    writers = {".h5ad": _to_h5ad, ".npz": _to_npz}
    writer = writers.get(target.suffix.lower())
    if writer is None:
        raise OpchainError(
            f"{target}: cannot export to {target.suffix or 'this'} ({', '.join(writers)})"
        )
    aside = target.with_name(f".{target.name}.tmp-export{target.suffix}")
    try:
        writer(data, main, names, aside)
        aside.replace(target)
    finally:
        aside.unlink(missing_ok=True)


def _to_h5ad(data: Any, main: str, names: list[str], target: Path) -> None:
    try:
        import anndata
        import pandas as pd
    except ImportError:
        raise OpchainError(
            "exporting .h5ad needs anndata: pip install 'opchain[anndata]'"
        ) from None
    rows, columns, prop = _parts(main)

    def frame(axis: str) -> Any:
        vectors = {_parts(n)[2]: np.asarray(data.get_data1d(n)) for n in data.data1d_names(axis)}
        return pd.DataFrame(vectors, index=pd.Index(list(data.axis_entries(axis))))

    def plain(name: str) -> Any:
        x = data.get_data2d(name)
        return x.copy() if hasattr(x, "tocsr") else np.array(x)

    layers, obsm = {}, {}
    for name in names:
        r, c, p = _parts(name)
        if name != main and (r, c) == (rows, columns):
            layers[p] = plain(name)
        elif r == rows and c not in (rows, columns):
            obsm[c] = plain(name)
    adata = anndata.AnnData(
        X=plain(main), obs=frame(rows), var=frame(columns), layers=layers, obsm=obsm,
        uns={"opchain": {"X": prop}},  # X's name, for the way back
    )  # fmt: skip
    adata.write_h5ad(target)


def _parts(name: str) -> tuple[str, str, str]:
    """``rows,columns#property`` (or ``axis#property``: columns empty) as its three parts."""
    axes, prop = name.split("#", 1)
    rows, _, columns = axes.partition(",")
    return rows, columns, prop


def _to_npz(data: Any, main: str, names: list[str], target: Path) -> None:
    x = data.get_data2d(main)
    if hasattr(x, "tocsr"):
        import scipy.sparse as sp

        sp.save_npz(target, x.tocsr(), compressed=False)
    else:
        with target.open("wb") as out:
            np.savez(out, **{main.split("#", 1)[1]: np.asarray(x)})
