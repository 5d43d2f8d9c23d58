"""Atomic writes: a file is the old one or the complete new one, never a part, and nothing is left
beside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opchain import locks
from opchain.atomic import (
    aside_path,
    create_exclusive,
    link_same,
    publish,
    publish_many,
    write_atomic,
)


def test_write_atomic_replaces_the_file_and_leaves_nothing_aside(tmp_path: Path) -> None:
    target = tmp_path / "chain.yaml"
    write_atomic(target, "old: 1\n")
    write_atomic(target, "new: ü\n")
    assert target.read_bytes() == "new: ü\n".encode()
    assert [p.name for p in tmp_path.iterdir()] == ["chain.yaml"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_partial_copy(tmp_path: Path) -> None:
    target = tmp_path / "metadata.yaml"
    write_atomic(target, b"complete\n")
    with pytest.raises(TypeError):
        write_atomic(target, 42)  # type: ignore[arg-type]  (fails after the aside file exists)
    assert target.read_bytes() == b"complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metadata.yaml"]


def test_aside_paths_are_hidden_siblings_and_distinct(tmp_path: Path) -> None:
    final = tmp_path / "dataset_1"
    names = {aside_path(final).name for _ in range(100)}
    assert len(names) == 100
    assert all(name.startswith(".dataset_1.tmp-") for name in names)


def test_a_killed_writers_leftover_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """A SIGKILL inside write_atomic leaves `.chain.yaml.tmp-<host>-<pid>-*`; once that process
    is gone, the next write of the same file removes it. A live writer's is left alone."""
    target = tmp_path / "chain.yaml"
    dead = subprocess.run(
        [sys.executable, "-c", "from pathlib import Path; from opchain.atomic import aside_path;"
         f"p = aside_path(Path({str(target)!r})); p.write_text('partial'); print(p)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    live = aside_path(target)  # this process: alive
    live.write_text("being written")
    assert Path(dead).exists()
    write_atomic(target, "new\n")
    assert not Path(dead).exists() and live.exists()
    assert target.read_text() == "new\n"


def test_create_exclusive_writes_whole_or_not_at_all(tmp_path: Path) -> None:
    entry = tmp_path / "entry"
    assert create_exclusive(entry, '{"dir": "a"}')
    assert not create_exclusive(entry, '{"dir": "b"}')
    assert entry.read_text() == '{"dir": "a"}'
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_lock_excludes_other_processes_and_breaks_a_dead_owners(tmp_path: Path) -> None:
    holder = (
        "import sys, time; from pathlib import Path; from opchain import locks\n"
        "with locks.hold(Path(sys.argv[1]), 'steps/a/dataset_1'):\n"
        "    print('held', flush=True); time.sleep(float(sys.argv[2]))\n"
        "    (Path(sys.argv[1]) / 'finished').touch()\n"
    )
    first = subprocess.Popen(
        [sys.executable, "-c", holder, str(tmp_path), "1.0"], stdout=subprocess.PIPE, text=True
    )
    assert first.stdout.readline() == "held\n"
    with locks.hold(tmp_path, "steps/a/dataset_1"):  # waits for the first holder to finish
        assert (tmp_path / "finished").exists()
    first.wait()
    killed = subprocess.Popen(
        [sys.executable, "-c", holder, str(tmp_path), "60"], stdout=subprocess.PIPE, text=True
    )
    assert killed.stdout.readline() == "held\n"
    killed.kill()
    killed.wait()
    with locks.hold(tmp_path, "steps/a/dataset_1"):  # the dead owner's lock is broken
        lock = tmp_path / locks.LOCKS_DIR / "steps%a%dataset_1"
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_every_held_lock_is_refreshed(tmp_path: Path) -> None:
    # Another host's lock counts as stale once unrefreshed for STALE_SECONDS: a live owner's
    # locks must keep being refreshed, however many it holds (a process of its own, so that
    # its refresher starts with a short period).
    holder = (
        "import os, sys, time; from pathlib import Path; from opchain import locks\n"
        "locks.REFRESH_SECONDS = 0.05; root = Path(sys.argv[1])\n"
        "folder = root / locks.LOCKS_DIR\n"
        "with locks.hold(root, 'a'), locks.hold(root, 'b'):\n"
        "    for name in 'ab': os.utime(folder / name, (0, 0))\n"
        "    time.sleep(0.5)\n"
        "    print(max(time.time() - (folder / n).stat().st_mtime for n in 'ab'))\n"
    )
    age = subprocess.run([sys.executable, "-c", holder, str(tmp_path)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert float(age) < 1
    assert not list((tmp_path / locks.LOCKS_DIR).iterdir())  # released


def test_link_same_links_only_a_file_of_exactly_these_bytes(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"dtype: int64\n")
    assert link_same(source, tmp_path / "same", b"dtype: int64\n")
    assert (tmp_path / "same").stat().st_ino == source.stat().st_ino
    for name, data in (("shorter", b"dtype: int6"), ("longer", b"dtype: int64\n\n")):
        assert not link_same(source, tmp_path / name, data)
        assert not (tmp_path / name).exists()
    assert not link_same(tmp_path / "missing", tmp_path / "none", b"")
    assert not (tmp_path / "none").exists()
    # Linked before, then replaced by a file of other bytes: not linked again.
    assert link_same(source, tmp_path / "again", b"dtype: int64\n")
    source.unlink()
    source.write_bytes(b"dtype: int32\n")
    assert not link_same(source, tmp_path / "replaced", b"dtype: int64\n")
    assert not (tmp_path / "replaced").exists()
    assert link_same(source, tmp_path / "new", b"dtype: int32\n")


def test_a_dataset_is_never_published_over_a_finished_one(tmp_path: Path) -> None:
    """Two processes linking one point race to publish it: the first one's stays whole, the
    second is told (its copy is its to drop), for one dataset and for a bulk of them."""

    def dataset(name: str, text: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "metadata.yaml").write_text(text)
        return folder

    final = dataset("dataset_1", "first\n")
    late = dataset(".dataset_1.tmp-late", "second\n")
    assert not publish(late, final)
    assert (final / "metadata.yaml").read_text() == "first\n" and late.is_dir()

    fresh = dataset(".dataset_2.tmp-a", "fresh\n")
    empty = tmp_path / "dataset_3"  # an empty directory is not a finished dataset
    empty.mkdir()
    into_empty = dataset(".dataset_3.tmp-a", "third\n")
    moves = [(late, final), (fresh, tmp_path / "dataset_2"), (into_empty, empty)]
    written = [late / "metadata.yaml", fresh / "metadata.yaml", into_empty / "metadata.yaml"]
    assert publish_many(moves, written) == {tmp_path / "dataset_2", empty}
    assert (final / "metadata.yaml").read_text() == "first\n" and late.is_dir()
    assert (tmp_path / "dataset_2" / "metadata.yaml").read_text() == "fresh\n"
    assert (empty / "metadata.yaml").read_text() == "third\n"
