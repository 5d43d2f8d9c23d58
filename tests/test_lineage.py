"""`opchain show`: a result's operation, parameters, scores, datastore, lineage and data."""

from __future__ import annotations

import json

import pytest
from conftest import Project, make_project


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The basic chain (add_one -> jitter -> add, 2 runs, inputs a and b), run once, read only."""
    project = make_project(tmp_path_factory.mktemp("lineage") / "project")
    project.snakemake()
    return project


def show(project: Project, path: str, *args: str) -> dict:
    return json.loads(project.opchain("show", path, "--json", *args).stdout)


def test_show_dataset_names_everything_back_to_the_input_files(ran: Project) -> None:
    run = ran.manifest()["runs"][1]
    last = f"{run['steps'][2]['dir']}/dataset_2"
    info = show(ran, f"storage/{last}")
    assert info["kind"] == "dataset" and info["path"] == last
    assert (info["operation"], info["parameters"], info["run"], info["seed"]) == (
        "add", {"value": 10}, 1, 1,
    )  # fmt: skip
    assert [hop["dataset"] for hop in info["lineage"]] == [
        f"{run['steps'][1]['dir']}/dataset_2",
        f"{run['steps'][0]['dir']}/dataset_2",
        "inputs/b",
    ]
    assert [hop.get("operation") for hop in info["lineage"]] == ["jitter", "add", None]
    assert info["lineage"][0]["parameters"] == {"scale": 0.5} and info["lineage"][-1]["input"]
    assert info["data"]["axes"] == {"col": 3, "row": 4}
    assert info["data"]["data2d"]["row,col#x"]["shape"] == [4, 3]

    text = ran.opchain("show", f"storage/{last}").stdout
    hops = [line for line in text.splitlines() if line.strip().startswith("<-")]
    assert len(hops) == 3 and hops[-1].split()[1] == "inputs/b"  # one line per hop
    assert "row,col#x: float64 4 x 3" in text


def test_show_reports_scores_and_datastore_values(ran: Project) -> None:
    jitter = ran.manifest()["runs"][0]["steps"][1]["dir"]
    info = show(ran, f"storage/{jitter}/dataset_1")
    assert set(info["scores"]) == {"noise_mean"}
    assert info["datastore"]["noise"]["value"] == "array float64 [4, 3]"
    assert info["datastore"]["noise"]["url"].startswith(f"file:///{jitter}/dataset_1/datastore/")


def test_show_step_and_chain_directories(ran: Project) -> None:
    manifest = ran.manifest()
    step = show(ran, f"storage/{manifest['runs'][0]['steps'][0]['dir']}")
    assert step["kind"] == "step" and len(step["datasets"]) == 2
    assert {d["lineage"][-1]["dataset"] for d in step["datasets"]} == {"inputs/a", "inputs/b"}
    chain = show(ran, str(ran.chain_dir()))
    assert chain["kind"] == "chain" and chain["chain"] == "basic" and len(chain["history"]) == 1
    assert [[s["dir"] for s in run["steps"]] for run in chain["runs"]] == [
        [s["dir"] for s in run["steps"]] for run in manifest["runs"]
    ]


def test_show_summarizes_sparse_data_with_its_density(example: Project) -> None:
    (normalize,) = {
        step["dir"]
        for manifest in example.storage.glob("operation_chain_results/*/chain.yaml")
        for run in json.loads(example.opchain("show", str(manifest.parent), "--json").stdout)[
            "runs"
        ]
        for step in run["steps"]
        if step["operation"] == "normalize"
    }
    info = show(example, f"storage/{normalize}/dataset_1")
    umis = info["data"]["data2d"]["cell,gene#UMIs"]
    assert umis["layout"] == "sparse" and umis["shape"] == [524, 10]
    assert umis["density"] == pytest.approx(umis["nnz"] / 5240, abs=1e-6)
    assert "sparse, density" in example.opchain("show", f"storage/{normalize}/dataset_1").stdout


def test_show_of_something_else_is_one_line(ran: Project) -> None:
    result = ran.opchain("show", "storage/inputs", check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "not a result dataset, step directory or chain directory" in result.stderr
