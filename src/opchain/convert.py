"""Data in and out: ``opchain import`` and ``opchain export`` between daf datasets and the files
scanpy, numpy and spreadsheets use.

In: ``.h5ad`` (AnnData: ``X`` and ``layers`` as ``<obs>,<var>#<name>`` matrices, sparse kept
sparse; ``obs``/``var`` columns as vectors; ``obsm``/``varm`` matrices on an axis of their own named
by their key), ``.npy`` (a 2D array), ``.npz`` (a scipy.sparse matrix, or numpy arrays of one shape)
and ``.csv`` (a matrix with a header row of column names; an empty first header cell means the first
column holds the row names). Out: ``.h5ad`` (one matrix as ``X``, the others on the same axes as
layers, vectors as obs/var columns, matrices from the row axis to another as obsm; a dataset of
vectors only with the matrix its step read as X, or without X) and ``.npz``.

A dataset is written aside and renamed into place whole (daf writers), so a malformed source leaves
nothing; every problem is one ``OpchainError`` line naming the file.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from opchain.daf import FilesWriter, open_reader
from opchain.errors import DafError, OpchainError
from opchain.lineage import storage_of

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


def export_dataset(
    dataset: Path,
    target: Path,
    matrix: str | None = None,
    rows: str | None = None,
    columns: str | None = None,
) -> None:
    """Write the daf dataset at ``dataset`` as ``target`` (.h5ad or .npz), written aside first.
    A dataset of vectors only (e.g. kmeans' clusters) goes to .h5ad on the axes ``rows`` and
    ``columns`` (see :func:`_vector_axes`), with X from its step's input if it still holds it."""
    data = open_reader(dataset)
    names = [
        n for r in data.axis_names() for c in data.axis_names() for n in data.data2d_names(r, c)
    ]
    writers = {".h5ad": _to_h5ad, ".npz": _to_npz}
    writer = writers.get(target.suffix.lower())
    if writer is None:
        raise OpchainError(
            f"{target}: cannot export to {target.suffix or 'this'} ({', '.join(writers)})"
        )
    if names:
        main = matrix or names[0]
        if main not in names:
            raise OpchainError(f"{dataset}: no matrix '{main}' (it has: {', '.join(names)})")
        axes, x = _parts(main)[:2], (_parts(main)[2], data.get_data2d(main))
    elif matrix or writer is _to_npz:
        raise OpchainError(f"{dataset}: holds no matrix to export (only vectors: export to .h5ad)")
    else:
        axes, x = _vector_axes(dataset, data, rows, columns)
    aside = target.with_name(f".{target.name}.tmp-export{target.suffix}")
    try:
        writer(data, axes, x, names, aside)
        aside.replace(target)
    finally:
        aside.unlink(missing_ok=True)


def _vector_axes(
    dataset: Path, data: Any, rows: str | None, columns: str | None
) -> tuple[tuple[str, str], tuple[str, Any] | None]:
    """The obs and var axes of a dataset without matrices (by default those of the matrix its
    step read, from its ``metadata.yaml``, else ``cell`` and ``gene``) and its X: the matrix that
    step read, from the step's input, if that still holds it on the same entries, else None."""
    try:
        metadata = yaml.safe_load((dataset / "metadata.yaml").read_text(encoding="utf-8"))
        read = metadata["parameters"]["matrix"]
        step_axes = _parts(read)[:2]
        source = storage_of(dataset, metadata) / metadata["input"]
    except (OSError, yaml.YAMLError, TypeError, KeyError, AttributeError):
        read, source, step_axes = None, None, ("cell", "gene")  # not a step that read a matrix
    axes = (rows or step_axes[0], columns or step_axes[1])
    for axis in axes:
        if not data.has_axis(axis):
            raise OpchainError(
                f"{dataset}: holds no matrix, and no axis '{axis}' for obs/var (its axes: "
                f"{', '.join(data.axis_names())}; choose them with --rows and --columns)"
            )
    if source is None or axes != step_axes:
        return axes, None
    try:
        given = open_reader(source)
        if all(np.array_equal(given.axis_entries(a), data.axis_entries(a)) for a in axes):
            return axes, (_parts(read)[2], given.get_data2d(read))
    except DafError:  # the input is gone, changed, or does not hold that matrix
        pass
    return axes, None


def _to_h5ad(
    data: Any,
    axes: tuple[str, str],
    x: tuple[str, Any] | None,
    names: list[str],
    target: Path,
) -> None:
    try:
        import anndata
        import pandas as pd
    except ImportError:
        raise OpchainError(
            "exporting .h5ad needs anndata: pip install 'opchain[anndata]'"
        ) from None
    rows, columns = axes

    def frame(axis: str) -> Any:
        vectors = {_parts(n)[2]: np.asarray(data.get_data1d(n)) for n in data.data1d_names(axis)}
        return pd.DataFrame(vectors, index=pd.Index(list(data.axis_entries(axis))))

    def plain(matrix: Any) -> Any:
        return matrix.copy() if hasattr(matrix, "tocsr") else np.array(matrix)

    layers, obsm = {}, {}
    for name in names:
        r, c, p = _parts(name)
        if (x is None or p != x[0]) and (r, c) == (rows, columns):
            layers[p] = plain(data.get_data2d(name))
        elif r == rows and c not in (rows, columns):
            obsm[c] = plain(data.get_data2d(name))
    adata = anndata.AnnData(
        X=None if x is None else plain(x[1]), obs=frame(rows), var=frame(columns), layers=layers,
        obsm=obsm, uns={} if x is None else {"opchain": {"X": x[0]}},  # X's name, for the way back
    )  # fmt: skip
    adata.write_h5ad(target)


def _parts(name: str) -> tuple[str, str, str]:
    """``rows,columns#property`` (or ``axis#property``: columns empty) as its three parts."""
    axes, prop = name.split("#", 1)
    rows, _, columns = axes.partition(",")
    return rows, columns, prop


def _to_npz(
    data: Any, axes: tuple[str, str], x: tuple[str, Any], names: list[str], target: Path
) -> None:
    prop, matrix = x
    if hasattr(matrix, "tocsr"):
        import scipy.sparse as sp

        sp.save_npz(target, matrix.tocsr(), compressed=False)
    else:
        with target.open("wb") as out:
            np.savez(out, **{prop: np.asarray(matrix)})
