"""Atomic writes: a file is the old one or the complete new one, never a part, and nothing is left
beside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from opchain.atomic import aside_path, write_atomic


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
