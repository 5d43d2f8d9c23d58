"""The opchain command: status explains what would run, list shows results, the index rebuilds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from conftest import Project

import opchain


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
    assert stale[(0, 2)] == ["parameters changed: scale: 0.5 -> 2.0"]
    assert stale[(1, 3)] == ["an earlier step changed"]
    text = project.opchain("status").stdout
    assert "will run" in text and "up to date" in text
    assert "names are given when the run starts" in text.splitlines()[0]
    # A grid that grows says which values each key takes.
    project.edit(
        "config/operations/jitter.yaml", "type: myops:jitter\nparameter_ranges: {scale: [0.5, 1]}\n"
    )
    rows = json.loads(project.opchain("status", "--json").stdout)
    assert rows[1]["why"] == ["parameters changed: scale: [0.5] -> [0.5, 1]"]


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


def test_run_passes_every_other_argument_to_snakemake(project: Project) -> None:
    for args in (["run", "-n"], ["run", "--", "-n"], ["run", "-n", "--cores", "1"]):
        result = project.opchain(*args)
        assert "This was a dry-run" in result.stdout + result.stderr, args
    assert not (project.storage / "operation_chain_results").exists()
    one = project.opchain("run-op", "config/operations/add_one.yaml", "inputs", "-n")
    assert "This was a dry-run" in one.stdout + one.stderr
    refused = project.opchain("status", "-n", check=False)
    assert refused.returncode == 2 and "unrecognized arguments: -n" in refused.stderr


def test_version_and_index_summary(project: Project) -> None:
    assert project.opchain("--version").stdout.strip() == f"opchain {opchain.__version__}"
    project.snakemake()
    summary = project.opchain("index").stdout
    assert summary.strip().endswith("1 chains, 5 steps, 10 datasets, 6 names"), summary


def test_a_closed_pipe_ends_the_command_quietly(project: Project) -> None:
    """`opchain status --json | head -1`: the reader goes away before opchain writes."""
    project.snakemake()
    for args in (["status", "--json"], ["list"]):
        reader_gone = subprocess.Popen(
            [sys.executable, "-m", "opchain", *args], cwd=project.root, env=project.env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        reader_gone.stdout.close()
        assert "Traceback" not in reader_gone.stderr.read()
        assert reader_gone.wait() in (0, -13)  # done, or ended by SIGPIPE as `cat` would be


def test_help_is_plain_text(project: Project) -> None:
    text = project.opchain("--help").stdout
    assert "``" not in text and "compare results" in text


def test_a_damaged_index_is_rebuilt_without_planning(project: Project) -> None:
    """A zero-byte or corrupt entry stops planning with a line that says to rebuild; the rebuild
    itself must not plan (it would stop the same way), and afterwards nothing is left to do."""
    project.snakemake()
    entry = next((project.storage / ".opchain" / "steps").iterdir())
    entry.write_bytes(b"")
    (project.storage / ".opchain" / "chains" / "basic").write_text("{not json")
    refused = project.opchain("status", check=False)
    assert refused.returncode == 1 and "run 'opchain index --rebuild'" in refused.stderr
    assert "index rebuilt: 5 steps" in project.opchain("index", "--rebuild").stdout
    again = project.snakemake()
    assert "Nothing to be done" in again.stdout + again.stderr
