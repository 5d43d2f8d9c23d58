"""Data larger than memory: peak anonymous memory and throughput of the streaming built-ins.

Usage: ``python benchmarks/memory.py [--dense-gib 8] [--nnz 1000000000] [--small] [--dir /tmp]``

Generates, once, on disk (streamed, so generating needs no more memory than running): a dense
float32 matrix of ``--dense-gib`` GiB (``cell,gene#X``, 4,096 columns) and a CSR matrix with
``--nnz`` non-zeros (``cell,gene#UMIs``, 30,000 columns, ~100 non-zeros a row, float32 counts).
Runs the chains normalize -> log1p -> standardize (dense) and normalize -> log1p (sparse) through
``snakemake``, and prints per step the peak anonymous memory (``RssAnon``, sampled every 20 ms in
the job, as ``metadata.yaml`` records it) and the throughput (input bytes / wall seconds of the
dataset), against numpy/scipy doing the same math in memory on a slice that fits in 1 GiB (the
in-memory peer's throughput, measured in the same run). Targets: < 1 GiB anonymous memory per step
at any size; throughput within 1.5x of the in-memory peer. ``--small``: 1/64 of the sizes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import Project  # noqa: E402

from opchain.daf import FilesWriter  # noqa: E402
from opchain.daf.mapping import make_csr  # noqa: E402

DENSE_COLUMNS, SPARSE_COLUMNS, PER_ROW = 4096, 30_000, 100
BLOCK_ROWS = 1 << 14


def axes(out: FilesWriter, rows: int, columns: int) -> None:
    out.create_axis("cell", np.array([f"c{i}" for i in range(rows)], dtype=object))
    out.create_axis("gene", np.array([f"g{j}" for j in range(columns)], dtype=object))


def write_dense(path: Path, gib: float) -> int:
    rows = int(gib * 2**30) // (4 * DENSE_COLUMNS)
    rng = np.random.default_rng(0)
    with FilesWriter(path) as out:
        axes(out, rows, DENSE_COLUMNS)
        with out.create_dense_in_rows("cell,gene#X", dtype="float32") as target:
            for start in range(0, rows, BLOCK_ROWS):
                stop = min(rows, start + BLOCK_ROWS)
                target[start:stop] = rng.poisson(2.0, (stop - start, DENSE_COLUMNS))
    return rows * DENSE_COLUMNS * 4


def write_sparse(path: Path, nnz: int, scratch: Path) -> int:
    """CSR buffers written block by block into scratch files, then stored through memory maps."""
    rows = nnz // PER_ROW
    index = np.int32 if rows * PER_ROW < 2**31 else np.int64  # as scipy would choose
    rng = np.random.default_rng(0)
    with open(scratch / "data", "wb") as data, open(scratch / "indices", "wb") as indices:
        for start in range(0, rows, BLOCK_ROWS):
            n = min(rows, start + BLOCK_ROWS) - start
            cols = np.sort(rng.integers(0, SPARSE_COLUMNS, (n, PER_ROW), dtype=index), axis=1)
            cols.tofile(indices)
            (rng.poisson(3.0, (n, PER_ROW)) + 1).astype(np.float32).tofile(data)
    indptr = np.arange(0, rows * PER_ROW + 1, PER_ROW, dtype=index)
    matrix = make_csr(
        np.memmap(scratch / "data", np.float32, "r"),
        np.memmap(scratch / "indices", index, "r"),
        indptr,
        (rows, SPARSE_COLUMNS),
        {"data": "data", "indices": "indices", "indptr": "indptr"},
    )
    with FilesWriter(path) as out:
        axes(out, rows, SPARSE_COLUMNS)
        out.set_data2d("cell,gene#UMIs", matrix)
    (scratch / "data").unlink()
    (scratch / "indices").unlink()
    return rows * PER_ROW * (4 + np.dtype(index).itemsize)


def peer_dense() -> float:
    """MB/s of normalize + log1p + standardize in memory, on 1 GiB."""
    x = np.random.default_rng(1).poisson(2.0, (2**30 // (4 * DENSE_COLUMNS), DENSE_COLUMNS))
    x = x.astype(np.float32)
    start = time.perf_counter()
    sums = x.sum(axis=1, keepdims=True, dtype=np.float64)
    y = np.log1p((x * 1e4 / np.where(sums == 0, 1, sums)).astype(np.float32))
    _ = ((y - y.mean(axis=0)) / np.where(y.std(axis=0) == 0, 1, y.std(axis=0))).astype(np.float32)
    return 3 * x.nbytes / 2**20 / (time.perf_counter() - start)


def peer_sparse() -> float:
    """MB/s of normalize + log1p in memory (scipy), on 10^8 non-zeros."""
    rows = 10**8 // PER_ROW // 8
    rng = np.random.default_rng(1)
    cols = np.sort(rng.integers(0, SPARSE_COLUMNS, (rows, PER_ROW), dtype=np.int32), axis=1)
    data = (rng.poisson(3.0, (rows, PER_ROW)) + 1).astype(np.float32).ravel()
    m = sp.csr_matrix((data, cols.ravel(), np.arange(0, rows * PER_ROW + 1, PER_ROW)),
                      shape=(rows, SPARSE_COLUMNS))  # fmt: skip
    start = time.perf_counter()
    sums = np.asarray(m.sum(axis=1), dtype=np.float64).ravel()
    n = sp.diags(1e4 / sums) @ m
    n.data = np.log1p(n.data.astype(np.float32))
    return 2 * rows * PER_ROW * 8 / 2**20 / (time.perf_counter() - start)


def run_chain(root: Path, summary: str, matrix: str, dense: bool) -> list[dict]:
    project = Project(root / f"project-{summary}")
    (project.root / "config" / "operations").mkdir(parents=True)
    (project.root / "config" / "chains").mkdir(parents=True)
    steps = [("normalize", "target_sum: 10000"), ("log1p", "")]
    if dense:
        steps.append(("standardize", "axis: gene"))
    for op, extra in steps:
        params = f"{{matrix: '{matrix}'{', ' + extra if extra else ''}}}"
        (project.root / "config" / "operations" / f"{op}.yaml").write_text(
            f"type: {op}\nparameters: {params}\n"
        )
    names = ", ".join(f"{op}.yaml" for op, _ in steps)
    (project.root / "config" / "chains" / "c.yaml").write_text(
        f"input_path: {summary}\noperations: [{names}]\n"
    )
    (project.root / "config" / "config.yaml").write_text(
        f"storage: {root / 'storage'}\nchains: [config/chains/c.yaml]\n"
    )
    project.snakemake("--cores", "1", "--omit-from", "chain_report")
    manifest = yaml.safe_load(
        next(root.glob("storage/operation_chain_results/*/chain.yaml")).read_text()
    )
    metas = []
    for step in manifest["runs"][0]["steps"]:
        meta = root / "storage" / step["dir"] / "dataset_1" / "metadata.yaml"
        metas.append(yaml.safe_load(meta.read_text()))
    shutil.rmtree(root / "storage" / "operation_chain_results")
    shutil.rmtree(root / "storage" / ".opchain")
    return metas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dense-gib", type=float, default=8.0)
    parser.add_argument("--nnz", type=int, default=10**9)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    if args.small:
        args.dense_gib, args.nnz = args.dense_gib / 64, args.nnz // 64
    root = Path(tempfile.mkdtemp(prefix="opchain-memory-", dir=args.dir))
    try:
        sizes = {
            "dense": write_dense(root / "storage" / "dense" / "x", args.dense_gib),
            "sparse": write_sparse(root / "storage" / "sparse" / "x", args.nnz, root),
        }
        peers = {"dense": peer_dense(), "sparse": peer_sparse()}
        print(f"dense {sizes['dense'] / 2**30:.2f} GiB float32; sparse {args.nnz:,} non-zeros "
              f"({sizes['sparse'] / 2**30:.2f} GiB of data + indices)")  # fmt: skip
        print(
            "| input | step | peak RssAnon MiB | wall s | MB/s | in-memory peer MB/s | peer / ours |"
        )
        print("|---|---|---|---|---|---|---|")
        for kind, matrix in (("dense", "cell,gene#X"), ("sparse", "cell,gene#UMIs")):
            for meta in run_chain(root, kind, matrix, kind == "dense"):
                cost = meta["cost"]
                rate = sizes[kind] / 2**20 / cost["wall_seconds"]
                print(f"| {kind} | {meta['operation']} | {cost['peak_anon_mb']:.0f} | "
                      f"{cost['wall_seconds']:.1f} | {rate:.0f} | {peers[kind]:.0f} | "
                      f"{peers[kind] / rate:.2f} |", flush=True)  # fmt: skip
        print("targets: < 1024 MiB RssAnon per step at any size; peer / ours <= 1.5")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
