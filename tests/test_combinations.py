"""Operations over a whole input summary (pySPACE's shuffle, merge, concatenate, and user
operations declared with ``combine=``), run by real `snakemake` processes on real files.

The project is tests/chains/basic with three input datasets a, b, c (4 rows r0..r3 of 3 columns
each; their row names collide, so pooled rows are named ``<member>/<row>``)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import yaml
from conftest import Project, make_project, write_matrix

from opchain.daf import open_reader
from opchain.table import read_results


def three_inputs(root: Path, chains: dict[str, list[str]]) -> Project:
    """The basic project with inputs a, b, c and the given chains (name -> operation files)."""
    project = make_project(root)
    write_matrix(project.storage / "inputs" / "c", np.arange(12.0).reshape(4, 3) * 3)
    operations = {
        "shuffle.yaml": "type: shuffle\nparameters: {axis: row}\n",
        "merge.yaml": "type: merge\nparameters: {axis: row}\n",
        "merge_reverse.yaml": "type: merge\nparameters: {axis: row, reverse: true}\n",
        "concatenate.yaml": "type: concatenate\nparameters: {axis: row}\n",
        "grid.yaml": "type: myops:add\nparameter_ranges: {value: [1, 2]}\n",
        "across.yaml": "type: shuffle\ncombine_across_settings: true\nparameters: {axis: row}\n",
        "transfer.yaml": "type: myops:transfer\n",
    }
    for name, text in operations.items():
        project.edit(f"config/operations/{name}", text)
    for name, steps in chains.items():
        project.edit(f"config/chains/{name}.yaml", f"input_path: inputs\noperations: {steps}\n")
    paths = [f"config/chains/{name}.yaml" for name in chains]
    # A job per dataset: the tests follow single batches of a combination's members.
    project.edit("config/config.yaml", f"storage: storage\nbatch: 1\nchains: {paths}\n")
    return project


def chain_dir(project: Project, chain: str) -> Path:
    (found,) = [
        m.parent
        for m in project.storage.glob("operation_chain_results/*/chain.yaml")
        if yaml.safe_load(m.read_text())["chain"] == chain
    ]
    return found


def step_results(project: Project, chain: str, step: int = -1) -> list[Path]:
    """The result datasets of the chain's step (0-based, default the last), in order."""
    manifest = yaml.safe_load((chain_dir(project, chain) / "chain.yaml").read_text())
    found = manifest["runs"][0]["steps"][step]
    return [
        project.storage / found["dir"] / f"dataset_{k}" for k in range(1, found["datasets"] + 1)
    ]


def metadata(dataset: Path) -> dict:
    return yaml.safe_load((dataset / "metadata.yaml").read_text())


def pooled(dataset: Path) -> tuple[list[str], list[bool]]:
    data = open_reader(dataset)
    return list(data.axis_entries("row")), data.get_data1d("row#is_test").tolist()


def test_shuffle_merge_and_concatenate_pool_the_summary(tmp_path: Path) -> None:
    project = three_inputs(
        tmp_path / "project",
        {
            "shuffled": ["shuffle.yaml"],
            "merged": ["merge.yaml"],
            "reversed": ["merge_reverse.yaml"],
            "concatenated": ["concatenate.yaml"],
        },
    )
    project.snakemake()
    shuffled = step_results(project, "shuffled")  # every ordered pair: n(n - 1)
    names = [metadata(d)["combination"]["name"] for d in shuffled]
    assert names == ["a_vs_b", "a_vs_c", "b_vs_a", "b_vs_c", "c_vs_a", "c_vs_b"]
    rows, is_test = pooled(shuffled[0])
    assert rows == [f"a/r{i}" for i in range(4)] + [f"b/r{i}" for i in range(4)]
    assert is_test == [False] * 4 + [True] * 4
    x = np.asarray(open_reader(shuffled[0]).get_data2d("row,col#x"))
    assert np.array_equal(x, np.vstack([np.arange(12.0).reshape(4, 3) * k for k in (1, 2)]))
    a_vs_b = metadata(shuffled[0])
    assert a_vs_b["combination"] == {"name": "a_vs_b", "train": ["a"], "test": ["b"]}
    assert a_vs_b["inputs"] == {"a": "inputs/a", "b": "inputs/b"}
    assert a_vs_b["input"] == "inputs/b"
    inputs = yaml.safe_load((shuffled[0] / "input_metadata.yaml").read_text())
    assert list(inputs) == ["a", "b"] and inputs["b"]["path"] == "inputs/b"

    merged = step_results(project, "merged")  # every one left out: n
    assert [metadata(d)["combination"]["name"] for d in merged] == [
        "Rest_vs_a",
        "Rest_vs_b",
        "Rest_vs_c",
    ]
    rows, is_test = pooled(merged[0])
    assert rows[:4] == ["b/r0", "b/r1", "b/r2", "b/r3"] and rows[-4:] == [
        f"a/r{i}" for i in range(4)
    ]
    assert sum(is_test) == 4 and is_test[-4:] == [True] * 4
    reverse = step_results(project, "reversed")
    assert metadata(reverse[0])["combination"] == {
        "name": "a_vs_Rest",
        "train": ["a"],
        "test": ["b", "c"],
    }
    assert sum(pooled(reverse[0])[1]) == 8

    (concatenated,) = step_results(project, "concatenated")  # one of all
    data = open_reader(concatenated)
    assert data.axis_size("row") == 12 and data.axis_size("col") == 3
    assert data.get_data1d("row#source").tolist() == ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    assert metadata(concatenated)["combination"]["name"] == "All"

    shown = project.opchain("show", str(shuffled[0])).stdout
    assert "combination a_vs_b  (train a; test b)" in shown
    assert "<- inputs/a  (input)" in shown and "<- inputs/b  (input)" in shown


