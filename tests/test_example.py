"""The README's first command: the shipped example chains on the shipped data."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from conftest import REPO, Project


def test_example_chains_run_and_score(tmp_path: Path) -> None:
    project = Project(tmp_path / "example")
    shutil.copytree(REPO / "config", project.root / "config")
    shutil.copytree(REPO / "storage" / "example_data", project.storage / "example_data")
    project.snakemake()
    manifests = {}
    for manifest in project.storage.glob("operation_chain_results/*/chain.yaml"):
        content = yaml.safe_load(manifest.read_text())
        manifests[content["chain"]] = content
    assert set(manifests) == {"digits", "cells", "transfer"}
    digits = manifests["digits"]["runs"]
    assert len(digits) == 3 and len({r["steps"][1]["dir"] for r in digits}) == 1  # pca shared
    pca = project.storage / digits[0]["steps"][1]["dir"]
    components = sorted(
        yaml.safe_load((d / "metadata.yaml").read_text())["parameters"]["components"]
        for d in pca.glob("dataset_*")
    )
    assert components == [10, 10, 20, 20]  # overridden_params [10, 20] x two digit datasets
    accuracies = [
        yaml.safe_load(p.read_text())["results"]["accuracy"]
        for r in digits
        for p in (project.storage / r["steps"][3]["dir"]).glob("*/metadata.yaml")
    ]
    assert len(accuracies) == 12 and min(accuracies) > 0.75
    cells = manifests["cells"]["runs"]
    inertia = [
        yaml.safe_load(p.read_text())["results"]["inertia"]
        for r in cells
        for p in (project.storage / r["steps"][2]["dir"]).glob("*/metadata.yaml")
    ]
    assert len(inertia) == 4 and all(value > 0 for value in inertia)
    (transfer,) = manifests["transfer"]["runs"]  # train on one half, test on the other
    scores = {
        meta["combination"]["name"]: meta["results"]["test_entries"]
        for p in (project.storage / transfer["steps"][1]["dir"]).glob("*/metadata.yaml")
        for meta in [yaml.safe_load(p.read_text())]
    }
    assert scores == {"first_half_vs_second_half": 899, "second_half_vs_first_half": 898}
    accuracies = [
        yaml.safe_load(p.read_text())["results"]["accuracy"]
        for p in (project.storage / transfer["steps"][2]["dir"]).glob("*/metadata.yaml")
    ]
    assert len(accuracies) == 2 and min(accuracies) > 0.75
    assert "Nothing to be done" in project.snakemake("-n").stdout
