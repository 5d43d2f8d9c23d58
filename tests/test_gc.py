"""`opchain list --all` and `opchain gc` on the results of real runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import Project

from opchain.table import name_time

JITTER_2 = "type: myops:jitter\nparameters: {scale: 2.0}\n"


@pytest.fixture
def edited(project: Project) -> tuple[Project, set[str], set[str]]:
    """The basic chain run, its jitter scale edited and run again: the old jitter and add steps
    of both runs are left unused. Returns the project, the used and the unused step dirs."""
    project.snakemake()
    old = {s["dir"] for run in project.manifest()["runs"] for s in run["steps"]}
    project.edit("config/operations/jitter.yaml", JITTER_2)
    project.snakemake()
    used = {s["dir"] for run in project.manifest()["runs"] for s in run["steps"]}
    assert len(old - used) == 4 and len(used) == 5
    return project, used, old - used


def listing(project: Project) -> dict[str, list[str]]:
    rows = [line.split("  ") for line in project.opchain("list", "--all").stdout.splitlines()]
    return {row[0]: row[1:] for row in rows}


def tree(project: Project, dirs: set[str]) -> dict[str, int]:
    return {
        k: v for k, v in project.tree().items() if any(f"{k}/".startswith(f"{d}/") for d in dirs)
    }


def test_list_all_shows_every_result_dir_with_use_and_versions(edited) -> None:
    project, used, unused = edited
    rows = listing(project)
    assert set(rows) == used | unused
    first, second = sorted(
        (project.chain_dir() / "history").glob("*.yaml"), key=lambda p: name_time(p.stem)
    )
    before = {s["dir"] for run in yaml.safe_load(first.read_text())["runs"] for s in run["steps"]}
    for path, (size, state, chains) in rows.items():
        assert state == ("used" if path in used else "unused")
        assert size.split()[1] in ("B", "KiB") and float(size.split()[0]) > 0
        assert (f"basic@{first.stem}" in chains) == (path in before)
        assert (f"basic@{second.stem}" in chains) == (path in used)
    order = [name_time(Path(path).name) for path in rows]
    assert order == sorted(order)  # by time, not by text (names are not zero-padded)


def test_gc_removes_only_what_no_current_chain_uses(edited) -> None:
    project, used, unused = edited
    kept = tree(project, used)
    index = project.storage / ".opchain"
    entries = {p.name: json.loads(p.read_text())["dir"] for p in (index / "steps").iterdir()}
    names = sorted(p.name for p in (index / "names").iterdir())

    dry = project.opchain("gc", "--dry-run").stdout
    assert {line.split()[-1] for line in dry.splitlines()[:-1]} == unused
    assert all((project.storage / d).is_dir() for d in unused)

    out = project.opchain("gc").stdout
    assert {line.split()[1] for line in out.splitlines()[:-1]} == unused
    assert out.splitlines()[-1].startswith("removed 4 result directories, ")
    assert "KiB freed" in out.splitlines()[-1]
    assert not any((project.storage / d).exists() for d in unused)
    assert tree(project, used) == kept  # not a byte or an mtime of what the chain uses changed
    assert {json.loads(p.read_text())["dir"] for p in (index / "steps").iterdir()} == {
        d for d in entries.values() if d in used
    }
    assert sorted(p.name for p in (index / "names").iterdir()) == names  # names never reused
    assert "Nothing to be done" in project.snakemake("-n").stdout

    # Back to the old setting: recomputed, into new directories.
    project.edit("config/operations/jitter.yaml", "type: myops:jitter\nparameters: {scale: 0.5}\n")
    project.snakemake()
    again = {s["dir"] for run in project.manifest()["runs"] for s in run["steps"]}
    assert len(again - used) == 4 and not again & unused


def test_gc_never_breaks_a_hard_linked_dataset(edited) -> None:
    project, used, unused = edited
    old = sorted(unused)[0]
    # As a reused dataset is a hard link of an earlier computation (metadata computed_in).
    linked = project.storage / sorted(used)[-1] / "dataset_1" / "linked_copy"
    source = next(p for p in (project.storage / old / "dataset_1").rglob("*") if p.is_file())
    os.link(source, linked)
    before = linked.read_bytes()
    project.opchain("gc")
    assert linked.read_bytes() == before and linked.stat().st_nlink == 1


def test_gc_keep_last_and_older_than(edited) -> None:
    project, _, unused = edited
    assert "removed 0 result directories" in project.opchain("gc", "--older-than", "1").stdout
    newest = max(unused, key=lambda d: name_time(Path(d).name))
    project.opchain("gc", "--keep-last", "1")
    assert [d for d in unused if (project.storage / d).exists()] == [newest]


def test_gc_refuses_while_snakemake_holds_the_lock(edited) -> None:
    project, _, unused = edited
    locks = project.root / ".snakemake" / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    (locks / "0.output.lock").write_text(str(project.storage))
    result = project.opchain("gc", check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "lock" in result.stderr and all((project.storage / d).is_dir() for d in unused)


def test_gc_never_follows_a_link_out_of_the_storage_root(edited, tmp_path: Path) -> None:
    project, _, _ = edited
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (project.chain_dir() / "2020_1_1_0_0_0").symlink_to(outside)
    project.opchain("gc")
    assert (outside / "keep.txt").read_text() == "mine"
