"""Small sweeps and growing a grid: what a user waits for when a sweep is run, rerun, and grown.

Usage: ``python benchmarks/growth.py [--sizes 20,200,1000] [--cores 1] [--dir /tmp]``

The sweep is one chain step, ``normalize`` over the shipped cells data (``example_data/cells``)
with a grid of ``target_sum`` values, so N points are N result datasets. For each N, in a fresh
project, ``snakemake --cores C`` (the default target: the step's jobs, the chain's tables and
report) is timed for: the first run, a no-op rerun, and the grid grown by one point (N + 1
values, the first N as before), then a no-op rerun of the grown grid. Each line also gives the
jobs of the step's rule Snakemake ran, and for the grown grid how many datasets were computed
(the others are linked from where they were computed). Each time is the wall time and, in
parentheses, the CPU time of snakemake and every process it ran (user + system): on a shared
machine the wall time swings with the load, the CPU time much less. The target of issue 23:
growing by one costs at most the no-op rerun + that point's work + 1 s. Beside it, its floor
here: re-linking the grid's datasets with nothing but the system calls a directory per point
needs (a directory, a hard link a file, two small files, flushed, renamed), timed in the same
run on the same filesystem. (benchmarks/dvc.py runs the same sweep through DVC.)
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import yaml
from plan import REPO, job_count, snakemake, write_cells_sweep

from opchain import atomic
from opchain.reuse import OWN_FILES
from opchain.table import read_metadata


def step_dir(root: Path) -> Path:
    """The sweep's step directory as of the last run."""
    chain = yaml.safe_load((root / ".opchain" / "chains" / "sweep" / "chain.yaml").read_text())
    return root / "storage" / chain["runs"][0]["steps"][0]["dir"]


def computed(step: Path) -> tuple[int, float]:
    """Datasets computed (not linked) by the last run, and their own work (``cost``, seconds)."""
    work = [
        meta["cost"]["wall_seconds"]
        for path in step.glob("dataset_*")
        if "computed_in" not in (meta := read_metadata(step, path.name))
    ]
    return len(work), sum(work)


def timed(root: Path, cores: int) -> tuple[float, float, int]:
    """Wall and CPU seconds of one snakemake run (CPU: user + system of it and every process it
    ran, which a loaded machine inflates far less than the wall time), and its normalize jobs."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds, out = snakemake(REPO / "Snakefile", root, cores)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, cpu, 0 if "Nothing to be done" in out else job_count(out, "normalize")


def relink_floor(step: Path, into: Path) -> float:
    """Seconds to give every dataset of ``step`` a directory of its own in ``into`` the least a
    directory per point can cost: a directory, a hard link of each file, its two own small files
    written afresh, all flushed side by side, a rename each, the parent flushed. What growing a
    grid re-links, with nothing else (no reading, no checking, no Python above the calls)."""
    datasets = sorted(step.glob("dataset_*"))
    own = {name: (datasets[0] / name).read_bytes() for name in OWN_FILES}
    into.mkdir()
    started = time.perf_counter()
    asides, written = [], []
    for dataset in datasets:
        aside = into / f".{dataset.name}.tmp"
        aside.mkdir()
        for name in os.listdir(dataset):
            if name not in own:
                os.link(dataset / name, aside / name)
        for name, data in own.items():
            (aside / name).write_bytes(data)
            written.append(aside / name)
        asides.append(aside)
        written.append(aside)
    atomic.flush(written)  # fsyncs side by side
    for aside in asides:
        os.rename(aside, into / aside.name[1:].removesuffix(".tmp"))
    atomic.flush([into])
    return time.perf_counter() - started


def sweep(points: int, cores: int, tmp: Path) -> None:
    root = tmp / f"sweep-{points}"
    write_cells_sweep(root, points)
    first = timed(root, cores)
    noop = timed(root, cores)
    write_cells_sweep(root, points + 1)
    grown = timed(root, cores)
    new, work = computed(step_dir(root))
    again = timed(root, cores)
    floor = relink_floor(step_dir(root), root / "floor")
    growth = grown[0] - noop[0] - work
    print(
        f"| {points:,} | {first[0]:.2f} ({first[1]:.2f}), {first[2]} jobs | "
        f"{noop[0]:.2f} ({noop[1]:.2f}) | {grown[0]:.2f} ({grown[1]:.2f}), {grown[2]} jobs, "
        f"{new} computed | {again[0]:.2f} ({again[1]:.2f}), {again[2]} jobs | "
        f"{growth:.2f} | {floor:.2f} | {growth / floor:.1f}x |",
        flush=True,
    )
    shutil.rmtree(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="20,200,1000")
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="opchain-growth-", dir=args.dir))
    print(f"normalize over example_data/cells, snakemake --cores {args.cores}, wall (CPU) seconds")
    print(
        "| points | first run | no-op rerun | grown by one | no-op after growth | growth: grown "
        "- no-op - the new point's work (target ≤ 1 s) | re-linking floor | growth / floor |"
    )
    print("|---|---|---|---|---|---|---|---|")
    try:
        for points in map(int, args.sizes.split(",")):
            sweep(points, args.cores, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
