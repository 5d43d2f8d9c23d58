"""The opchain command: status explains what would run, list shows results, the index rebuilds."""

from __future__ import annotations

import json
import shutil

from conftest import Project


def test_status_names_the_steps_that_would_run_and_why(project: Project) -> None:
    project.snakemake()
    fresh = json.loads(project.opchain("status", "--json").stdout)
    assert len(fresh) == 6 and {row["status"] for row in fresh} == {"up to date"}
    project.edit("config/operations/jitter.yaml", "type: myops:jitter\nparameters: {scale: 2.0}\n")
    before = project.tree()
    rows = json.loads(project.opchain("status", "--json").stdout)
    assert project.tree() == before  # status plans, but reserves and writes nothing
    stale = {(row["run"], row["step"]): row["why"] for row in rows if row["status"] == "will run"}
    assert set(stale) == {(0, 2), (0, 3), (1, 2), (1, 3)}
    assert "parameters changed" in stale[(0, 2)][0] and "2.0" in stale[(0, 2)][0]
    assert stale[(1, 3)] == ["an earlier step changed"]
    text = project.opchain("status").stdout
    assert "will run" in text and "up to date" in text


def test_list_shows_every_steps_directory(project: Project) -> None:
    project.snakemake()
    listing = project.opchain("list").stdout
    for run in project.manifest()["runs"]:
        for step in run["steps"]:
            assert step["dir"] in listing
    assert "(done)" in listing and "(missing)" not in listing


def test_rebuilt_index_finds_every_result_again(project: Project) -> None:
    project.snakemake()
    before = project.manifest()
    shutil.rmtree(project.storage / ".opchain")
    assert "index rebuilt: 5 steps" in project.opchain("index", "--rebuild").stdout
    result = project.snakemake()
    assert "Nothing to be done" in result.stdout + result.stderr
    assert project.manifest() == before


def test_user_error_is_one_line_without_traceback(project: Project) -> None:
    project.edit("config/operations/add_one.yaml", "type: nope\n")
    result = project.opchain("status", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "unknown operation 'nope'" in result.stderr
