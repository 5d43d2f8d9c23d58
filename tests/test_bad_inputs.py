"""The bad-input corpus (tests/bad_inputs/cases.yaml): every case is refused with exactly the one
line it lists, as the last line of stderr, with no traceback, and the storage root is unchanged
byte for byte. Most cases run `opchain status` in this process (opchain.cli.main); those marked
`snakemake: true`, and the deepest nesting (which crashed libyaml), run a real `snakemake -n`."""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from conftest import Project, make_project

from opchain import cli
from opchain.spec import load_operation, load_yaml

CASES = yaml.safe_load((Path(__file__).parent / "bad_inputs" / "cases.yaml").read_text())
CHAIN = "config/chains/basic.yaml"


def snapshot(storage: Path) -> dict[str, str]:
    """Every path under the storage root with its content's hash (a symlink: its target)."""
    found = {}
    for path in sorted(storage.rglob("*")):
        key = path.relative_to(storage).as_posix()
        if path.is_symlink():
            found[key] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[key] = "dir"
    return found


def prepare(project: Project, case: dict) -> None:
    for relative, text in case.get("files", {}).items():
        path = project.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding=case.get("encoding", "utf-8"))
    for relative, target in case.get("symlinks", {}).items():
        (project.root / relative).symlink_to(target)


@contextmanager
def in_project(project: Project) -> Iterator[None]:
    """Run in the project folder with its user modules importable, as `opchain` would; they are
    forgotten afterwards (the next case has its own)."""
    cwd = Path.cwd()
    os.chdir(project.root)
    sys.path.insert(0, str(project.root))
    try:
        yield
    finally:
        os.chdir(cwd)
        sys.path.remove(str(project.root))
        for name, module in list(sys.modules.items()):
            if str(getattr(module, "__file__", None) or "").startswith(str(project.root)):
                del sys.modules[name]
        importlib.invalidate_caches()


def status_in_process(project: Project, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`opchain status` in the project folder, in this process: its exit code and stderr."""
    with in_project(project):
        code = cli.main(["status"])
    return code, capsys.readouterr().err


def refused(project: Project, code: int, stderr: str) -> str:
    """The last line of stderr, after the checks every refusal must pass."""
    assert code != 0
    assert "Traceback" not in stderr, stderr
    assert stderr.strip(), "refused without a message"
    return stderr.strip().splitlines()[-1].replace(str(project.root), "<project>")


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_bad_input_gets_its_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: dict
) -> None:
    project = make_project(tmp_path / "project")
    prepare(project, case)
    before = snapshot(project.storage)
    assert refused(project, *status_in_process(project, capsys)) == case["expected"]
    assert snapshot(project.storage) == before


SNAKEMAKE_CASES = [case for case in CASES if case.get("snakemake")]


@pytest.mark.parametrize("case", SNAKEMAKE_CASES, ids=[case["name"] for case in SNAKEMAKE_CASES])
def test_bad_input_gets_its_one_line_from_snakemake(tmp_path: Path, case: dict) -> None:
    project = make_project(tmp_path / "project")
    prepare(project, case)
    before = snapshot(project.storage)
    result = project.snakemake("-n", check=False)
    assert refused(project, result.returncode, result.stderr) == case["expected"]
    assert snapshot(project.storage) == before


def test_corpus_covers_every_kind_of_input() -> None:
    """At least 60 cases, and chains, operations, configs, datasets and user code among them."""
    assert len(CASES) >= 60
    kinds = {name.split("_")[0] for name in (case["name"] for case in CASES)}
    assert {"chain", "operation", "config", "input", "user", "grid", "builtin"} <= kinds


@pytest.mark.parametrize(
    ("nested", "line"),
    [
        ("[" * 10_000 + "]" * 10_000, 2),
        ("\n" + "- " * 10_000 + "x", 3),
        ("{a: " * 100_000 + "x" + "}" * 100_000, 2),
    ],
    ids=["flow_10000", "block_10000", "mappings_100000"],
)
def test_deep_nesting_is_refused_before_it_is_built(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nested: str, line: int
) -> None:
    project = make_project(tmp_path / "project")
    project.edit(CHAIN, f"input_path: inputs\ndescription: {nested}\noperations: [add_one.yaml]\n")
    before = snapshot(project.storage)
    error = refused(project, *status_in_process(project, capsys))
    assert error == f"opchain: config/chains/basic.yaml:{line}: nested deeper than 100 levels"
    assert snapshot(project.storage) == before


def test_nesting_100000_deep_is_refused_by_snakemake(project: Project) -> None:
    """This crashed snakemake with SIGSEGV inside libyaml's composer."""
    nested = "[" * 100_000 + "]" * 100_000
    project.edit(CHAIN, f"input_path: inputs\noperations: [add_one.yaml]\nx: {nested}\n")
    before = snapshot(project.storage)
    result = project.snakemake("-n", check=False)
    line = refused(project, result.returncode, result.stderr)
    assert line == "opchain: config/chains/basic.yaml:3: nested deeper than 100 levels"
    assert snapshot(project.storage) == before


def test_a_5_mb_yaml_file_still_loads(tmp_path: Path) -> None:
    """Limits are on nesting and aliases, not size: a large plain file loads, with its lines."""
    path = tmp_path / "big.yaml"
    rows = "".join(
        f"  row_{i}: {{values: [{i}, {i}.5, text], name: 'row {i}'}}\n" for i in range(120_000)
    )
    path.write_text(f"description: big\ntable:\n{rows}")
    assert path.stat().st_size > 5_000_000
    doc = load_yaml(path)
    assert len(doc.data["table"]) == 120_000
    assert doc.data["table"]["row_119999"] == {
        "values": [119_999, 119_999.5, "text"],
        "name": "row 119999",
    }
    assert doc.lines[("table", "row_119999", "name")] == 120_002


def test_plain_yaml_features_still_work(project: Project) -> None:
    """Anchors and aliases, quoting, explicit standard tags and dates (read as text) stay usable."""
    project.edit(
        "config/operations/add.yaml",
        "type: myops:add\n"
        "description: !!str 2024-01-01\n"
        "parameter_settings:\n"
        "  - &base {value: !!float 1}\n"
        "  - *base\n"
        "  - {value: 0x10}\n",
    )
    project.edit(CHAIN, "input_path: inputs\noperations: [add.yaml]\n")
    with in_project(project):
        spec = load_operation(Path("config/operations/add.yaml"))
    assert spec.settings == ({"value": 1.0}, {"value": 1.0}, {"value": 16})
