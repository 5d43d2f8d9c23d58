"""Sweeps of many result datasets: opchain's batched jobs against one Snakemake job per dataset.

Usage: ``python benchmarks/scale.py [--plan-size 100000] [--exec-size 10000] [--peer-sizes
1000,3000,10000] [--peer-exec 300] [--cores 2] [--small] [--dir /tmp]
[--breakdown-sizes 1000,10000] [--peer-ms MS] [--parts planning,execution,durability,breakdown]``

The sweep is one chain step, the trivial operation of ``benchmarks/plan.py`` (``touch``: copy a 2x2
array) with a grid of settings (its ``tag`` parameter) on 10 input datasets, so ``size`` result
datasets are ``size / 10`` settings x 10 inputs, the shape of a real parameter sweep.

The peer is the same DAG hand-written: one wildcard rule, one job per result dataset, each a
``script:`` that loads and saves the array with numpy (``plan.py``'s numpy peer, its steps side by
side instead of in sequence). The floor is the same work done in one Python process: read a small
daf dataset and write another (opchain's own store, no Snakemake, no job around it).

Part 1, planning: ``snakemake -n`` wall time and peak RSS (of the snakemake process, from
``getrusage``), and opchain's own planning (``plan_from_config`` in-process) per dataset. The peer
is measured at ``--peer-sizes`` and extrapolated linearly (through its two largest sizes) to
``--plan-size``: it grows linearly, as the printed times show.

Part 2, execution with ``--cores``: ``--exec-size`` datasets through opchain (batched, ``auto``),
the peer at ``--peer-exec`` datasets, and the floor; per dataset: (run - dry run) / datasets, the
marginal cost without parsing and DAG building.

Part 3, durability: the same ``--exec-size`` sweep, as configured by default (every
dataset, index entry and table flushed to stable storage before and after its rename) and with
``durable: false``, best of two rounds (the variants interleaved, so a change of load on the
machine hits both); the difference per dataset is what surviving a power cut costs. Then the
flush schemes that were considered, on one small dataset directory (a sweep dataset's 7 files) in this
process: no flush, an ``fsync`` per file one after the other, the same side by side (opchain's),
and one ``syncfs`` of the whole filesystem; each before the rename, with the directory flushed
after.

Part 4, breakdown, the realistic case: a grid of ``normalize`` (``target_sum`` swept) over the
shipped cells data (``storage/example_data/cells``: one sparse UMI matrix of 262 cells and
vectors, axes and items carried along), at each of ``--breakdown-sizes`` result datasets, run
whole (``snakemake --cores N``, the chain's table and report included), in phases: ``snakemake
--version`` (start-up: the interpreter and Snakemake's CLI), ``snakemake -n`` less that
(planning: the Snakefile, opchain's plan, the DAG; opchain's own ``plan_from_config`` shown
apart), the step jobs (``--omit-from chain_manifest``, less a dry run), then the chain's tables
(``--until chain_manifest``) and its report (the rest), each less a dry run. The step jobs are
split into the operation's own time (each result's ``cost.wall_seconds`` in its metadata:
reading the input, computing, writing the data), job start-up (importing what ``python -m
opchain.run`` imports, times the jobs), and the rest (per dataset: locks, metadata, digests,
publishing), all over ``--cores``. The peer is a hand-written Snakefile of one ``script:`` job
per result dataset doing the same normalize with numpy (read the CSR files, scale, ``np.save``):
its dry run is measured at each size, its marginal cost per dataset at ``--peer-exec`` datasets,
and its time at the size is their sum (it grows linearly). Every number is from this one run.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from plan import (
    BENCHOPS,
    CELLS,
    PLAIN_NUMPY_SCRIPT,
    REPO,
    env_for,
    job_count,
    run,
    snakemake,
    write_cells_sweep,
)

from opchain import atomic
from opchain.daf import FilesWriter, open_reader

INPUTS = 10

PEER_SNAKEFILE = """\
# Hand-written peer: one wildcard rule, one job per result dataset ({settings} settings x {inputs}).
rule all:
    input:
        [f"out/{{i}}/{{s}}.npy" for i in range({inputs}) for s in range({settings})],
    default_target: True


rule step:
    input:
        "in/{{i}}.npy",
    output:
        "out/{{i}}/{{s}}.npy",
    script:
        "step.py"
