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
machine the wall time swings with the load, the CPU time much less. The target of issue 23: growing by one
costs at most the no-op rerun + that point's work + 1 s. (benchmarks/dvc.py runs the same sweep
through DVC.)
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
from pathlib import Path

import yaml
from plan import REPO, job_count, snakemake, write_cells_sweep


def computed(root: Path) -> int:
    """Datasets computed (not linked) by the last run: its step's operation.log says."""
    chain = yaml.safe_load((root / ".opchain" / "chains" / "sweep" / "chain.yaml").read_text())
    step = root / "storage" / chain["runs"][0]["steps"][0]["dir"]
    return (step / "operation.log").read_text().count(" done: ")


def timed(root: Path, cores: int) -> tuple[str, int]:
    """ "wall (CPU) s" of one snakemake run (CPU: user + system of it and every process it ran,
    which a loaded machine inflates far less than the wall time), and its normalize jobs."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds, out = snakemake(REPO / "Snakefile", root, cores)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    jobs = 0 if "Nothing to be done" in out else job_count(out, "normalize")
    return f"{seconds:.2f} ({cpu:.2f})", jobs


def sweep(points: int, cores: int, tmp: Path) -> None:
    root = tmp / f"sweep-{points}"
    write_cells_sweep(root, points)
    first, first_jobs = timed(root, cores)
    noop, _ = timed(root, cores)
    write_cells_sweep(root, points + 1)
    grown, grown_jobs = timed(root, cores)
    new = computed(root)
    again, again_jobs = timed(root, cores)
    print(
        f"| {points:,} | {first}, {first_jobs} jobs | {noop} | "
        f"{grown}, {grown_jobs} jobs, {new} computed | {again}, {again_jobs} jobs |",
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
    print("| points | first run | no-op rerun | grown by one | no-op after growth |")
    print("|---|---|---|---|---|")
    try:
        for points in map(int, args.sizes.split(",")):
            sweep(points, args.cores, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