def test_a_grid_feeds_shuffle_pairs_of_the_same_setting(tmp_path: Path) -> None:
    """A grid of 2 settings over 3 inputs: 2 groups of 3, 12 pairs, never across settings (unless
    asked: 6 x 5 = 30); a step after the pairs keeps their names in results.csv's input."""
    project = three_inputs(
        tmp_path / "project",
        {
            "grid": ["grid.yaml", "shuffle.yaml", "add_one.yaml"],
            "across": ["grid.yaml", "across.yaml"],
        },
    )
    project.snakemake()
    shuffled = step_results(project, "grid", 1)
    assert len(shuffled) == 12
    for dataset in shuffled:
        members = yaml.safe_load((dataset / "input_metadata.yaml").read_text()).values()
        assert len({m["parameters"]["value"] for m in members}) == 1  # one setting per pair
    names = [metadata(d)["combination"]["name"] for d in shuffled]
    assert sorted(set(names)) == ["a_vs_b", "a_vs_c", "b_vs_a", "b_vs_c", "c_vs_a", "c_vs_b"]
    assert len(step_results(project, "across")) == 30
    assert metadata(step_results(project, "across")[0])["combination"]["name"] == "a@0_vs_a@1"

    table = read_results(chain_dir(project, "grid") / "results.csv")
    last = table[table["step"] == 3]
    assert len(last) == 12 and set(last["input"]) == set(names)
    summary = project.opchain("results", "grid", "--summary", "--format", "csv").stdout
    assert "a_vs_b" in summary


def calls(path: Path) -> list[str]:
    return sorted(path.read_text().split()) if path.exists() else []


def test_new_and_edited_inputs_compute_only_their_combinations(tmp_path: Path) -> None:
    """A user pair operation counts its calls: a fourth input computes its 6 new pairs only,
    reusing the 6 old; rewriting one input recomputes the 6 pairs containing it."""
    project = three_inputs(tmp_path / "project", {"transfer": ["transfer.yaml"]})
    log = tmp_path / "calls"
    env = {**project.env(), "CALLS_FILE": str(log)}
    project.snakemake(env=env)
    assert len(calls(log)) == 6
    distances = {
        metadata(d)["combination"]["name"]: metadata(d)["results"]
        for d in step_results(project, "transfer")
    }
    assert distances["a_vs_b"]["distance"] > 0

    log.unlink()
    write_matrix(project.storage / "inputs" / "d", np.arange(12.0).reshape(4, 3) * 4)
    project.snakemake(env=env)
    assert calls(log) == ["a_vs_d", "b_vs_d", "c_vs_d", "d_vs_a", "d_vs_b", "d_vs_c"]
    results = step_results(project, "transfer")
    assert len(results) == 12
    assert sum("computed_in" in metadata(d) for d in results) == 6

    log.unlink()
    shutil.rmtree(project.storage / "inputs" / "b")
    write_matrix(project.storage / "inputs" / "b", np.ones((4, 3)))
    project.snakemake(env=env)
    assert calls(log) == ["a_vs_b", "b_vs_a", "b_vs_c", "b_vs_d", "c_vs_b", "d_vs_b"]


