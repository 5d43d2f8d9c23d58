"""Batched jobs and per-point reuse, through real `snakemake` runs.

A job computes a batch of result datasets of one step; a grid point computed once is hard-linked
into any later grid that contains it. Nothing a user sees changes with the batch size: the seed
layout, one metadata.yaml per dataset, byte-identical arrays, kill safety per dataset.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import yaml
from conftest import REPO, Project, make_project
from test_chains import job_count, job_counts, x_of

from opchain.table import dump_yaml
from opchain.verify import without_digests

GRID = "config/operations/grid.yaml"


def grid_project(root: Path, values: list[int], *, batch: int | str = "auto") -> Project:
    """add(grid of values) -> jitter, one run, on the two inputs."""
    project = make_project(root)
    project.edit(GRID, f"type: myops:add\nparameter_ranges: {{value: {values}}}\n")
    project.edit(
        "config/chains/basic.yaml",
        "input_path: inputs\nruns: 1\noperations: [grid.yaml, jitter.yaml]\n",
    )
    project.edit(
        "config/config.yaml",
        f"storage: storage\nbatch: {batch}\nchains: [config/chains/basic.yaml]\n",
    )
    return project


def arrays(project: Project) -> dict[str, bytes]:
    """Every array file of every step, keyed by step position and dataset (not by names)."""
    found = {}
    for i, step in enumerate(project.manifest()["runs"][0]["steps"]):
        for path in sorted((project.storage / step["dir"]).glob("dataset_*/*.array")):
            found[f"{i}/{path.parent.name}/{path.name}"] = path.read_bytes()
    return found


def metadata(dataset: Path) -> dict:
    return yaml.safe_load((dataset / "metadata.yaml").read_text())


def test_batch_sizes_give_byte_identical_results(tmp_path: Path) -> None:
    values = list(range(1, 11))  # 10 settings x 2 inputs = 20 datasets per step
    results, jobs = {}, {}
    for batch in ("auto", 1, 7):
        project = grid_project(tmp_path / str(batch), values, batch=batch)
        jobs[batch] = job_counts(project.snakemake())
        results[batch] = arrays(project)
        step = project.storage / project.manifest()["runs"][0]["steps"][0]["dir"]
        assert sorted(int(p.name[8:]) for p in step.glob("dataset_*")) == list(range(1, 21))
        assert len(list(step.glob("dataset_*/metadata.yaml"))) == 20
    # auto: 20 cheap datasets are less work than a second job's start-up is worth: one job;
    # 1: one job per dataset; 7: as set (the last batch of 6).
    assert jobs == {
        "auto": {"add": 1, "jitter": 1},
        1: {"add": 20, "jitter": 20},
        7: {"add": 3, "jitter": 3},
    }
    assert len(results["auto"]) == 40
    assert results["auto"] == results[1] == results[7]


def test_a_batch_writes_what_jobs_of_one_write_and_links_what_it_carries(tmp_path: Path) -> None:
    """normalize over the shipped cells data: a job of 5 datasets (its input read and checked
    once, then reopened) writes every file byte for byte as 5 jobs of one dataset do; what a
    result carries unchanged (axes, vectors and their sidecars, the sparse structure, the
    header) is hard links of the input's files, and `opchain verify` finds every result intact."""
    found = {}
    for batch in (1, 5):
        project = grid_project(tmp_path / str(batch), [], batch=batch)
        cells = REPO / "storage" / "example_data" / "cells"
        shutil.copytree(cells, project.storage / "example_data" / "cells")
        project.edit(GRID, "type: normalize\nparameter_ranges: {matrix: ['cell,gene#UMIs'], "
                     "target_sum: [10, 100, 1000, 10000, 100000]}\n")  # fmt: skip
        project.edit(
            "config/chains/basic.yaml", "input_path: example_data/cells\noperations: [grid.yaml]\n"
        )
        assert job_counts(project.snakemake()) == {"normalize": 5 // batch}
        step = project.storage / project.manifest()["runs"][0]["steps"][0]["dir"]
        found[batch] = {
            f"{path.parent.name}/{path.name}": path.read_bytes()
            for path in sorted(step.glob("dataset_*/*"))
            if path.name != "metadata.yaml"  # its times and costs differ
        }
        assert ", 0 damaged" in project.opchain("verify").stdout  # exit status 0 too
    assert found[1] == found[5] and len(found[5]) == 5 * 29
    source = project.storage / "example_data" / "cells" / "daf_example"
    linked = {
        path.name
        for path in (step / "dataset_3").iterdir()
        if (source / path.name).exists()
        and path.stat().st_ino == (source / path.name).stat().st_ino
    }
    carried = {key.split("/")[1] for key in found[5] if key.startswith("dataset_3/")}
    assert linked == carried - {"cell,gene#UMIs.data", "input_metadata.yaml"}


def test_a_large_grid_plans_two_jobs_per_core_of_at_most_1000_datasets(tmp_path: Path) -> None:
    project = grid_project(tmp_path / "p", list(range(1500)))
    # 3,000 datasets per step of no recorded cost (~180 s of work at 60 ms each): two jobs for
    # each job Snakemake may run at once, no more (each pays a start-up), but at most 1,000
    # datasets a job; the command lines stay short (the spec is a file).
    for cores, jobs in (("1", 3), ("2", 4), ("8", 16)):
        dry = project.snakemake("-n", "--cores", cores)
        assert job_counts(dry) == {"add": jobs, "jitter": jobs}
    commands = [line for line in dry.stdout.splitlines() if "-m opchain.run" in line]
    assert len(commands) == 32 and max(map(len, commands)) < 400


def test_an_operation_file_sets_its_own_batch(tmp_path: Path) -> None:
    project = grid_project(tmp_path / "p", [1, 2, 3, 4], batch=1)
    project.edit(GRID, "type: myops:add\nbatch: 8\nparameter_ranges: {value: [1, 2, 3, 4]}\n")
    assert job_counts(project.snakemake("-n")) == {"add": 1, "jitter": 8}


def test_extending_a_grid_computes_only_the_new_points(tmp_path: Path) -> None:
    project = grid_project(tmp_path / "p", [10, 20, 30])
    project.snakemake()
    first = project.manifest()["runs"][0]["steps"]
    # Extend and reorder: 30 and 10 were computed, 40 and 50 are new.
    project.edit(GRID, "type: myops:add\nparameter_ranges: {value: [30, 40, 10, 50]}\n")
    project.snakemake()
    steps = project.manifest()["runs"][0]["steps"]
    assert all(a["dir"] != b["dir"] for a, b in zip(first, steps, strict=True))  # new directories
    for position in (0, 1):  # the grid step and the (random) step after it
        step = project.storage / steps[position]["dir"]
        datasets = sorted(step.glob("dataset_*"), key=lambda p: int(p.name[8:]))
        assert len(datasets) == 8  # the seed layout: dataset_1..8, each with its metadata
        reused = {p.name: metadata(p).get("computed_in") for p in datasets}
        # k = input * 4 + setting + 1: settings 30 and 10 are points 1 and 3 of each input.
        old = project.storage / first[position]["dir"]
        assert {k for k, v in reused.items() if v} == {
            "dataset_1",
            "dataset_3",
            "dataset_5",
            "dataset_7",
        }
        assert all(
            v is None or v.startswith(old.relative_to(project.storage).as_posix())
            for v in reused.values()
        )
        log = (step / "operation.log").read_text()
        assert log.count("linked") == 4 and log.count(" done: ") == 4  # only 4 points ran
        # No array bytes copied: the reused files are hard links of the earlier ones.
        linked = next(step.glob("dataset_1/*.array"))
        assert linked.stat().st_nlink == 2
    # Byte-identical to a fresh computation of the new grid.
    fresh = grid_project(tmp_path / "fresh", [30, 40, 10, 50])
    fresh.snakemake()
    assert arrays(project) == arrays(fresh)
    # Shrinking computes nothing: every point of [10, 40] exists.
    project.edit(GRID, "type: myops:add\nparameter_ranges: {value: [10, 40]}\n")
    project.snakemake()
    step = project.storage / project.manifest()["runs"][0]["steps"][0]["dir"]
    assert " done: " not in (step / "operation.log").read_text()
    np.testing.assert_array_equal(x_of(step / "dataset_2"), np.arange(12.0).reshape(4, 3) + 40)


def step_dirs_of(project: Project) -> list[Path]:
    return [project.storage / s["dir"] for s in project.manifest()["runs"][0]["steps"]]


def nothing_to_do(project: Project) -> bool:
    result = project.snakemake()
    return "Nothing to be done" in result.stdout + result.stderr


def test_a_small_sweep_of_a_cheap_operation_is_one_job_and_stays_so(tmp_path: Path) -> None:
    project = grid_project(tmp_path / "p", list(range(10)))  # 20 datasets a step
    # The dry run proposes the batches the real run records with the step, and every later
    # run cuts: the same markers and params, so nothing reruns.
    assert job_counts(project.snakemake("-n")) == {"add": 1, "jitter": 1}
    assert job_counts(project.snakemake()) == {"add": 1, "jitter": 1}
    for step in project.manifest()["runs"][0]["steps"]:
        entry = json.loads(
            (project.storage / ".opchain" / "steps" / step["fingerprint"]).read_text()
        )
        assert entry["batch"] == 20
    assert nothing_to_do(project)
    # An explicit batch still wins.
    project.edit(
        "config/config.yaml", "storage: storage\nbatch: 5\nchains: [config/chains/basic.yaml]\n"
    )
    assert job_counts(project.snakemake("-n")) == {"add": 4, "jitter": 4}


def test_growing_a_grid_by_one_computes_only_it_and_links_the_rest(tmp_path: Path) -> None:
    values = list(range(1, 21))
    project = grid_project(tmp_path / "p", values)
    project.snakemake()
    before = arrays(project)
    scores = {p.name: metadata(p)["results"] for p in step_dirs_of(project)[1].glob("dataset_*")}
    project.edit(GRID, f"type: myops:add\nparameter_ranges: {{value: {[*values, 21]}}}\n")
    # The grown steps are mostly links: one job each, not a job per few datasets.
    assert job_counts(project.snakemake()) == {"add": 1, "jitter": 1}
    for step in step_dirs_of(project):
        log = (step / "operation.log").read_text()
        assert log.count(" done: ") == 2 and log.count(": linked") == 40  # 1 point x 2 inputs
    after = arrays(project)
    for key, data in before.items():  # dataset_k of 20 settings is dataset_k' of 21
        position, name, file = key.split("/")
        i, j = divmod(int(name.removeprefix("dataset_")) - 1, 20)
        assert after[f"{position}/dataset_{i * 21 + j + 1}/{file}"] == data
    jitter = step_dirs_of(project)[1]
    for name, results in scores.items():
        i, j = divmod(int(name.removeprefix("dataset_")) - 1, 20)
        linked = metadata(jitter / f"dataset_{i * 21 + j + 1}")
        assert linked["results"] == results and linked["computed_in"]
        assert linked["output"] == jitter.relative_to(project.storage).as_posix() + (
            f"/dataset_{i * 21 + j + 1}"
        )
        # Written in the form of a computed result's, which tables read without libyaml.
        text = without_digests((jitter / f"dataset_{i * 21 + j + 1}/metadata.yaml").read_text())
        assert dump_yaml(yaml.safe_load(text)) == text
    verified = project.opchain("verify").stdout
    assert " intact, 0 damaged" in verified and "unverifiable" not in verified
    assert nothing_to_do(project)
    # A forced rerun still computes every point afresh, into new directories.
    project.snakemake("-R", "add")
    for step in step_dirs_of(project):
        log = (step / "operation.log").read_text()
        assert log.count(" done: ") == 42 and "linked" not in log


def test_recorded_costs_keep_a_heavy_grown_grid_on_many_jobs(tmp_path: Path) -> None:
    project = grid_project(tmp_path / "p", [1, 2, 3, 4])  # 8 datasets a step
    project.snakemake()
    # As if each point had taken 3 s: the 8 new points of the grown grid are ~24 s of work.
    for meta in project.storage.glob("operation_chain_results/*/*/dataset_*/metadata.yaml"):
        meta.write_text(re.sub(r"wall_seconds: [0-9.]+", "wall_seconds: 3.0", meta.read_text()))
    project.edit(GRID, "type: myops:add\nparameter_ranges: {value: [1, 2, 3, 4, 5, 6, 7, 8]}\n")
    # 12 jobs of 2 s would hold that work: with 8 cores (16 jobs at most), 16 datasets cut in
    # batches of 2, 8 jobs a step; with 2 cores, 4 jobs (two a core).
    assert job_counts(project.snakemake("-n", "--cores", "8")) == {"add": 8, "jitter": 8}
    assert job_counts(project.snakemake("-n")) == {"add": 4, "jitter": 4}
    # Decided once: the run records its batches; a later run with more cores cuts the same ones.
    project.snakemake()
    summary = project.snakemake("--summary", "--cores", "8").stdout
    markers = re.findall(r"\.opchain/jobs/(\w+)/\S+/batch_\d+", summary)
    assert sorted(markers) == ["add"] * 4 + ["jitter"] * 4


def test_editing_an_upstream_step_reruns_everything_below_it(tmp_path: Path) -> None:
    project = grid_project(tmp_path / "p", [10, 20])
    project.edit(
        "config/chains/basic.yaml",
        "input_path: inputs\nruns: 1\noperations: [add_one.yaml, grid.yaml, jitter.yaml]\n",
    )
    project.snakemake()
    project.edit("config/operations/add_one.yaml", "type: myops:add\nparameters: {value: 2}\n")
    project.snakemake()
    for step in project.manifest()["runs"][0]["steps"]:
        step_dir = project.storage / step["dir"]
        assert not [p for p in step_dir.glob("dataset_*") if metadata(p).get("computed_in")]
        assert "linked" not in (step_dir / "operation.log").read_text()


def test_a_killed_batch_keeps_its_finished_datasets(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    project.edit(
        "config/chains/basic.yaml", "input_path: inputs\nruns: 1\noperations: [slow.yaml]\n"
    )
    project.edit(
        "config/operations/slow.yaml",
        "type: myops:slow\nbatch: 8\nparameter_ranges: {seconds: [0, 0.01, 0.02, 60]}\n",
    )
    process = project.start_snakemake()
    finished = "operation_chain_results/*/*/dataset_*/metadata.yaml"
    deadline = time.time() + 120
    # One job computes all 8 datasets in order; dataset_4 sleeps: kill it there.
    while len(list(project.storage.glob(finished))) < 3:
        assert time.time() < deadline and process.poll() is None, "the batch never started"
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = {p.parent: p.read_text() for p in project.storage.glob(finished)}
    assert sorted(p.name for p in done) == ["dataset_1", "dataset_2", "dataset_3"]
    project.snakemake("--unlock")
    result = project.snakemake(env={**project.env(), "SLOW_SECONDS": "0"})
    assert job_count(result) == 1
    assert {p: (p / "metadata.yaml").read_text() for p in done} == done  # kept, not redone
    step = next(iter(done)).parent
    assert len(list(step.glob("dataset_*/metadata.yaml"))) == 8
    assert not list(project.storage.rglob(".dataset_*.tmp-*"))
    log = (step / "operation.log").read_text()
    assert all(log.count(f"dataset_{k} INFO slow") == 1 for k in range(1, 9) if k != 4)


def test_a_deleted_result_is_recomputed_alone(tmp_path: Path) -> None:
    project = grid_project(tmp_path / "p", [10, 20])
    project.snakemake()
    step = project.storage / project.manifest()["runs"][0]["steps"][1]["dir"]
    before = {p.name: metadata(p)["started"] for p in step.glob("dataset_*")}
    shutil.rmtree(step / "dataset_3")
    status = project.opchain("status").stdout
    assert re.search(r"jitter +will run .*\(result missing\)", status)
    assert job_counts(project.snakemake("-n")) == {"jitter": 1}
    project.snakemake()
    after = {p.name: metadata(p)["started"] for p in step.glob("dataset_*")}
    assert after.keys() == before.keys() and after["dataset_3"] != before["dataset_3"]
    assert {k: v for k, v in after.items() if k != "dataset_3"} == {
        k: v for k, v in before.items() if k != "dataset_3"
    }
    again = project.snakemake()
    assert "Nothing to be done" in again.stdout + again.stderr


def test_a_job_computes_as_many_datasets_at_once_as_its_threads(tmp_path: Path) -> None:
    """--set-threads OP=N (or an operation's resources threads, or SLURM's CPUs) gives each job N
    processes: its datasets are computed side by side, each still written whole with its own
    metadata, and the results are byte-identical at any thread count."""
    results = {}
    for threads in (1, 2, 4):
        project = grid_project(tmp_path / f"t{threads}", [10, 20, 30, 40], batch=8)
        set_threads = ["--set-threads", f"add={threads}", f"jitter={threads}", "--cores", "4"]
        assert job_counts(project.snakemake(*set_threads)) == {"add": 1, "jitter": 1}
        results[threads] = arrays(project)
    assert results[1] == results[2] == results[4] and len(results[1]) == 2 * 8
    project = make_project(tmp_path / "slow")
    project.edit("config/chains/basic.yaml", "input_path: inputs\noperations: [slow.yaml]\n")
    project.edit(
        "config/operations/slow.yaml",
        "type: myops:slow\nbatch: 4\nparameter_ranges: {seconds: [1, 1]}\n",
    )
    project.snakemake("--set-threads", "slow=4", "--cores", "4")
    step = project.storage / project.manifest()["runs"][0]["steps"][0]["dir"]
    metas = list(map(metadata, step.glob("dataset_*")))
    spans = sorted((m["started"], m["finished"]) for m in metas)
    assert len(spans) == 4
    # Each sleeps a second; computed one after another, each would start after the last ended.
    assert all(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))
    assert [m["results"]["threads"] for m in metas] == [1] * 4  # a core each


def test_a_job_with_fewer_datasets_than_threads_gives_them_the_rest(tmp_path: Path) -> None:
    """Threads no other dataset takes go to a dataset's own arithmetic: 4 threads for one
    dataset are its 4, for two datasets 2 each."""
    project = make_project(tmp_path / "p")
    project.edit("config/chains/basic.yaml", "input_path: inputs\noperations: [slow.yaml]\n")
    for batch, threads, seconds in ((1, 4, "[0, 0.01]"), (2, 2, "[0.02, 0.03]")):  # new points
        project.edit(
            "config/operations/slow.yaml",
            f"type: myops:slow\nbatch: {batch}\nparameter_ranges: {{seconds: {seconds}}}\n",
        )
        project.snakemake("--set-threads", "slow=4", "--cores", "4")
        step = project.storage / project.manifest()["runs"][0]["steps"][0]["dir"]
        given = [metadata(d)["results"]["threads"] for d in sorted(step.glob("dataset_*"))]
        assert given == [threads] * 4  # 2 inputs x 2 settings
