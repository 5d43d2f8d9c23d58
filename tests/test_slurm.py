"""The example chain on a real one-node SLURM cluster on localhost, against a local run.

The cluster (munged, slurmctld, slurmd from Debian's slurm-wlm) is started by the fixture and
stopped afterwards; jobs go through snakemake-executor-plugin-slurm with profiles/slurm, the
plugin as the project's ``[slurm]`` extra installs it, in a folder of its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO, Project, make_project
from slurm_cluster import SlurmCluster, ensure_installed, start_cluster

pytestmark = pytest.mark.slurm

#: Files of a result that depend only on the data (metadata.yaml records times and host).
VOLATILE = {"metadata.yaml", "input_metadata.yaml", ".snakemake_timestamp"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    ensure_installed()
    with start_cluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


@pytest.fixture(scope="module")
def slurm_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding what the ``[slurm]`` extra adds to this environment (the executor plugin
    and what it needs that is missing), for PYTHONPATH. Not a test extra: every ``snakemake``
    imports each executor plugin installed, and this one imports pandas (~0.5 s a start of the
    suite's hundreds)."""
    folder = tmp_path_factory.mktemp("slurm-plugin")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["optional-dependencies"]["slurm"]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
    plan = subprocess.run([*pip, "--dry-run", "--report", "-", *wanted],
                          capture_output=True, text=True, check=True)  # fmt: skip
    missing = [f"{p['metadata']['name']}=={p['metadata']['version']}"
               for p in json.loads(plan.stdout)["install"]]  # fmt: skip
    if missing:
        subprocess.run([*pip, "--no-deps", "--target", str(folder), *missing],
                       capture_output=True, check=True)  # fmt: skip
    return folder


def result_files(project: Project) -> dict[str, bytes]:
    """Every data file of every result, keyed by (run, step, dataset, file) rather than by the
    timestamped names, which differ between two projects."""
    found = {}
    for run in project.manifest()["runs"]:
        for i, step in enumerate(run["steps"]):
            for path in sorted((project.storage / step["dir"]).rglob("dataset_*/**/*")):
                if path.is_file() and path.name not in VOLATILE:
                    dataset = path.relative_to(project.storage / step["dir"])
                    found[f"run{run['run']}/step{i}/{dataset}"] = path.read_bytes()
    return found


def test_chain_runs_through_slurm_byte_identical_to_local(
    tmp_path: Path, cluster: SlurmCluster, slurm_plugin: Path
) -> None:
    grid = "type: myops:add\nparameter_ranges: {value: [1, 2, 3, 4, 5, 6, 7, 8]}\n"
    # ... then each run's two datasets of each setting combined both ways (a combination step).
    chain = (
        REPO / "tests/chains/basic/config/chains/basic.yaml"
    ).read_text() + "  - shuffle.yaml\n"
    shuffle = "type: shuffle\nparameters: {axis: row}\n"
    local = make_project(tmp_path / "local")
    remote = make_project(tmp_path / "remote")
    for project in (local, remote):
        project.edit("config/operations/add_one.yaml", grid)
        project.edit("config/operations/shuffle.yaml", shuffle)
        project.edit("config/chains/basic.yaml", chain)
    for project, batch in ((local, 3), (remote, 8)):
        project.edit(
            "config/config.yaml",
            f"storage: storage\nbatch: {batch}\nchains: [config/chains/basic.yaml]\n",
        )
    local.snakemake()
    env = {**remote.env(), **cluster.env}
    env["PYTHONPATH"] = os.pathsep.join([str(slurm_plugin), env["PYTHONPATH"]])
    # Each step's jobs take ~3 s: a first status check after 5 s finds them done (the profile's
    # 10 s suits a real cluster; later checks wait 10 s longer each).
    slurm = ("--workflow-profile", str(REPO / "profiles" / "slurm"),
             "--slurm-init-seconds-before-status-checks", "5")  # fmt: skip
    result = remote.snakemake(*slurm, env=env)
    output = result.stdout + result.stderr

    # The jobs went through SLURM: the plugin logged their ids, and SLURM knows them.
    job_ids = set(re.findall(r"SLURM jobid (\d+)", output)) | {
        p.stem for p in remote.root.glob(".snakemake/slurm_logs/**/*.log") if p.stem.isdigit()
    }
    assert job_ids, output
    # 7 steps of 16 datasets (the grid of 8 on 2 inputs, then per run; shuffle: 2 pairs of each
    # setting's 2 datasets) in batches of 8: 14 SLURM jobs for 112 datasets.
    assert len(job_ids) == 14, output
    for job_id in job_ids:
        info = cluster.job_info(job_id)
        assert info.get("JobState") == "COMPLETED", (job_id, info)

    # The directories the main process reserved are exactly the ones the jobs wrote.
    reserved = {
        json.loads(p.read_text())["dir"] for p in (remote.storage / ".opchain" / "steps").iterdir()
    }
    written = {
        p.parent.relative_to(remote.storage).as_posix()
        for p in remote.storage.glob("operation_chain_results/*/*/dataset_*")
    }
    assert reserved == written

    # Byte-identical arrays (and every other data file) to the local run of the same chain,
    # whatever the batch size.
    assert len(result_files(local)) >= 112 * 4
    pairs = remote.storage / remote.manifest()["runs"][1]["steps"][3]["dir"]
    combination = yaml.safe_load((pairs / "dataset_1" / "metadata.yaml").read_text())["combination"]
    assert combination == {"name": "a_vs_b", "train": ["a"], "test": ["b"]}
    assert result_files(remote) == result_files(local)

    # Nothing left to do afterwards, through SLURM or locally.
    again = remote.snakemake(*slurm, env=env)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert "Nothing to be done" in remote.snakemake("-n").stdout
