"""Bad input gets one clear line (file, key, line), no traceback, and leaves no result behind."""

from __future__ import annotations

import pytest
from conftest import Project

CHAIN = "config/chains/basic.yaml"


def fails_cleanly(project: Project, *args: str) -> str:
    """Run a real snakemake that must refuse; return its one `opchain:` error line."""
    before = project.tree()
    result = project.snakemake(*args, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.startswith("opchain:")]
    assert len(lines) == 1, output
    assert project.tree() == before, "a refused run must not write into the storage root"
    return lines[0]


# Each kind of bad spec, config, input and user module, with the exact line it gets, is a case of
# tests/bad_inputs/cases.yaml (test_bad_inputs.py); these tests are about whole runs.


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry_run"])
def test_bad_spec_is_refused_by_a_real_run(project: Project, dry_run: bool) -> None:
    project.edit("config/operations/add_one.yaml", "type: myops:add\nparameters:\n  value: abc\n")
    line = fails_cleanly(project, *(["-n"] if dry_run else []))
    expected = "config/operations/add_one.yaml:3: parameters.value: 'abc' is not of type 'number'"
    assert line == f"opchain: {expected} (operation 'add')"


def test_required_parameter_of_a_builtin_is_refused_before_any_job(project: Project) -> None:
    """log1p without its matrix planned fine, then every job failed with a KeyError."""
    project.edit("config/operations/add_one.yaml", "type: log1p\n")
    line = fails_cleanly(project)
    assert line == (
        "opchain: config/operations/add_one.yaml:1: parameters: 'matrix' is a required property "
        "(operation 'log1p')"
    )
    assert not (project.root / "logs").exists()  # no job ran


def test_refused_run_leaves_earlier_results_untouched(project: Project) -> None:
    project.snakemake()
    project.edit("config/operations/jitter.yaml", "type: myops:jitter\nparameters: {scale: -}\n")
    assert "jitter.yaml:2: parameters.scale" in fails_cleanly(project)  # compares the whole tree


def test_symlink_out_of_the_storage_root_is_refused(project: Project) -> None:
    (project.storage / "elsewhere").symlink_to(project.root / "config")
    project.edit(CHAIN, "input_path: elsewhere\noperations: [add_one.yaml]\n")
    assert "'elsewhere' leaves the storage root" in fails_cleanly(project, "-n")


def test_corrupted_input_dataset_fails_its_job_and_leaves_no_result(project: Project) -> None:
    array = project.storage / "inputs" / "b" / "row,col#x.array"
    array.write_bytes(array.read_bytes()[:-5])  # truncated
    result = project.snakemake("--keep-going", check=False)
    assert result.returncode != 0
    failed = [
        log for log in project.root.glob("logs/*/*/*/batch_*.log") if "ERROR" in log.read_text()
    ]
    assert failed and all("row,col#x.array" in log.read_text() for log in failed)
    assert "Traceback" not in "".join(log.read_text() for log in failed)  # a data error, not a bug
    line = next(x for x in result.stderr.splitlines() if x.startswith("opchain:"))
    assert "/dataset_2: operation 'add' failed: DafError: " in line and "row,col#x.array" in line
    # Dataset a went through; dataset b's first step failed, so nothing of b exists downstream.
    results = sorted(p.name for p in project.storage.glob("operation_chain_results/*/*/dataset_*"))
    assert results and set(results) == {"dataset_1"}
    assert not list(project.storage.rglob(".dataset_*.tmp-*"))


def test_unknown_config_key_is_refused(project: Project) -> None:
    project.edit(
        "config/config.yaml",
        "storage: storage\nchains: [config/chains/basic.yaml]\ndataset_fromat: h5\n",
    )
    result = project.snakemake("-n", check=False)
    assert result.returncode != 0
    assert "dataset_fromat" in result.stdout + result.stderr
