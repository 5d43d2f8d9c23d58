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


@pytest.mark.parametrize(
    ("relative", "text", "expected"),
    [
        (
            CHAIN,
            "input_path: inputs\noperations:\n  - add.yaml\n   - bad: [\n",
            "config/chains/basic.yaml:4: malformed YAML",
        ),
        (
            "config/operations/add.yaml",
            "type: nope\nparameters: {value: 1}\n",
            "config/operations/add.yaml:1: type: unknown operation 'nope'",
        ),
        (
            "config/operations/add.yaml",
            "type: myops:missing\nparameters: {value: 1}\n",
            "config/operations/add.yaml:1: type: cannot load operation 'myops:missing'",
        ),
        (
            "config/operations/add_one.yaml",
            "type: myops:add\nparameters:\n  value: abc\n",
            "config/operations/add_one.yaml:3: parameters.value: 'abc' is not of type 'number'",
        ),
        (
            "config/operations/add_one.yaml",
            "type: myops:add\nparameters: {value: 1, valeu: 2}\n",
            "config/operations/add_one.yaml:2: parameters: Additional properties are not allowed",
        ),
        (
            "config/operations/add_one.yaml",
            "type: myops:add\nparameters: {}\n",
            "config/operations/add_one.yaml:2: parameters: 'value' is a required property",
        ),
        (
            "config/operations/add_one.yaml",
            "type: myops:add\nparameter_ranges: {value: 3}\n",
            "config/operations/add_one.yaml:2: parameter_ranges.value: a parameter range must be a non-empty list",
        ),
        (
            CHAIN,
            "input_path: inputs\noperations:\n  - add_one.yaml\n  - missing.yaml\n",
            "config/chains/basic.yaml:4: operations.1: no operation file 'missing.yaml'",
        ),
        (
            CHAIN,
            "input_path: inputs\nrunz: 2\noperations: [add_one.yaml]\n",
            "config/chains/basic.yaml:2: runz: unknown key",
        ),
        (
            CHAIN,
            "input_path: no_such_summary\noperations: [add_one.yaml]\n",
            "input_path 'no_such_summary' is not a folder under the storage root",
        ),
        (
            CHAIN,
            "input_path: ../../..\noperations: [add_one.yaml]\n",
            "'../../..' leaves the storage root",
        ),
        (CHAIN, "input_path: /etc\noperations: [add_one.yaml]\n", "'/etc' leaves the storage root"),
    ],
)
def test_bad_spec_is_refused_with_file_key_and_line(
    project: Project, relative: str, text: str, expected: str
) -> None:
    project.edit(relative, text)
    assert expected in fails_cleanly(project)
    assert expected in fails_cleanly(project, "-n")


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