"""


def write_input(path: Path, value: float, *, atomic: bool = True) -> None:
    with FilesWriter(path, atomic=atomic) as out:
        out.create_axis("row", np.array(["r0", "r1"], dtype=object))
        out.create_axis("col", np.array(["c0", "c1"], dtype=object))
        out.set_data2d("row,col#x", np.full((2, 2), value))


def write_sweep(root: Path, size: int, *, durable: bool = True) -> None:
    """An opchain project: one chain, one grid step of size / 10 settings on 10 inputs."""
    (root / "config" / "chains").mkdir(parents=True)
    (root / "config" / "operations").mkdir(parents=True)
    (root / "benchops.py").write_text(BENCHOPS.replace("random=True", "random=False"))
    tags = ", ".join(str(t) for t in range(size // INPUTS))
    (root / "config" / "operations" / "touch.yaml").write_text(
        f"type: benchops:touch\nparameter_ranges: {{tag: [{tags}]}}\n"
    )
    (root / "config" / "chains" / "sweep.yaml").write_text(
        "input_path: inputs\noperations: [touch.yaml]\n"
    )
    (root / "config" / "config.yaml").write_text(
        "storage: storage\nchains: [config/chains/sweep.yaml]\n"
        + ("" if durable else "durable: false\n")
    )
    for i in range(INPUTS):
        write_input(root / "storage" / "inputs" / f"d{i}", i)


def write_peer(root: Path, size: int) -> None:
    (root / "in").mkdir(parents=True)
    settings = size // INPUTS
    (root / "Snakefile").write_text(PEER_SNAKEFILE.format(settings=settings, inputs=INPUTS))
    (root / "step.py").write_text(PLAIN_NUMPY_SCRIPT)
    for i in range(INPUTS):
        np.save(root / "in" / f"{i}.npy", np.full((2, 2), float(i)))


def timed_rss(fn) -> tuple[float, str, float]:
    """(seconds, output, peak RSS in MB of the largest child process run by ``fn``)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    seconds, output = fn()
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, output, max(after, before) / 1024


