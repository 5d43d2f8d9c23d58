"""Snakemake's own commands on an opchain workflow, through real `snakemake` runs: every batch of
every step is in the DAG, finished or not, so inspection (--dag, --rulegraph, --summary,
--list-changes) and control (-R, -F, --until, --omit-from, --touch, --keep-going, --retries) act
on operations; a flag with no sensible meaning here stops with one line."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from conftest import Project
from slurm_cluster import ensure_packages
from test_batches import GRID, grid_project
from test_chains import job_counts, step_dirs

# The basic project: add(1) -> jitter -> add(10), 2 runs, 2 input datasets, one dataset a batch.
BATCHES = {"add": 2 + 2 * 2, "jitter": 2 * 2}


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def dot_nodes(dot: str) -> list[str]:
    """The rule of each node of a --dag or --rulegraph drawing."""
    return re.findall(r'\[label = "(\w+)', dot)


def test_after_a_complete_run_snakemake_sees_every_operation(project: Project) -> None:
    project.snakemake()
    assert "Nothing to be done" in output(project.snakemake("-n"))
    rules = project.snakemake("--rulegraph").stdout
    names = dict(re.findall(r'(\d+)\[label = "(\w+)"', rules))
    edges = {(names[a], names[b]) for a, b in re.findall(r"(\d+) -> (\d+)", rules)}
    assert {("add", "jitter"), ("jitter", "add"), ("add", "chain_manifest")} <= edges
    assert ("chain_manifest", "chain_report") in edges and ("chain_report", "all") in edges
    dag = dot_nodes(project.snakemake("--dag").stdout)
    assert {rule: dag.count(rule) for rule in BATCHES} == BATCHES  # one node per batch
    summary = [line.split("\t") for line in project.snakemake("--summary").stdout.splitlines()]
    batches = [row for row in summary[1:] if row[0].startswith(".opchain/jobs/")]
    assert sorted({row[2] for row in batches}) == ["add", "jitter"] and len(batches) == 10
    assert all(row[3].startswith("logs/") and row[4] == "ok" for row in batches)
    assert {row[2] for row in summary[1:]} >= {"chain_manifest", "chain_report"}


def test_a_chains_tables_wait_for_the_batches_no_other_batch_reads(project: Project) -> None:
    """A batch waits for, and reruns after, the batches it reads: the tables wait for every batch
    through the last step's, and a run's targets are the missing batches no missing batch reads
    (a deleted result of a middle step among them). --dag draws the chain as it runs."""

    def into(dot: str, rule: str) -> set[str]:
        labels = dict(re.findall(r'(\d+)\[label = "([^"]+)"', dot))
        edges = re.findall(r"(\d+) -> (\d+)", dot)
        return {labels[a] for a, b in edges if labels[b].startswith(rule)}

    last = {rf"add\nposition: basic/3_s{run}" for run in (0, 1)}
    first = project.snakemake("--dag").stdout
    assert into(first, "chain_manifest") == last
    assert into(first, "all") == last | {"chain_manifest\\nchain: basic", "chain_report"}
    project.snakemake()
    jitter = project.storage / project.manifest()["runs"][0]["steps"][1]["dir"]
    shutil.rmtree(jitter / "dataset_1")
    assert r"jitter\nposition: basic/2_s0" in into(project.snakemake("--dag").stdout, "all")
    assert job_counts(project.snakemake())["jitter"] == 1
    assert (jitter / "dataset_1" / "metadata.yaml").exists()


def test_forcerun_recomputes_an_operation_and_what_follows_into_new_directories(
    project: Project,
) -> None:
    project.snakemake()
    old = project.manifest()["runs"]
    old_dirs = step_dirs(project)
    x_before = {
        d: sorted(p.read_bytes() for p in (project.storage / d).rglob("*.array")) for d in old_dirs
    }
    assert job_counts(project.snakemake("-n", "-R", "jitter")) == {"jitter": 4, "add": 4}
    project.snakemake("-R", "jitter")
    new = project.manifest()["runs"]
    for before, after in zip(old, new, strict=True):
        assert after["steps"][0]["dir"] == before["steps"][0]["dir"]  # add(1) is upstream
        for b, a in zip(before["steps"][1:], after["steps"][1:], strict=True):
            assert a["dir"] != b["dir"] and a["fingerprint"] == b["fingerprint"]
            again = sorted(p.read_bytes() for p in (project.storage / a["dir"]).rglob("*.array"))
            assert again == x_before[b["dir"]]  # recomputed, byte-identical (same seed)
    assert old_dirs < step_dirs(project)  # the old directories stay until opchain gc
    assert "Nothing to be done" in output(project.snakemake("-n"))
    assert job_counts(project.snakemake("-n", "--forceall")) == BATCHES


def test_until_and_omit_from_stop_at_an_operation(project: Project) -> None:
    assert job_counts(project.snakemake("--omit-from", "jitter")) == {"add": 2}
    assert not list(project.storage.glob("operation_chain_results/*/chain.yaml"))
    assert job_counts(project.snakemake("--until", "jitter")) == {"jitter": 4}
    assert job_counts(project.snakemake()) == {"add": 4}  # only the last step was left


def test_list_changes_names_the_batches_whose_params_code_or_inputs_changed(
    project: Project,
) -> None:
    project.snakemake()
    project.edit("config/operations/jitter.yaml", "type: myops:jitter\nparameters: {scale: 2.0}\n")
    changed = project.snakemake("--list-changes", "params").stdout.split()
    assert ".opchain/chains/basic/chain.yaml" in changed  # the chain's steps changed too
    assert sorted(c for c in changed if c.startswith(".opchain/jobs/")) == sorted(
        f".opchain/jobs/{op}/basic/{pos}_s{run}/batch_{b}"
        for op, pos in (("jitter", 2), ("add", 3))
        for run in (0, 1)
        for b in (1, 2)
    )
    project.snakemake()
    # The operation's code hash is part of each batch's params (and of its step's fingerprint).
    myops = project.root / "myops.py"
    myops.write_text(myops.read_text().replace("x + noise", "noise + x"))
    code = project.snakemake("--list-changes", "params").stdout.split()
    assert sorted(c for c in code if c.startswith(".opchain/jobs/jitter/")) == sorted(
        f".opchain/jobs/jitter/basic/2_s{r}/batch_{b}" for r in (0, 1) for b in (1, 2)
    )
    assert not any(c.startswith(".opchain/jobs/add/basic/1/") for c in code)
    project.snakemake()
    # One batch for add(1) instead of two: the jitter batches of dataset 2 read another marker.
    project.edit(
        "config/operations/add_one.yaml", "type: myops:add\nbatch: 2\nparameters: {value: 1}\n"
    )
    inputs = project.snakemake("--list-changes", "input").stdout.split()
    assert ".opchain/chains/basic/chain.yaml" not in inputs  # it waits for the last step only
    assert sorted(i for i in inputs if i.startswith(".opchain/jobs/")) == [
        f".opchain/jobs/jitter/basic/2_s{r}/batch_2" for r in (0, 1)
    ]


def test_touch_marks_batches_done_only_where_their_results_exist(project: Project) -> None:
    project.snakemake()
    project.edit(
        "config/operations/add_one.yaml", "type: myops:add\nbatch: 2\nparameters: {value: 1}\n"
    )
    # The batch of add(1) changed its params, and what follows it would run too.
    assert job_counts(project.snakemake("-n")) == {"add": 5, "jitter": 4}
    before = project.tree()
    project.snakemake("--touch")
    assert project.tree() == before and "Nothing to be done" in output(project.snakemake("-n"))
    first = project.storage / project.manifest()["runs"][0]["steps"][0]["dir"]
    (first / "dataset_1" / "metadata.yaml").unlink()
    (first / "dataset_1").rename(first / "gone")
    refused = project.snakemake("--touch", check=False)
    assert refused.returncode != 0
    (line,) = [x for x in output(refused).splitlines() if x.startswith("opchain:")]
    assert "--touch would mark 1 batches done whose results do not exist" in line
    assert "Traceback" not in output(refused) and not (first / "dataset_1").exists()


def test_delete_all_output_stops_before_deleting_anything(project: Project) -> None:
    project.snakemake()
    before = {p for p in project.root.rglob("*") if ".snakemake" not in p.parts}
    for command in (["--delete-all-output"], ["--delete-all-output", "-n"]):
        refused = project.snakemake(*command, check=False)
        assert refused.returncode != 0 and "Traceback" not in output(refused)
        (line,) = [x for x in output(refused).splitlines() if x.startswith("opchain:")]
        assert "opchain gc" in line
    assert {p for p in project.root.rglob("*") if ".snakemake" not in p.parts} == before


def test_keep_going_finishes_the_chains_a_failure_does_not_touch(project: Project) -> None:
    project.edit("config/operations/boom.yaml", "type: myops:boom\n")
    project.edit("config/chains/bad.yaml", "input_path: inputs\noperations: [boom.yaml]\n")
    project.edit(
        "config/config.yaml",
        "storage: storage\nchains: [config/chains/bad.yaml, config/chains/basic.yaml]\n",
    )
    result = project.snakemake("--keep-going", "--cores", "1", check=False)
    assert result.returncode != 0 and "ZeroDivisionError" in output(result)
    tables = project.root / ".opchain" / "chains"
    assert (tables / "basic" / "results.csv").is_file() and not (tables / "bad").exists()


def test_retries_run_a_failed_batch_again(project: Project) -> None:
    project.edit("config/operations/flaky.yaml", "type: myops:flaky\nbatch: 2\n")
    project.edit("config/chains/basic.yaml", "input_path: inputs\noperations: [flaky.yaml]\n")
    env = {**project.env(), "FLAKY_DIR": str(project.root)}
    failed = project.snakemake(check=False, env=env)
    assert failed.returncode != 0 and "the first attempt fails" in output(failed)
    (project.root / "attempted").unlink()
    project.snakemake("--retries", "1", env=env)
    (step,) = {s["dir"] for s in project.manifest()["runs"][0]["steps"]}
    assert sorted(p.name for p in (project.storage / step).glob("dataset_*")) == [
        "dataset_1",
        "dataset_2",
    ]


def test_no_line_grows_with_the_sweep(tmp_path: Path) -> None:
    """10,000 datasets a step in 100 batches (50 cores: two jobs each): job lines, reasons and
    inputs stay under 1,000 characters (a job that waits for many batches waits through gather
    jobs), and --dag draws a node per batch."""
    project = grid_project(tmp_path / "p", list(range(5000)))
    dry = output(project.snakemake("-n", "--cores", "50"))
    assert job_counts(project.snakemake("-n", "--cores", "50")) == {"add": 100, "jitter": 100}
    assert max(map(len, dry.splitlines())) < 1000
    dag = dot_nodes(project.snakemake("--dag", "--cores", "50").stdout)
    assert dag.count("add") == dag.count("jitter") == 100
    assert 0 < dag.count("gather") < 40


def test_a_step_deleted_twice_is_recomputed_twice(tmp_path: Path) -> None:
    """Many missing batches are gathered for the run that makes them; the same set missing again
    later is gathered again, not found done."""
    values = list(range(12))  # 24 batches of one dataset (jitter after it: auto)
    project = grid_project(tmp_path / "p", values)
    project.edit(GRID, f"type: myops:add\nbatch: 1\nparameter_ranges: {{value: {values}}}\n")
    project.snakemake()
    step = project.storage / project.manifest()["runs"][0]["steps"][0]["dir"]
    for _ in range(2):
        shutil.rmtree(step)
        planned = project.snakemake("-n")
        # 24 markers are more than a job's line of inputs: they are gathered.
        assert job_counts(planned)["add"] == 24
        assert re.search(r"^gather\s+\d+$", planned.stdout + planned.stderr, re.M)
        project.snakemake()
        assert len(list(step.glob("dataset_*/metadata.yaml"))) == 24


PENDING_TIMERS = """
import sys, threading
from snakemake.cli import main
sys.argv = ["snakemake", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
timers = [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
print("pending timers:", sum(not t.finished.is_set() for t in timers))
"""


def test_a_finished_run_leaves_no_timer_to_wait_for(project: Project) -> None:
    """Snakemake's scheduler arms a one-second timer on every pass and its process waits for them
    before exiting; the workflow cancels them when the run succeeds or fails, so the command
    returns when the run is over."""
    command = project.snakemake_command()
    python = [command[0], "-c", PENDING_TIMERS, *command[3:]]
    assert "pending timers: 0" in project._run(python, True, None).stdout
    project.edit("config/operations/add_one.yaml", "type: myops:boom\n")
    failed = project._run(python, True, None)
    assert "pending timers: 0" in failed.stdout and "Error" in failed.stderr


EXIT_SEARCH = """
import atexit, gc, sys
from snakemake.cli import main
atexit.register(lambda: print(
    "searched at exit:", len(gc.get_objects()), "of", len(gc.get_objects()) + gc.get_freeze_count()
))
sys.argv = ["snakemake", *sys.argv[1:]]
main()
"""


def test_the_exit_of_a_run_searches_little_for_reference_cycles(project: Project) -> None:
    """Python's exit searches every object it tracks for reference cycles: after Snakemake's and
    opchain's imports ~0.3 s, a fifth of a no-op rerun. What planning made, and what the run
    added once it is over, is frozen out of that search (it lives until the exit anyway)."""
    command = project.snakemake_command()
    python = [command[0], "-c", EXIT_SEARCH, *command[3:]]
    for run in ("a run", "a no-op rerun"):
        found = re.search(
            r"searched at exit: (\d+) of (\d+)", project._run(python, True, None).stdout
        )
        assert found is not None, run
        searched, tracked = map(int, found.groups())
        assert tracked > 10_000 and searched < tracked / 20, (run, searched, tracked)


def test_tables_and_reports_are_made_in_snakemakes_own_process(project: Project) -> None:
    """A run starts an interpreter for each operation job only: the chains' tables and reports
    (`run:` of local rules, in Snakemake's threads) start none, and no second `snakemake` that
    would plan the workflow again."""
    ensure_packages(["strace"], lambda: shutil.which("strace") is not None)
    trace = project.root / "trace" / "exec"  # -ff: a file per process, no call split in two
    trace.parent.mkdir()
    command = ["strace", "-ff", "-qq", "-s", "256", "-e", "trace=execve", "-e", "signal=none",
               "-o", str(trace), *project.snakemake_command()]  # fmt: skip
    subprocess.run(command, cwd=project.root, env=project.env(), check=True, capture_output=True)
    text = "".join(path.read_text() for path in sorted(trace.parent.iterdir()))
    started = re.findall(r'^execve\("([^"]*)", \[([^]]*)\].* = 0$', text, re.MULTILINE)
    pythons = [argv for program, argv in started if "python" in Path(program).name]
    snakemakes = [argv for argv in pythons if '"-m", "snakemake"' in argv]
    jobs = [argv for argv in pythons if '"-m", "opchain.run"' in argv]
    assert len(snakemakes) == 1 and len(jobs) == sum(BATCHES.values())
    assert len(pythons) == 1 + len(jobs), pythons  # nothing else
    assert (project.root / ".opchain" / "chains" / "basic" / "results.csv").is_file()
    assert (project.root / "reports" / "basic" / "results.html").is_file()
