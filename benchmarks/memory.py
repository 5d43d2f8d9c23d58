"""Data larger than memory: peak anonymous memory and throughput of the streaming built-ins.

Usage: ``python benchmarks/memory.py [--dense-gib 8] [--nnz 1000000000] [--small] [--threads N]
[--dir /tmp]``

Generates, once, on disk (streamed, so generating needs no more memory than running): a dense
float32 matrix of ``--dense-gib`` GiB (``cell,gene#X``, 4,096 columns) and a CSR matrix with
``--nnz`` non-zeros (``cell,gene#UMIs``, 30,000 columns, ~100 non-zeros a row, float32 counts,
and a string property of every row, ``cell#batch``, that each step carries).
Runs the chains normalize -> log1p -> standardize (dense) and normalize -> log1p (sparse), and
convert to float64 of each input, through ``snakemake``, and prints per step the peak anonymous
memory (``RssAnon``, sampled every 20 ms in the job, as ``metadata.yaml`` records it) and the
throughput (input bytes / wall seconds of the dataset), against the step's write floor: reading
the input's values and writing as many bytes as the step writes to a new file beside them (no
arithmetic, no axes; the best of three), measured right before the step; against numpy/scipy doing
the same step's math in memory on 1 GiB (the in-memory peer's throughput, each step timed alone);
and against the same numpy/scipy as a script run on files (load the previous step's .npy /
uncompressed .npz, compute, save: what a numpy user's step costs), all in the same run. A second
table runs the other built-ins on the same inputs, each against its in-memory peer: filter (half
the batches), subsample (half the rows) and aggregate (by batch) of the sparse matrix; pca
(randomized, 10 components) then kmeans (8 clusters, 10 iterations of Lloyd's algorithm from
random rows, one start, as the peer) of the dense one. Targets: < 1 GiB anonymous memory per step
at any size; every streaming step within 1.5x of its write floor and faster than numpy on files.
Each job is given ``--threads`` cores (``--set-threads``; default: the machine's), which the
streaming built-ins spend on their arithmetic, pieces of a block at once; a step's writes (and the
floor's) go through one writer. ``--small``: 1/64 of the sizes; ``--streaming-only``: the first
table only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import Project  # noqa: E402

from opchain.daf import FilesWriter  # noqa: E402
from opchain.daf.mapping import make_csr  # noqa: E402

DENSE_COLUMNS, SPARSE_COLUMNS, PER_ROW = 4096, 30_000, 100
X, UMIS = "cell,gene#X", "cell,gene#UMIs"
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
        out.set_data1d("cell#batch", np.array([f"b{i % 16}" for i in range(rows)], dtype=object))
        out.set_data2d("cell,gene#UMIs", matrix)
    (scratch / "data").unlink()
    (scratch / "indices").unlink()
    return rows * PER_ROW * (4 + np.dtype(index).itemsize)


def rates(
    steps: dict[str, Any], nbytes: int, value: Any = None, files: Any = None
) -> tuple[dict[str, float], dict[str, float]]:
    """MB/s of each step in memory (timed alone, on the previous step's output) and, given
    ``files`` (save, load, folder), of a script doing the step from and to files as a numpy user
    would: load the previous step's saved output, compute, save the result."""
    alone, scripted = {}, {}
    for name, step in steps.items():
        start = time.perf_counter()
        result = step(value)
        alone[name] = nbytes / 2**20 / (time.perf_counter() - start)
        if files is not None:
            save, load, folder = files
            save(folder / "input", value)
            start = time.perf_counter()
            save(folder / "output", step(load(folder / "input")))
            scripted[name] = nbytes / 2**20 / (time.perf_counter() - start)
        value = result
    return alone, scripted


def peer_dense(folder: Path) -> tuple[dict[str, float], dict[str, float]]:
    """normalize, log1p and standardize with numpy on 1 GiB: in memory, and from and to .npy."""
    x = np.random.default_rng(1).poisson(2.0, (2**30 // (4 * DENSE_COLUMNS), DENSE_COLUMNS))
    x = x.astype(np.float32)

    def normalize(y: np.ndarray) -> np.ndarray:
        sums = y.sum(axis=1, keepdims=True, dtype=np.float64)
        return (y * (1e4 / np.where(sums == 0, 1, sums))).astype(np.float32)

    def standardize(y: np.ndarray) -> np.ndarray:
        std = y.std(axis=0, dtype=np.float64)
        return ((y - y.mean(axis=0, dtype=np.float64)) / np.where(std == 0, 1, std)).astype(
            np.float32
        )

    steps = {"normalize": normalize, "log1p": np.log1p, "standardize": standardize,
             "convert": lambda y: y.astype(np.float64)}  # fmt: skip

    def save(path: Path, y: np.ndarray) -> None:
        np.save(path.with_suffix(".npy"), y)

    def load(path: Path) -> np.ndarray:
        return np.load(path.with_suffix(".npy"))

    return rates(steps, x.nbytes, x, (save, load, folder))


def peer_sparse(folder: Path) -> tuple[dict[str, float], dict[str, float]]:
    """normalize and log1p with scipy on 10^8 / 8 non-zeros: in memory, and from and to .npz."""
    m, _ = sparse_in_memory()

    def normalize(n: Any) -> Any:
        sums = np.asarray(n.sum(axis=1), dtype=np.float64).ravel()
        return (sp.diags(1e4 / sums) @ n).astype(np.float32)

    def log1p(n: Any) -> Any:
        return sp.csr_matrix((np.log1p(n.data), n.indices, n.indptr), shape=n.shape)

    def save(path: Path, n: Any) -> None:
        sp.save_npz(path.with_suffix(".npz"), n, compressed=False)

    def load(path: Path) -> Any:
        return sp.load_npz(path.with_suffix(".npz"))

    steps = {"normalize": normalize, "log1p": log1p, "convert": lambda n: n.astype(np.float64)}
    return rates(steps, m.nnz * 8, m, (save, load, folder))


def sparse_in_memory() -> tuple[Any, np.ndarray]:
    """A CSR of 10^8 / 8 non-zeros like the generated one, and its rows' batches."""
    rows = 10**8 // PER_ROW // 8
    rng = np.random.default_rng(1)
    cols = np.sort(rng.integers(0, SPARSE_COLUMNS, (rows, PER_ROW), dtype=np.int32), axis=1)
    data = (rng.poisson(3.0, (rows, PER_ROW)) + 1).astype(np.float32).ravel()
    m = sp.csr_matrix((data, cols.ravel(), np.arange(0, rows * PER_ROW + 1, PER_ROW)),
                      shape=(rows, SPARSE_COLUMNS))  # fmt: skip
    return m, np.array([f"b{i % 16}" for i in range(rows)])


def peer_others() -> dict[str, float]:
    """The other steps in memory with numpy/scipy: filter, subsample and aggregate on the sparse
    matrix of :func:`sparse_in_memory`, pca (the same randomized method) and kmeans on 1 GiB dense."""
    m, batch = sparse_in_memory()
    halves = [f"b{i}" for i in range(8)]

    def aggregate(_: Any) -> Any:
        labels, group = np.unique(batch, return_inverse=True)
        ones = np.ones(len(group))
        indicator = sp.csr_matrix((ones, (group, np.arange(len(group)))), (len(labels), len(group)))
        return (indicator @ m).toarray()

    def subsample(_: Any) -> Any:
        return m[np.sort(np.random.default_rng(0).choice(m.shape[0], m.shape[0] // 2, False))]

    sparse_steps = {
        "filter": lambda _: m[np.isin(batch, halves)],
        "subsample": subsample,
        "aggregate": aggregate,
    }
    found, _ = rates(sparse_steps, m.nnz * 8)
    x = np.random.default_rng(1).poisson(2.0, (2**30 // (4 * DENSE_COLUMNS), DENSE_COLUMNS))
    x = x.astype(np.float32)

    def pca(_: Any) -> np.ndarray:
        centered = x - x.mean(axis=0, dtype=np.float64)
        g = np.random.default_rng(0).standard_normal((DENSE_COLUMNS, 20))
        for _ in range(4):
            g, _ = np.linalg.qr(centered.T @ (centered @ g))
        _, vectors = np.linalg.eigh(g.T @ (centered.T @ (centered @ g)))
        return (centered @ (g @ vectors[:, ::-1][:, :10])).astype(np.float32)

    start = time.perf_counter()
    projected = pca(None)
    found["pca"] = x.nbytes / 2**20 / (time.perf_counter() - start)

    def kmeans(y: np.ndarray) -> np.ndarray:
        centroids = y[np.random.default_rng(0).choice(len(y), 8, replace=False)].astype(float)
        for _ in range(10):
            assigned = ((y[:, None] - centroids[None]) ** 2).sum(axis=2).argmin(axis=1)
            centroids = np.stack([y[assigned == c].mean(axis=0) for c in range(8)])
        return assigned

    start = time.perf_counter()
    kmeans(projected)
    found["kmeans"] = projected.nbytes / 2**20 / (time.perf_counter() - start)
    return found


def floor_seconds(values: Path, scratch: Path, widening: int = 1) -> float:
    """Seconds to read the file ``values`` and write ``widening`` times its bytes to the new file
    ``scratch`` (the best of three: a floor)."""
    buffer = bytearray(64 << 20)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        with open(values, "rb", buffering=0) as source, open(scratch, "wb", buffering=0) as out:
            while count := source.readinto(buffer):
                for _ in range(widening):
                    out.write(memoryview(buffer)[:count])
        best = min(best, time.perf_counter() - start)
        scratch.unlink()
    return best


FLOOR_TARGET = 1.5


def floor_of(root: Path, kind: str, matrix: str) -> Any:
    """A function of an operation giving its write floor in seconds, measured when called: the
    input's values file read, and as many bytes written as the step writes."""
    values = root / "storage" / kind / "x" / f"{matrix}.{'array' if kind == 'dense' else 'data'}"
    return lambda op: floor_seconds(values, root / "floor", 2 if op == "convert" else 1)


def row(kind: str, meta: dict, size: int, peers: Any) -> str:
    """A line of the first table: the step of ``meta`` on ``size`` input bytes."""
    cost = meta["cost"]
    rate = size / 2**20 / cost["wall_seconds"]
    floor = size / 2**20 / meta["floor_seconds"]
    ratio = floor / rate
    mark = "" if ratio <= FLOOR_TARGET else " *"
    peer, script = (found[meta["operation"]] for found in peers)
    return (f"| {kind} | {meta['operation']} | {cost['peak_anon_mb']:.0f} | "
            f"{cost['wall_seconds']:.1f} | {rate:.0f} | {floor:.0f} | {ratio:.2f}{mark} | "
            f"{peer:.0f} | {peer / rate:.2f} | {script:.0f} | {script / rate:.2f} |")  # fmt: skip


def run_chain(
    root: Path, summary: str, steps: list[tuple[str, str]], threads: int, floor: Any = None
) -> list[dict]:
    """Run the chain of ``steps`` (operation, parameters in YAML flow style) on the summary
    ``summary`` through snakemake, each job given ``threads`` cores; each step's
    ``metadata.yaml``. With ``floor``, the chain
    grows a step at a time (the steps before are reused), each step's write floor measured right
    before it (in the same state of the page cache), as ``floor_seconds`` in its metadata."""
    project = Project(root / f"project-{summary}-{steps[0][0]}")
    (project.root / "config" / "operations").mkdir(parents=True)
    (project.root / "config" / "chains").mkdir(parents=True)
    for op, params in steps:
        (project.root / "config" / "operations" / f"{op}.yaml").write_text(
            f"type: {op}\nparameters: {{{params}}}\n"
        )
    (project.root / "config" / "config.yaml").write_text(
        f"storage: {root / 'storage'}\nchains: [config/chains/c.yaml]\n"
    )
    floors = []
    for end in range(1, len(steps) + 1) if floor is not None else [len(steps)]:
        names = ", ".join(f"{op}.yaml" for op, _ in steps[:end])
        (project.root / "config" / "chains" / "c.yaml").write_text(
            f"input_path: {summary}\noperations: [{names}]\n"
        )
        floors.append(floor(steps[end - 1][0]) if floor is not None else None)
        cores = [f"{op}={threads}" for op, _ in steps[:end]]
        project.snakemake(
            "--cores", str(threads), "--set-threads", *cores, "--omit-from", "chain_report"
        )
    manifest = yaml.safe_load(
        next(root.glob("storage/operation_chain_results/*/chain.yaml")).read_text()
    )
    metas = []
    for i, step in enumerate(manifest["runs"][0]["steps"]):
        meta = yaml.safe_load(
            (root / "storage" / step["dir"] / "dataset_1" / "metadata.yaml").read_text()
        )
        metas.append({**meta, "floor_seconds": floors[i] if floor is not None else None})
    shutil.rmtree(root / "storage" / "operation_chain_results")
    shutil.rmtree(root / "storage" / ".opchain")
    return metas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dense-gib", type=float, default=8.0)
    parser.add_argument("--nnz", type=int, default=10**9)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--dir", default=None)
    parser.add_argument("--streaming-only", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    if args.small:
        args.dense_gib, args.nnz = args.dense_gib / 64, args.nnz // 64
    root = Path(tempfile.mkdtemp(prefix="opchain-memory-", dir=args.dir))
    try:
        sizes = {
            "dense": write_dense(root / "storage" / "dense" / "x", args.dense_gib),
            "sparse": write_sparse(root / "storage" / "sparse" / "x", args.nnz, root),
        }
        (root / "peer").mkdir()
        peers = {"dense": peer_dense(root / "peer"), "sparse": peer_sparse(root / "peer")}
        shutil.rmtree(root / "peer")
        print(f"dense {sizes['dense'] / 2**30:.2f} GiB float32; sparse {args.nnz:,} non-zeros "
              f"({sizes['sparse'] / 2**30:.2f} GiB of data + indices)")  # fmt: skip
        print("| input | step | peak RssAnon MiB | wall s | MB/s | write floor MB/s | ours / floor "
              "| in-memory peer MB/s | peer / ours | numpy from and to files MB/s | it / ours |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for kind, matrix in (("dense", X), ("sparse", UMIS)):
            steps = [("normalize", "target_sum: 10000"), ("log1p", "")]
            steps += [("standardize", "axis: gene")] if kind == "dense" else []
            for chain in (steps, [("convert", "dtype: float64")]):
                named = [
                    (op, ", ".join(filter(None, [f"matrix: '{matrix}'", p]))) for op, p in chain
                ]
                floor = floor_of(root, kind, matrix)
                for meta in run_chain(root, kind, named, args.threads, floor):
                    print(row(kind, meta, sizes[kind], peers[kind]), flush=True)
        print(f"targets: < 1024 MiB RssAnon per step at any size; ours / floor <= {FLOOR_TARGET} "
              "(* marks a miss); it / ours < 1")  # fmt: skip
        if args.streaming_only:
            return
        others = peer_others()
        print("\nthe other built-ins (MB/s: of the step's input matrix)")
        print(
            "| input | step | peak RssAnon MiB | wall s | MB/s | in-memory peer MB/s | peer / ours |"
        )
        print("|---|---|---|---|---|---|---|")
        halves = ", ".join(f"b{i}" for i in range(8))
        chains = [
            ("sparse", [("filter", f"axis: cell, property: 'cell#batch', op: in, value: [{halves}]")]),
            ("sparse", [("subsample", f"matrix: '{UMIS}', fraction: 0.5")]),
            ("sparse", [("aggregate", f"matrix: '{UMIS}', by: 'cell#batch'")]),
            ("dense", [("pca", f"matrix: '{X}', components: 10, method: randomized"),
                       ("kmeans", "matrix: 'cell,pc#pca', clusters: 8, iterations: 10, "
                                  "init: random, n_init: 1")]),
        ]  # fmt: skip
        rows = sizes["dense"] // (4 * DENSE_COLUMNS)
        inputs = {**dict.fromkeys(["filter", "subsample", "aggregate"], sizes["sparse"]),
                  "pca": sizes["dense"], "kmeans": rows * 10 * 4}  # fmt: skip
        for kind, steps in chains:
            for meta in run_chain(root, kind, steps, args.threads):
                cost, op = meta["cost"], meta["operation"]
                rate = inputs[op] / 2**20 / cost["wall_seconds"]
                print(f"| {kind} | {op} | {cost['peak_anon_mb']:.0f} | {cost['wall_seconds']:.1f} | "
                      f"{rate:.0f} | {others[op]:.0f} | {others[op] / rate:.2f} |", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
