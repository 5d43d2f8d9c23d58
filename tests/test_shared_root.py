"""A group sharing one storage root: two clones of a project (two working directories, so two
Snakemake locks) run overlapping chains into it at the same time, as real `snakemake` processes.

Every result is written once (locks per result in the storage root), both runs succeed, both agree
on every directory name (the second reservation adopts the first), and a third run from either
clone has nothing to do.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import Project, make_project, write_matrix

from opchain.index import Index

ROUNDS = 3  # races per test run: each round starts both runs at the same moment


def clone(root: Path, storage: Path, chain: str) -> Project:
    """A project whose config names the shared storage root."""
    project = make_project(root)
    shutil.rmtree(project.storage)
    project.edit("config/config.yaml", f"storage: {storage}\nchains: [config/chains/basic.yaml]\n")
    project.edit("config/chains/basic.yaml", chain)
    return Project(root)


def shared_inputs(storage: Path) -> None:
    for i, name in enumerate(["a", "b"]):
        write_matrix(storage / "inputs" / name, np.arange(12.0).reshape(4, 3) * (i + 1))


def race(*projects: Project) -> list[subprocess.CompletedProcess[str]]:
    running = [
        subprocess.Popen(
            p.snakemake_command(),
            cwd=p.root,
            env=p.env(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for p in projects
    ]
    return [
        subprocess.CompletedProcess(r.args, r.wait(timeout=300), r.stdout.read(), "")
        for r in running
    ]


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_two_clones_racing_on_one_storage_root(tmp_path: Path, round_: int) -> None:
    storage = tmp_path / "shared"
    shared_inputs(storage)
    # Overlapping chains: the same first two steps, then each its own last step.
    one = clone(
        tmp_path / "one",
        storage,
        "input_path: inputs\nruns: 2\noperations: [add_one.yaml, jitter.yaml, add.yaml]\n",
    )
    two = clone(
        tmp_path / "two",
        storage,
        "input_path: inputs\nruns: 2\noperations: [add_one.yaml, jitter.yaml]\n",
    )
    for result in race(one, two):
        assert result.returncode == 0, result.stdout
    by_origin = {
        Path(m["origin"]).parents[2]: m
        for m in (yaml.safe_load(p.read_text()) for p in storage.glob("*/*/chain.yaml"))
    }
    # Same chain name, two projects: two chain directories, neither overwrote the other.
    assert set(by_origin) == {one.root, two.root}
    manifests = [by_origin[one.root], by_origin[two.root]]
    # The shared steps have one directory, used by both.
    for r in range(2):
        assert [s["dir"] for s in manifests[0]["runs"][r]["steps"][:2]] == [
            s["dir"] for s in manifests[1]["runs"][r]["steps"]
        ]
    # Every result written once: each dataset computed exactly once in its step's log.
    datasets = sorted(storage.glob("operation_chain_results/*/*/dataset_*"))
    assert len(datasets) == 2 * (1 + 2 + 2)  # add_one shared by runs; jitter, add per run
    for dataset in datasets:
        log = (dataset.parent / "operation.log").read_text()
        assert log.count(f" {dataset.name} INFO done") == 1, log
    assert not list(storage.rglob("*.tmp-*")) and not list(storage.rglob(".opchain/locks/*"))
    # The index is consistent: a rebuild from the results finds the same entries.
    steps = {p.name: p.read_text() for p in (storage / ".opchain" / "steps").iterdir()}
    assert {yaml.safe_load(v)["dir"] for v in steps.values()} == {
        d.parent.relative_to(storage).as_posix() for d in datasets
    }
    # A third run from either working directory has nothing to do.
    for project in (one, two):
        again = project.snakemake()
        assert "Nothing to be done" in again.stdout + again.stderr
    assert Index(storage).rebuild() == len(steps)
