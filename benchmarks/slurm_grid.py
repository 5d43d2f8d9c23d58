"""A grid step on the one-node test SLURM cluster: how many SLURM jobs, how many at once, and the
cost per dataset inside a job.

Usage: ``python benchmarks/slurm_grid.py [--settings 500] [--dir /tmp]`` (root on Debian: the
cluster is tests/slurm_cluster.py's, which installs slurm-wlm and munge when missing).

One chain step, ``add`` with a grid of ``--settings`` values on the test project's two input
datasets (``2 x settings`` result datasets, 1,000 by default), runs through
``snakemake --workflow-profile profiles/slurm``. Printed, from one run: the number of SLURM jobs and
the most that ran at the same time (from the jobs' start and end times in their datasets'
metadata), the wall time, and per dataset inside a job: the job's span (first dataset started to
last finished) over its datasets, against the floor, the same read + write of one small daf dataset
done in one Python process (no SLURM, no Snakemake, no opchain job around it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import make_project  # noqa: E402
from slurm_cluster import ensure_installed, start_cluster  # noqa: E402

from opchain.daf import FilesWriter, open_reader  # noqa: E402
from opchain.jobs import JOBS_DIR  # noqa: E402


def floor_per_dataset(folder: Path, n: int = 200) -> float:
    """Seconds to read one small daf dataset and write another, in one process."""
    source = folder / "floor_in"
    with FilesWriter(source) as out:
        out.create_axis("row", np.array(["a", "b"], dtype=object))
        out.create_axis("col", np.array(["x", "y"], dtype=object))
        out.set_data2d("row,col#x", np.ones((2, 2)))
    start = time.perf_counter()
    for i in range(n):
        data = open_reader(source)
        with FilesWriter(folder / f"floor_{i}") as out:
            for axis in ("row", "col"):
                out.create_axis(axis, data.axis_entries(axis))
            out.set_data2d("row,col#x", np.asarray(data.get_data2d("row,col#x")) + 1)
    return (time.perf_counter() - start) / n


def stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", type=int, default=500)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    ensure_installed()
    work = Path(tempfile.mkdtemp(prefix="opchain-slurm-", dir=args.dir))
    try:
        project = make_project(work / "project")
        values = list(range(args.settings))
        project.edit(
            "config/operations/grid.yaml",
            f"type: myops:add\nparameter_ranges: {{value: {values}}}\n",
        )
        project.edit("config/chains/basic.yaml", "input_path: inputs\noperations: [grid.yaml]\n")
        with start_cluster(work / "slurm") as cluster:
            started = time.perf_counter()
            project.snakemake(
                "--workflow-profile", str(REPO / "profiles" / "slurm"),
                "--slurm-init-seconds-before-status-checks", "2",
                env={**project.env(), **cluster.env},
            )  # fmt: skip
            wall = time.perf_counter() - started
        step = project.storage / project.manifest()["runs"][0]["steps"][0]["dir"]
        by_batch: dict[int, list[tuple[float, float]]] = defaultdict(list)
        datasets = sorted(step.glob("dataset_*"), key=lambda p: int(p.name[8:]))
        # Datasets per job, as the plan cut them (recorded in the step's spec).
        size = json.loads(next(project.root.glob(f"{JOBS_DIR}/add/*/*/step.json")).read_text())[
            "batch"
        ]
        for dataset in datasets:
            meta = yaml.safe_load((dataset / "metadata.yaml").read_text())
            by_batch[(int(dataset.name[8:]) - 1) // size].append(
                (stamp(meta["started"]), stamp(meta["finished"]))
            )
        jobs = [(min(s for s, _ in b), max(e for _, e in b), len(b)) for b in by_batch.values()]
        inside = sum(end - start for start, end, _ in jobs) / len(datasets)
        events = sorted([(s, 1) for s, _, _ in jobs] + [(e, -1) for _, e, _ in jobs])
        running = most = 0
        for _, change in events:
            running += change
            most = max(most, running)
        floor = floor_per_dataset(work)
        print(f"{len(datasets)} datasets, {len(jobs)} SLURM jobs, at most {most} at once, "
              f"wall {wall:.1f} s (queueing and job start-up included)")  # fmt: skip
        print("| per dataset inside a job | ms | x floor |")
        print("|---|---|---|")
        print(f"| opchain batch job on SLURM | {inside * 1000:.2f} | {inside / floor:.2f} |")
        print(f"| floor: read + write in one process | {floor * 1000:.2f} | 1.00 |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
