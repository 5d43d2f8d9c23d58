"""Configuration a user relies on, through real `snakemake` runs: OPCHAIN_STORAGE, datasets nested
deep in a summary, and a chain's overridden_params reaching the job and its step's record."""

from __future__ import annotations

import shutil

import numpy as np
import yaml
from conftest import Project, write_matrix


def test_opchain_storage_overrides_the_configs_storage(project: Project) -> None:
    elsewhere = project.root / "elsewhere"
    shutil.move(project.storage, elsewhere)
    project.snakemake(env={**project.env(), "OPCHAIN_STORAGE": str(elsewhere)})
    assert len(list(elsewhere.glob("operation_chain_results/*/*/dataset_*/metadata.yaml"))) == 10
    assert not project.storage.exists()


def test_datasets_nested_deep_in_a_summary_are_found(project: Project) -> None:
    write_matrix(project.storage / "inputs" / "deeper" / "still" / "c", np.ones((2, 3)))
    project.snakemake()
    first = project.storage / project.manifest()["runs"][0]["steps"][0]["dir"]
    inputs = sorted(yaml.safe_load(p.read_text())["input"] for p in first.glob("*/metadata.yaml"))
    assert inputs == ["inputs/a", "inputs/b", "inputs/deeper/still/c"]


def test_overridden_params_reach_the_job_and_the_steps_record(project: Project) -> None:
    project.snakemake()  # the chain overrides add.yaml's value 2 with 10
    last = project.storage / project.manifest()["runs"][0]["steps"][2]["dir"]
    assert yaml.safe_load((last / "dataset_1" / "metadata.yaml").read_text())["parameters"] == {
        "value": 10
    }
    ran = yaml.safe_load((last / "source_operation.yaml").read_text())
    assert ran == {
        "type": "myops:add",
        "parameters": {"value": 10},
        "overridden_params": {"value": 10},
    }
    original = (last / "source_operation.original.yaml").read_text()
    assert original == (project.root / "config/operations/add.yaml").read_text()
