"""What a user sees when a job or a plan goes wrong: one `opchain:` line, the traceback of a bug in
the job's log, nothing partial left behind. Real `snakemake` runs."""

from __future__ import annotations

import re

from conftest import Project

CHAIN = "config/chains/basic.yaml"


def opchain_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("opchain:")]


def test_an_operation_that_raises_names_step_dataset_and_error(project: Project) -> None:
    project.edit("config/operations/boom.yaml", "type: myops:boom\n")
    project.edit(CHAIN, "input_path: inputs\noperations: [boom.yaml]\n")
    result = project.snakemake(check=False)
    assert result.returncode != 0
    (line, *_) = opchain_lines(result.stderr)
    found = re.fullmatch(
        r"opchain: operation_chain_results/\S+/dataset_\d: operation 'boom' failed: "
        r"ZeroDivisionError: division by zero \(traceback in (logs/boom/\S+\.log)\)",
        line,
    )
    assert found, line
    log = (project.root / found.group(1)).read_text()
    assert "Traceback (most recent call last)" in log and "return 1 / 0" in log
    assert not list(project.storage.glob("operation_chain_results/*/*/dataset_*"))
    assert not list(project.storage.rglob("*.tmp-*"))


def test_a_plan_too_large_is_refused_before_it_is_built(project: Project) -> None:
    project.edit(CHAIN, "input_path: inputs\nruns: 1000000000\noperations: [add_one.yaml]\n")
    before = project.tree()
    result = project.snakemake("-n", check=False)
    assert result.returncode != 0
    assert opchain_lines(result.stderr) == [
        "opchain: config/chains/basic.yaml: the plan has 2,000,000,000 result datasets "
        "(runs: 1000000000, 2 input datasets, grids of 1 settings), more than max_datasets: "
        "1,000,000 (raise it in the config if you mean it)"
    ]
    assert project.tree() == before


def test_a_summary_of_links_out_of_the_root_says_what_was_skipped(project: Project) -> None:
    (project.storage / "outside").mkdir()
    (project.storage / "outside" / "x").symlink_to(project.root / "config")
    project.edit(CHAIN, "input_path: outside\noperations: [add_one.yaml]\n")
    result = project.snakemake("-n", check=False)
    assert opchain_lines(result.stderr) == [
        "opchain: config/chains/basic.yaml: input_path 'outside' holds no datasets (daf folders "
        "or .h5 files); skipped outside/x (a symlink leaving the storage root)"
    ]
