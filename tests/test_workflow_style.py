"""The workflow itself as Snakemake's tools judge it: `snakemake --lint` finds nothing, and the
rules are formatted as `snakefmt` formats them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO, Project


def test_snakemake_lint_is_clean(tmp_path: Path) -> None:
    project = Project(tmp_path / "example")
    shutil.copytree(REPO / "config", project.root / "config")
    shutil.copytree(REPO / "storage" / "example_data", project.storage / "example_data")
    result = project.snakemake("--lint")
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_rules_are_formatted_by_snakefmt() -> None:
    files = [
        "Snakefile",
        *sorted(str(p.relative_to(REPO)) for p in REPO.glob("workflow/rules/*.smk")),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", *files],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