def test_a_combination_job_waits_for_the_batches_of_its_members(tmp_path: Path) -> None:
    project = three_inputs(tmp_path / "project", {"basic": ["add_one.yaml", "shuffle.yaml"]})
    dry = project.snakemake("-n").stdout
    jobs = re.findall(r"shuffle/basic/2/batch_(\d+); Input files updated by another job: (.+)", dry)
    inputs = {int(b): sorted(i.split(", ")) for b, i in jobs}
    marker = ".opchain/jobs/add/basic/1/batch_{}".format
    assert inputs[1] == [marker(1), marker(2)]  # a_vs_b
    assert inputs[2] == [marker(1), marker(3)]  # a_vs_c
    assert len(inputs) == 6 and all(len(i) == 2 for i in inputs.values())
    dag = project.snakemake("--dag").stdout
    names = dict(re.findall(r'(\d+)\[label = "(\w+)', dag))
    edges = [(names[a], names[b]) for a, b in re.findall(r"(\d+) -> (\d+)", dag)]
    assert edges.count(("add", "shuffle")) == 12  # the fan-in: 2 members each


def refused(project: Project) -> str:
    result = project.snakemake("-n", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert not (project.storage / "operation_chain_results").exists()
    return result.stderr.strip().splitlines()[-1]


def test_bad_summaries_are_refused_with_one_line_at_planning(tmp_path: Path) -> None:
    project = three_inputs(tmp_path / "project", {"basic": ["shuffle.yaml"]})
    project.edit("config/operations/shuffle.yaml", "type: shuffle\n")
    assert refused(project) == (
        "opchain: config/operations/shuffle.yaml:1: parameters: 'axis' is a required property "
        "(operation 'shuffle')"
    )
    project.edit("config/operations/shuffle.yaml", "type: shuffle\nparameters: {axis: col}\n")
    assert refused(project) == (
        "opchain: config/operations/shuffle.yaml: dataset 'a': axis 'col' is not the rows of "
        "the matrix 'row,col#x' (pool along the rows of every matrix that has 'col')"
    )
    project.edit("config/operations/shuffle.yaml", "type: shuffle\nparameters: {axis: row}\n")
    shutil.rmtree(project.storage / "inputs" / "c")
    write_matrix(project.storage / "inputs" / "c", np.zeros((4, 2)))
    assert refused(project) == (
        "opchain: config/operations/shuffle.yaml: datasets 'a' and 'c' cannot be pooled along "
        "'row': axis 'col' has 3 vs 2 entries"
    )
    for name in ("b", "c"):
        (project.storage / "inputs" / name).rename(project.storage / name)
    assert refused(project) == (
        "opchain: config/operations/shuffle.yaml: shuffle combines the datasets of a summary "
        "(pairs) but has only 1 dataset made with the same upstream settings to combine (a)"
    )


def test_upstream_constraints_give_each_combination_the_settings_its_members_admit(
    tmp_path: Path,
) -> None:
    """add [1, 2], then merge over reverse [false, true] where reverse == (add.value == 2): each
    of the 6 combinations (3 left out per add setting) gets the one setting its members' lineage
    admits, so 6 results of 12: Rest_vs_X after add 1, X_vs_Rest after add 2."""
    project = three_inputs(tmp_path / "project", {"constrained": ["grid.yaml", "merge_both.yaml"]})
    project.edit(
        "config/operations/merge_both.yaml",
        "type: merge\nparameter_ranges: {axis: [row], reverse: [false, true]}\n"
        'upstream_constraints: ["reverse == (add.value == 2)"]\n',
    )
    project.snakemake()
    found = []
    for dataset in step_results(project, "constrained"):
        own = metadata(dataset)
        (value,) = {
            metadata(project.storage / member)["parameters"]["value"]
            for member in own["inputs"].values()
        }
        found.append((value, own["parameters"]["reverse"], own["combination"]["name"]))
    expected = [(1, False, f"Rest_vs_{x}") for x in "abc"] + [(2, True, f"{x}_vs_Rest") for x in "abc"]  # fmt: skip
    assert sorted(found) == sorted(expected)
