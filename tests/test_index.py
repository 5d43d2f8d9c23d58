"""The index: timestamp names in the seed's form, unique within a second, exclusive reservations."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from opchain.errors import PlanError
from opchain.index import Index, timestamp_name


def test_names_have_the_seed_form_without_zero_padding() -> None:
    stamp = time.mktime((2009, 7, 22, 11, 35, 2, 0, 0, -1))
    assert timestamp_name(stamp) == "2009_7_22_11_35_2"


def test_names_taken_in_the_same_second_get_suffixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("opchain.index.timestamp_name", lambda: "2026_11_23_6_5_2")
    (tmp_path / "operation_results" / "2026_11_23_6_5_2_1").mkdir(parents=True)  # already on disk
    index = Index(tmp_path)
    names = [index.propose("steps", f"fp{i}", "operation_results", {}) for i in range(3)]
    assert names == [
        "operation_results/2026_11_23_6_5_2",
        "operation_results/2026_11_23_6_5_2_2",
        "operation_results/2026_11_23_6_5_2_3",
    ]


def test_a_claimed_name_is_never_handed_out_again(tmp_path: Path) -> None:
    first = Index(tmp_path)
    name = first.propose("steps", "fp1", "operation_results", {})
    first.commit()
    (tmp_path / name).mkdir(parents=True, exist_ok=True)
    (tmp_path / name).rmdir()  # even after its directory is deleted
    second = Index(tmp_path)
    assert second.propose("steps", "fp2", "operation_results", {}) != name
    assert second.lookup("steps", "fp1") == {"dir": name}


def test_concurrent_planners_of_one_fingerprint_agree_on_one_directory(tmp_path: Path) -> None:
    """Two runs sharing a storage root plan the same new step: the second adopts the first's."""
    one, two = Index(tmp_path), Index(tmp_path)
    proposed_one = one.propose("steps", "same", "operation_results", {})
    proposed_two = two.propose("steps", "same", "operation_results", {})
    assert proposed_one == proposed_two  # the same second, neither reserved yet
    [(_, first, _)] = one.commit()
    [(_, second, _)] = two.commit()
    assert first == second == one.lookup("steps", "same")["dir"]


def test_a_name_claimed_meanwhile_is_not_taken_twice(tmp_path: Path) -> None:
    one, two = Index(tmp_path), Index(tmp_path)
    name = one.propose("steps", "fp1", "operation_results", {})
    assert two.propose("steps", "fp2", "operation_results", {}) == name
    one.commit()
    [(_, other, _)] = two.commit()
    assert other != name and two.lookup("steps", "fp2")["dir"] == other


def test_entries_are_never_left_empty(tmp_path: Path) -> None:
    index = Index(tmp_path)
    index.propose("steps", "fp", "operation_results", {"components": {"a": 1}})
    index.commit()
    entries = list((tmp_path / ".opchain").rglob("*"))
    steps = [p for p in entries if p.parent.name == "steps"]
    assert [p.name for p in steps] == ["fp"] and steps[0].read_text().startswith("{")
    assert not [p for p in entries if ".tmp-" in p.name]


def test_corrupt_entry_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / ".opchain" / "steps").mkdir(parents=True)
    (tmp_path / ".opchain" / "steps" / "fp").write_text("{not json")
    with pytest.raises(PlanError, match="corrupt index entry"):
        Index(tmp_path).lookup("steps", "fp")