def plan_us_per_dataset(project: Path, size: int) -> float:
    code = (
        "import time, yaml; from opchain.plan import plan_from_config;"
        "c = yaml.safe_load(open('config/config.yaml')); t = time.perf_counter();"
        "plan_from_config(c); print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=project, env=env_for(project),
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return float(out) / size * 1e6


def floor_seconds(folder: Path, n: int) -> float:
    """Per dataset: read a small daf dataset and write another, in this process."""
    write_input(folder / "floor_in", 1.0)
    start = time.perf_counter()
    for k in range(n):
        data = open_reader(folder / "floor_in")
        with FilesWriter(folder / f"floor_{k}") as out:
            for axis in data.axis_names():
                out.create_axis(axis, data.axis_entries(axis))
            out.set_data2d("row,col#x", data.get_data2d("row,col#x"))
    return (time.perf_counter() - start) / n


def planning(args: argparse.Namespace, tmp: Path) -> None:
    print(f"\nPlanning: snakemake -n, one grid step of N result datasets ({INPUTS} inputs)")
    print(
        "| N | opchain s | opchain peak RSS MB | opchain jobs | opchain µs/dataset (own planning) | peer s | peer ms/dataset |"
    )
    print("|---|---|---|---|---|---|---|")
    # opchain first: the children's peak RSS only grows, so it is opchain's until the peer runs.
    ours = tmp / "sweep-plan"
    write_sweep(ours, args.plan_size)
    own = plan_us_per_dataset(ours, args.plan_size)
    ours_s, ours_out, ours_rss = timed_rss(
        lambda: snakemake(REPO / "Snakefile", ours, args.cores, "-n")
    )
    peer_per = []
    for size in args.peer_sizes:
        peer = tmp / f"peer-{size}"
        write_peer(peer, size)
        seconds, out, _rss = timed_rss(
            lambda p=peer: snakemake(p / "Snakefile", p, args.cores, "-n")
        )
        assert job_count(out, "step") == size
        peer_per.append(seconds / size)
        print(f"| {size:,} | | | | | {seconds:.2f} | {1000 * seconds / size:.2f} |", flush=True)
        shutil.rmtree(peer)
    jobs = job_count(ours_out, "touch")
    (n0, t0), (n1, t1) = [(n, per * n) for n, per in zip(args.peer_sizes, peer_per, strict=False)][
        -2:
    ]
    peer_at = t1 + (t1 - t0) / (n1 - n0) * (args.plan_size - n1)  # the peer is linear in N
    print(
        f"| {args.plan_size:,} | {ours_s:.2f} | {ours_rss:.0f} | {jobs:,} | {own:.1f} | "
        f"~{peer_at:.0f} (extrapolated from {n0:,} and {n1:,}) | |"
    )
    print(
        f"opchain / peer at {args.plan_size:,}: {ours_s / peer_at:.3f}x "
        f"(targets: <= 15 s, <= 1,000 MB, <= 20 µs/dataset of opchain's own planning)"
    )
    shutil.rmtree(ours)


def execution(args: argparse.Namespace, tmp: Path) -> None:
    print(f"\nExecution: snakemake --cores {args.cores}; per dataset = (run - dry run) / N")
    ours, peer = tmp / "sweep-exec", tmp / "peer-exec"
    write_sweep(ours, args.exec_size)
    write_peer(peer, args.peer_exec)
    dry = snakemake(REPO / "Snakefile", ours, args.cores, "-n")[0]
    run, out = snakemake(REPO / "Snakefile", ours, args.cores, "--omit-from", "chain_manifest")
    jobs = job_count(out, "touch")
    done = len(list((ours / "storage").glob("operation_chain_results/*/*/dataset_*")))
    assert done == args.exec_size, done
    ours_per = (run - dry) / args.exec_size
    peer_dry = snakemake(peer / "Snakefile", peer, args.cores, "-n")[0]
    peer_run = snakemake(peer / "Snakefile", peer, args.cores)[0]
    peer_per = (peer_run - peer_dry) / args.peer_exec
    floor = floor_seconds(tmp, 500)
    print("| | N | jobs | run s | per dataset ms | x floor | peer / this |")
    print("|---|---|---|---|---|---|---|")
    print(f"| opchain, batched | {args.exec_size:,} | {jobs:,} | {run:.1f} | {1000 * ours_per:.2f} | "
          f"{ours_per / floor:.2f} | {peer_per / ours_per:.1f}x |")  # fmt: skip
    print(f"| peer, a job per dataset | {args.peer_exec:,} | {args.peer_exec:,} | {peer_run:.1f} | "
          f"{1000 * peer_per:.2f} | {peer_per / floor:.1f} | 1.0x |")  # fmt: skip
    print(f"| floor, one process | 500 | | | {1000 * floor:.2f} | 1.00 | |")
    print(
        "targets: <= 5 ms per dataset above the operation's own time, >= 20x faster than the "
        "peer, within 3x of the floor (the floor includes the operation's own read and write)"
    )


def sweep_seconds(project: Path, size: int, cores: int) -> tuple[float, int]:
    """(run - dry run) / size of a written sweep's step jobs (as part 2), and their count."""
    dry = snakemake(REPO / "Snakefile", project, cores, "-n")[0]
    run, out = snakemake(REPO / "Snakefile", project, cores, "--omit-from", "chain_manifest")
    done = len(list((project / "storage").glob("operation_chain_results/*/*/dataset_*")))
    assert done == size, done
    return (run - dry) / size, job_count(out, "touch")


def _fsync_each(temporary: Path, final: Path) -> None:
    for path in atomic.tree(temporary):
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    os.rename(temporary, final)
    atomic.flush([final.parent])


def _syncfs(temporary: Path, final: Path) -> None:
    fd = os.open(temporary, os.O_RDONLY)
    if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
        raise OSError(ctypes.get_errno(), "syncfs")
    os.close(fd)
    os.rename(temporary, final)
    atomic.flush([final.parent])


def flush_schemes(folder: Path, n: int) -> list[tuple[str, float]]:
    """ms per dataset directory of each way of publishing it durably (writing excluded)."""
    schemes = {
        "rename, no flush": lambda t, f: os.rename(t, f),
        "fsync per file, one after the other": _fsync_each,
        "fsync per file, side by side (opchain)": atomic.publish,
        "syncfs of the filesystem": _syncfs,
    }
    results = []
    for name, publish in schemes.items():
        folder.mkdir()
        spent = 0.0
        for k in range(n):
            temporary, final = folder / f".d{k}.tmp", folder / f"d{k}"
            os.sync()  # nothing dirty but the dataset about to be written
            temporary.mkdir()
            write_input(temporary, float(k), atomic=False)  # written in place: not flushed yet
            for own in ("metadata.yaml", "input_metadata.yaml"):
                (temporary / own).write_text("operation: touch\n")
            start = time.perf_counter()
            publish(temporary, final)
            spent += time.perf_counter() - start
        results.append((name, 1000 * spent / n))
        shutil.rmtree(folder)
    return results


def durability(args: argparse.Namespace, tmp: Path) -> None:
    print(
        f"\nDurability: snakemake --cores {args.cores}, {args.exec_size:,} datasets, flushed or "
        "not (best of 2 rounds, the variants interleaved)"
    )
    per: dict[bool, float] = {}
    for _ in range(2):
        for durable in (True, False):
            project = tmp / f"sweep-durable-{durable}"
            write_sweep(project, args.exec_size, durable=durable)
            seconds, jobs = sweep_seconds(project, args.exec_size, args.cores)
            per[durable] = min(per.get(durable, seconds), seconds)
            shutil.rmtree(project)
    print("| | N | jobs | per dataset ms |")
    print("|---|---|---|---|")
    print(
        f"| opchain, durable (default) | {args.exec_size:,} | {jobs:,} | {1000 * per[True]:.2f} |"
    )
    print(f"| opchain, durable: false | {args.exec_size:,} | {jobs:,} | {1000 * per[False]:.2f} |")
    cost = per[True] - per[False]
    print(f"flushing costs {1000 * cost:.2f} ms per dataset ({per[True] / per[False]:.2f}x)")
    print("\nFlush schemes, one dataset directory (7 files) published in this process, 200 times")
    print("| scheme | ms per dataset |")
    print("|---|---|")
    for name, ms in flush_schemes(tmp / "schemes", 200):
        print(f"| {name} | {ms:.2f} |")


# The peer's step: normalize the input's CSR rows to the grid point's target sum, with numpy.
NORMALIZE_SCRIPT = """\
import numpy as np
import yaml

base = snakemake.input[0].removesuffix(".data")  # noqa: F821
sidecar = yaml.safe_load(open(base + ".yaml"))
data = np.fromfile(base + ".data", sidecar["data_dtype"])
indptr = np.fromfile(base + ".indptr", sidecar["indptr_dtype"])
rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
sums = np.bincount(rows, data, minlength=len(indptr) - 1)
target = 1000 + int(snakemake.wildcards.s)  # noqa: F821
factors = np.divide(target, sums, out=np.zeros_like(sums), where=sums != 0)
np.save(snakemake.output[0], (data * factors[rows]).astype(data.dtype))  # noqa: F821
"""

NORMALIZE_PEER = """\
# Hand-written peer: one job per result dataset, normalize over the cells data ({size} settings).
INPUT = "{matrix}.data"


rule all:
    input:
        [f"out/{{s}}.npy" for s in range({size})],
    default_target: True


rule normalize:
    input:
        INPUT,
    output:
        "out/{{s}}.npy",
    script:
        "normalize.py"
"""


def write_cells_peer(root: Path, size: int) -> None:
    root.mkdir(parents=True)
    matrix = root / "in" / "cell,gene#UMIs"
    shutil.copytree(CELLS / "daf_example", matrix.parent)
    (root / "Snakefile").write_text(NORMALIZE_PEER.format(size=size, matrix=matrix))
    (root / "normalize.py").write_text(NORMALIZE_SCRIPT)


def best_of(times: int, fn: Callable[[], tuple[float, str]]) -> float:
    return min(fn()[0] for _ in range(times))


def job_startup_seconds(project: Path) -> float:
    """What a job process pays before its first dataset: the interpreter and what
    ``python -m opchain.run`` imports (scipy.sparse too: the input is sparse), best of 3."""
    code = "import opchain.run, scipy.sparse"
    return best_of(3, lambda: run([sys.executable, "-c", code], project))


def operation_seconds(project: Path) -> float:
    """The sum of every result's own cost (``cost.wall_seconds`` in its metadata.yaml)."""
    total = 0.0
    for path in (project / "storage").glob("operation_chain_results/*/*/dataset_*/metadata.yaml"):
        text = path.read_text(encoding="utf-8")
        total += float(text.split("  wall_seconds: ", 1)[1].split("\n", 1)[0])
    return total


def opchain_phases(project: Path, cores: int) -> tuple[dict[str, float], int]:
    """Seconds of each phase of a whole run of the sweep ``project``, and its step jobs."""
    snakefile = REPO / "Snakefile"
    startup = best_of(3, lambda: run([sys.executable, "-m", "snakemake", "--version"], project))
    dry = snakemake(snakefile, project, cores, "-n")[0]
    steps, out = snakemake(snakefile, project, cores, "--omit-from", "chain_manifest")
    jobs = job_count(out, "normalize")
    # The same plan with every batch done: what the table's and the report's runs cost besides
    # their job. Best of 2: these jobs take about a second, the load's noise as much.
    rest_dry = best_of(2, lambda: snakemake(snakefile, project, cores, "-n"))
    tables = snakemake(snakefile, project, cores, "--until", "chain_manifest")[0]
    report = snakemake(snakefile, project, cores)[0]
    phases = {
        "start-up": startup,
        "planning": dry - startup,
        "step jobs": steps - dry,
        "tables": tables - rest_dry,
        "report": report - rest_dry,
    }
    return phases, jobs


def breakdown(args: argparse.Namespace, tmp: Path) -> None:
    print(
        f"\nBreakdown: normalize over the shipped cells data, snakemake --cores {args.cores}, "
        "the whole run (step jobs, the chain's table and report)"
    )
    if args.peer_ms is None:
        peer = tmp / "peer-cells"
        write_cells_peer(peer, args.peer_exec)
        peer_dry = snakemake(peer / "Snakefile", peer, args.cores, "-n")[0]
        peer_run = snakemake(peer / "Snakefile", peer, args.cores)[0]
        peer_per = (peer_run - peer_dry) / args.peer_exec
        shutil.rmtree(peer)
        print(f"peer: {1000 * peer_per:.1f} ms per dataset (measured at {args.peer_exec:,})")
    else:
        peer_per = args.peer_ms / 1000
        print(f"peer: {args.peer_ms:.1f} ms per dataset (given, from an earlier run)")
    print("| N | jobs | start-up s | planning s (opchain's own) | step jobs s: operation + job "
          "start-up + per-dataset rest | tables s | report s | total s | ms/dataset above the "
          "operation | peer s | peer / opchain |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.breakdown_sizes:
        project = tmp / f"cells-{size}"
        write_cells_sweep(project, size)
        own = plan_us_per_dataset(project, size) * size / 1e6
        phases, jobs = opchain_phases(project, args.cores)
        work = operation_seconds(project) / args.cores
        starts = job_startup_seconds(project) * jobs / args.cores
        rest = phases["step jobs"] - work - starts
        total = sum(phases.values())
        above = (phases["step jobs"] - work) / size * 1000
        shutil.rmtree(project)
        peer = tmp / "peer-cells"
        write_cells_peer(peer, size)
        peer_at = snakemake(peer / "Snakefile", peer, args.cores, "-n")[0] + peer_per * size
        shutil.rmtree(peer)
        print(f"| {size:,} | {jobs} | {phases['start-up']:.2f} | {phases['planning']:.2f} "
              f"({own:.2f}) | {phases['step jobs']:.2f}: {work:.2f} + {starts:.2f} + {rest:.2f} | "
              f"{phases['tables']:.2f} | {phases['report']:.2f} | {total:.2f} | {above:.2f} | "
              f"~{peer_at:.0f} | {peer_at / total:.1f}x |", flush=True)  # fmt: skip
    print(
        "targets: peer / opchain >= 20x at 1,000 and >= 50x at 10,000; <= 2 ms per dataset "
        "above the operation's own work"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plan-size", type=int, default=100_000)
    parser.add_argument("--exec-size", type=int, default=10_000)
    parser.add_argument("--peer-sizes", default="1000,3000,10000")
    parser.add_argument("--peer-exec", type=int, default=300)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="every size / 10, a quick check")
    parser.add_argument("--dir", default=None)
    parser.add_argument("--breakdown-sizes", default="1000,10000")
    parser.add_argument("--peer-ms", type=float, default=None, help="breakdown: skip measuring "
                        "the peer's marginal cost, use this one (ms per dataset)")  # fmt: skip
    parser.add_argument("--parts", default="planning,execution,durability,breakdown")
    args = parser.parse_args()
    args.peer_sizes = [int(s) for s in args.peer_sizes.split(",")]
    args.breakdown_sizes = [int(s) for s in args.breakdown_sizes.split(",")]
    if args.small:
        args.plan_size //= 10
        args.exec_size //= 10
        args.peer_sizes = [s // 10 for s in args.peer_sizes]
        args.peer_exec //= 10
        args.breakdown_sizes = [s // 10 for s in args.breakdown_sizes]
    tmp = Path(tempfile.mkdtemp(prefix="opchain-scale-", dir=args.dir))
    try:
        for part in args.parts.split(","):
            parts = {"planning": planning, "execution": execution, "durability": durability}
            {**parts, "breakdown": breakdown}[part](args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
