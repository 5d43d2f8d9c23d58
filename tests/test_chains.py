"""End-to-end: chains compiled to Snakemake, run by real `snakemake` processes on real files.

The scenario (tests/chains/basic): input summary `inputs` with datasets a and b, and the chain
add(1) -> jitter (random) -> add(10, overridden from 2), runs: 2.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import numpy as np
import snakemake
import yaml
from conftest import Project

import opchain
from opchain.daf import open_reader
from opchain.datastore import DataStore
from opchain.results import load_result

NAME = re.compile(r"^\d{4}_\d{1,2}_\d{1,2}_\d{1,2}_\d{1,2}_\d{1,2}(_\d+)?$")


def step_dirs(project: Project) -> set[str]:
    return {
        p.relative_to(project.storage).as_posix()
        for p in project.storage.glob("operation_chain_results/*/*")
        if p.is_dir() and NAME.match(p.name)  # not the chain's history/ or report/
    }


def job_counts(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """Jobs per operation rule in a snakemake run's or dry run's job stats."""
    stats = (result.stdout + result.stderr).partition("Job stats:")[2].partition("total")[0]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}
    bookkeeping = ("all", "chain_manifest", "chain_report", "gather")
    return {r: n for r, n in counts.items() if r not in bookkeeping}


def job_count(result: subprocess.CompletedProcess[str]) -> int:
    """How many operation jobs (batches of result datasets) a snakemake run lists."""
    return sum(job_counts(result).values())


def x_of(dataset: Path) -> np.ndarray:
    return np.asarray(open_reader(dataset).get_data2d("row,col#x"))


def test_fresh_run_writes_the_seed_layout_with_metadata(project: Project) -> None:
    project.snakemake()
    chain = project.chain_dir()
    assert NAME.match(chain.name)
    manifest = project.manifest()
    assert [r["seed"] for r in manifest["runs"]] == [0, 1]
    dirs = [s["dir"] for r in manifest["runs"] for s in r["steps"]]
    # add(1) is deterministic: shared by both runs; jitter and the add after it are per run.
    assert dirs[0] == dirs[3] and len(set(dirs)) == 5
    for rel in set(dirs):
        step = project.storage / rel
        assert step.parent == chain and NAME.match(step.name)
        assert sorted(p.name for p in step.iterdir()) == [
            "dataset_1",
            "dataset_2",
            "operation.log",
            "source_operation.original.yaml",
            "source_operation.yaml",
        ]
        assert "dataset_1" in (step / "operation.log").read_text()
        assert yaml.safe_load((step / "source_operation.yaml").read_text())["type"].startswith(
            "myops:"
        )
        for dataset in ("dataset_1", "dataset_2"):
            meta = yaml.safe_load((step / dataset / "metadata.yaml").read_text())
            assert {
                "operation",
                "parameters",
                "run",
                "seed",
                "fingerprint",
                "input",
                "versions",
                "started",
                "finished",
                "host",
            } <= set(meta)
            assert meta["versions"] == {
                "opchain": opchain.__version__,
                "python": platform.python_version(),
                "numpy": np.__version__,
                "snakemake": snakemake.__version__,
            }
            assert meta["host"] == socket.gethostname()
            assert (step / dataset / "input_metadata.yaml").is_file()
    # The values: a + 1 + noise(seed = run) + 10, the noise kept in the datastore by URL.
    for run in manifest["runs"]:
        last = project.storage / run["steps"][2]["dir"]
        jitter = project.storage / run["steps"][1]["dir"] / "dataset_2"
        meta = yaml.safe_load((jitter / "metadata.yaml").read_text())
        assert meta["seed"] == run["seed"] and meta["datastore"]["noise"].startswith("file:///")
        noise = DataStore.load(meta["datastore"], project.storage)["noise"]
        expected_noise = 0.5 * np.random.default_rng(run["seed"]).standard_normal((4, 3))
        np.testing.assert_array_equal(noise, expected_noise)
        b = np.arange(12.0).reshape(4, 3) * 2
        np.testing.assert_array_equal(x_of(last / "dataset_2"), b + 1 + expected_noise + 10)
    first = yaml.safe_load(
        (project.storage / dirs[0] / "dataset_1" / "input_metadata.yaml").read_text()
    )
    assert first["path"] == "inputs/a" and first["axes"] == {"row": 4, "col": 3}
    second = yaml.safe_load(
        (project.storage / dirs[1] / "dataset_1" / "input_metadata.yaml").read_text()
    )
    assert second["fingerprint"] == manifest["runs"][0]["steps"][0]["fingerprint"]


def test_second_run_does_nothing(project: Project) -> None:
    project.snakemake()
    before = project.tree()
    again = project.snakemake()
    assert "Nothing to be done" in again.stdout + again.stderr
    assert project.tree() == before


def test_edited_parameter_reruns_that_step_and_later_ones_only(project: Project) -> None:
    project.snakemake()
    old = project.manifest()
    old_dirs = step_dirs(project)
    project.edit("config/operations/jitter.yaml", "type: myops:jitter\nparameters: {scale: 2.0}\n")
    dry = project.snakemake("-n")
    assert step_dirs(project) == old_dirs, "a dry run must not create directories"
    run = project.snakemake()
    manifest = project.manifest()
    # The dry run announced exactly the jobs the run then ran: jitter and the add after it, for
    # both runs and both datasets, each a job of its operation's rule.
    assert job_counts(dry) == job_counts(run) == {"jitter": 4, "add": 4}
    new_dirs = {s["dir"] for r in manifest["runs"] for s in r["steps"][1:]}
    assert new_dirs == step_dirs(project) - old_dirs and len(new_dirs) == 4
    for before, after in zip(old["runs"], manifest["runs"], strict=True):
        assert after["steps"][0]["dir"] == before["steps"][0]["dir"]  # add(1) not rerun
        assert all(
            a["dir"] != b["dir"]
            for a, b in zip(after["steps"][1:], before["steps"][1:], strict=True)
        )
    assert old_dirs < step_dirs(project)  # old results stay


def test_parameter_set_back_computes_nothing_and_chain_points_back(project: Project) -> None:
    project.snakemake()
    original = project.manifest()
    jitter = (project.root / "config/operations/jitter.yaml").read_text()
    project.edit("config/operations/jitter.yaml", "type: myops:jitter\nparameters: {scale: 3.0}\n")
    project.snakemake()
    project.edit("config/operations/jitter.yaml", jitter)
    dirs = step_dirs(project)
    logs = {d: (project.storage / d / "operation.log").read_text() for d in dirs}
    # Snakemake sees the params of the jitter batches (and the add after them) change back and
    # reruns them; they find their results where they were and compute nothing.
    result = project.snakemake()
    assert job_counts(result) == {"jitter": 4, "add": 4}
    assert "Params have changed since last execution" in result.stdout + result.stderr
    assert step_dirs(project) == dirs
    assert {d: (project.storage / d / "operation.log").read_text() for d in dirs} == logs
    assert project.manifest()["runs"] == original["runs"]


def test_deterministic_prefix_is_computed_once_for_all_runs(project: Project) -> None:
    project.edit(
        "config/chains/basic.yaml",
        "input_path: inputs\nruns: 3\noperations:\n"
        "  - add_one.yaml\n  - add.yaml\n  - jitter.yaml\n",
    )
    result = project.snakemake()
    runs = project.manifest()["runs"]
    assert len({r["steps"][0]["dir"] for r in runs}) == 1
    assert len({r["steps"][1]["dir"] for r in runs}) == 1
    assert len({r["steps"][2]["dir"] for r in runs}) == 3
    # 2 shared steps x 2 datasets + 3 runs x 2 datasets = 10 jobs (one dataset each, so small)
    assert job_count(result) == 10


def test_changed_input_file_reruns_every_step(project: Project) -> None:
    project.snakemake()
    old = step_dirs(project)
    array = project.storage / "inputs" / "a" / "row,col#x.array"
    data = np.fromfile(array, dtype=np.float64)
    data[0] = 100.0
    data.tofile(array)
    project.snakemake()
    runs = project.manifest()["runs"]
    assert all(s["dir"] not in old for r in runs for s in r["steps"])
    assert x_of(project.storage / runs[0]["steps"][0]["dir"] / "dataset_1")[0, 0] == 101.0


def test_changed_operation_code_reruns_the_steps_using_it(project: Project) -> None:
    project.snakemake()
    old = project.manifest()
    ops = project.root / "myops.py"
    ops.write_text(ops.read_text().replace("x + noise)", "x + noise * 1.0)"))
    project.snakemake()
    new = project.manifest()
    for before, after in zip(old["runs"], new["runs"], strict=True):
        assert after["steps"][0]["dir"] == before["steps"][0]["dir"]  # add: same code
        assert after["steps"][1]["dir"] != before["steps"][1]["dir"]  # jitter: changed
        assert after["steps"][2]["dir"] != before["steps"][2]["dir"]  # downstream of it


def test_single_operation_writes_operation_results(project: Project) -> None:
    project.snakemake("--config", "operation=config/operations/add_one.yaml", "input_path=inputs")
    (result,) = (project.storage / "operation_results").iterdir()
    assert NAME.match(result.name)
    assert sorted(p.name for p in result.iterdir()) == [
        "dataset_1",
        "dataset_2",
        "operation.log",
        "source_operation.original.yaml",
        "source_operation.yaml",
    ]
    np.testing.assert_array_equal(x_of(result / "dataset_1"), np.arange(12.0).reshape(4, 3) + 1)
    assert not (project.storage / "operation_chain_results").exists()
    # The same through the CLI: already done, nothing new; a random operation gets a new result.
    project.opchain("run-op", "config/operations/add_one.yaml", "inputs", "--cores", "1")
    assert len(list((project.storage / "operation_results").iterdir())) == 1
    project.opchain("run-op", "config/operations/jitter.yaml", "inputs", "--cores", "1")
    assert len(list((project.storage / "operation_results").iterdir())) == 2


def test_dry_run_writes_nothing(project: Project) -> None:
    before = project.tree()
    project.snakemake("-n")
    assert project.tree() == before
    assert not (project.storage / ".opchain").exists()


def test_killed_step_leaves_no_result_and_only_it_reruns(project: Project) -> None:
    project.edit(
        "config/chains/basic.yaml",
        "input_path: inputs\nruns: 1\noperations:\n  - add_one.yaml\n  - slow.yaml\n",
    )
    project.edit("config/operations/slow.yaml", "type: myops:slow\nparameters: {seconds: 60}\n")
    process = project.start_snakemake()
    deadline = time.time() + 120
    results = "operation_chain_results/*/*/dataset_*/metadata.yaml"
    while not (
        list(project.storage.glob("operation_chain_results/*/*/.dataset_*.tmp-*"))
        and len(list(project.storage.glob(results))) == 2
    ):
        assert time.time() < deadline and process.poll() is None, "the slow step never started"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the whole run dies at once, as on a lost node
    process.wait()
    manifest_steps = sorted(project.storage.glob("operation_chain_results/*/*/dataset_*"))
    first_results = {p for p in manifest_steps if (p / "metadata.yaml").is_file()}
    assert all(".tmp-" not in p.name for p in manifest_steps)
    assert len(first_results) == 2  # add_one finished; the slow step left no dataset_<k>
    first_meta = {p: (p / "metadata.yaml").read_text() for p in first_results}
    project.snakemake("--unlock")  # Snakemake's own lock survives a SIGKILL; a user unlocks too
    # The same chain again (same fingerprints); the slow step is told not to wait this time.
    result = project.snakemake(env={**project.env(), "SLOW_SECONDS": "0"})
    assert {p: (p / "metadata.yaml").read_text() for p in first_results} == first_meta
    # The slow step's two datasets run again. (Snakemake may also rerun an add_one job that the kill
    # caught before it recorded the job as finished: that job keeps its finished dataset.)
    assert job_counts(result)["slow"] == 2
    assert not list(project.storage.rglob(".dataset_*.tmp-*"))  # the dead attempt is cleaned up
    assert (
        len(list(project.storage.glob("operation_chain_results/*/*/dataset_*/metadata.yaml"))) == 4
    )


def test_grid_gives_one_job_per_setting_and_input_dataset(project: Project) -> None:
    project.edit(
        "config/operations/grid.yaml",
        "type: myops:add\nparameter_ranges: {value: [100, 200, 300]}\n",
    )
    project.edit("config/chains/basic.yaml", "input_path: inputs\noperations: [grid.yaml]\n")
    result = project.snakemake()
    assert job_count(result) == 6  # 3 settings x 2 datasets, a job per dataset (batch: 1)
    (step,) = [project.storage / s["dir"] for s in project.manifest()["runs"][0]["steps"]]
    a, b = np.arange(12.0).reshape(4, 3), np.arange(12.0).reshape(4, 3) * 2
    for k, (data, value) in enumerate([(a, 100), (a, 200), (a, 300), (b, 100), (b, 200), (b, 300)]):
        dataset = step / f"dataset_{k + 1}"
        np.testing.assert_array_equal(x_of(dataset), data + value)
        assert yaml.safe_load((dataset / "metadata.yaml").read_text())["parameters"] == {
            "value": value
        }
    assert len(list(project.root.glob("logs/add/*/*/batch_*.log"))) == 6


def test_parameter_settings_list_and_hdf5_results(project: Project) -> None:
    project.edit(
        "config/config.yaml",
        "storage: storage\ndataset_format: h5\nchains: [config/chains/basic.yaml]\n",
    )
    project.edit(
        "config/operations/add_one.yaml",
        "type: myops:add\nparameter_settings: [{value: 1}, {value: 5}]\n",
    )
    project.snakemake()
    runs = project.manifest()["runs"]
    first = project.storage / runs[0]["steps"][0]["dir"]
    assert sorted(p.name for p in first.glob("dataset_*")) == [f"dataset_{k}" for k in range(1, 5)]
    assert (first / "dataset_2" / "data.h5").is_file() and not (
        first / "dataset_2" / "__daf__.yaml"
    ).exists()
    np.testing.assert_array_equal(x_of(first / "dataset_2"), np.arange(12.0).reshape(4, 3) + 5)
    last = project.storage / runs[1]["steps"][2]["dir"]
    assert len(list(last.glob("dataset_*/data.h5"))) == 4  # later steps read HDF5 results


def test_datastore_lives_and_dies_with_its_result(project: Project) -> None:
    project.snakemake()
    jitter = project.storage / project.manifest()["runs"][0]["steps"][1]["dir"]
    urls = yaml.safe_load((jitter / "dataset_1" / "metadata.yaml").read_text())["datastore"]
    assert all(
        url.startswith(
            f"file:///{jitter.relative_to(project.storage).as_posix()}/dataset_1/datastore/"
        )
        for url in urls.values()
    )
    # A deleted result is recomputed from an empty datastore: nothing stale survives.
    stale = jitter / "dataset_1" / "datastore" / "stale.yaml"
    stale.write_text("old: value\n")
    shutil.rmtree(jitter / "dataset_1")
    project.snakemake()
    assert not stale.exists()
    assert DataStore.load(urls, project.storage)["noise"].shape == (4, 3)
    # A moved storage root still resolves every URL (they are relative to the root).
    moved = project.root / "moved_storage"
    project.storage.rename(moved)
    assert DataStore.load(urls, moved)["noise"].shape == (4, 3)
    result = load_result(moved / jitter.relative_to(project.storage) / "dataset_1")
    assert result.storage == moved.resolve() and result.metadata["operation"] == "jitter"
    assert result.datastore.noise.shape == (4, 3) and result.data.axis_size("row") == 4
    # Deleting a result takes its datastore with it: nothing of it is kept elsewhere.
    shutil.rmtree(moved / jitter.relative_to(project.storage) / "dataset_1")
    assert not [
        p
        for p in moved.rglob("*")
        if "datastore" in p.parts and jitter.name in p.parts and "dataset_1" in p.parts
    ]


def test_results_index_and_logs_follow_the_users_umask(project: Project) -> None:
    """On shared storage a group umask (002) makes everything a run writes group-writable, so a
    co-worker can rerun a step, append to its operation.log and add index entries."""
    project.snakemake(umask=0o002)
    written = [p for p in project.storage.rglob("*") if "inputs" not in p.parts]
    assert any(p.name == "operation.log" for p in written)
    assert any(p.name == "chain.yaml" for p in written)
    assert any(".opchain" in p.parts and p.is_file() for p in written)
    assert any("datastore" in p.parts and p.is_file() for p in written)
    wrong = {
        p.relative_to(project.storage).as_posix(): oct(mode)
        for p in written
        if (mode := stat.S_IMODE(p.stat().st_mode)) != (0o775 if p.is_dir() else 0o664)
    }
    assert wrong == {}


def test_operation_resources_are_its_rules_and_shown_on_its_jobs(project: Project) -> None:
    project.edit(
        "config/chains/basic.yaml", "input_path: inputs\noperations: [add_one.yaml, slow.yaml]\n"
    )
    project.edit("config/operations/slow.yaml", "type: myops:slow\n")  # mem_mb 1234, runtime 7
    dry = project.snakemake("-n", "--default-resources", "mem_mb=777", "runtime=3").stdout
    jobs = re.findall(r"^Job \d+: (.*)$", dry, re.M)
    assert len(jobs) == 4
    assert all(line.endswith("mem_mb=1234, runtime=7") for line in jobs if line.startswith("slow"))
    assert not any("mem_mb" in line for line in jobs if line.startswith("add"))
