"""A project of one's own: ``opchain init DIR`` makes a folder in which plain ``snakemake`` runs
the chains of its ``config/`` with the workflow that ships inside the installed package (used as a
Snakemake module), with the example chains, their data and the profiles to start from."""

from __future__ import annotations

import shutil
from pathlib import Path

from opchain.errors import OpchainError

__all__ = ["WORKFLOW", "init_project"]

WORKFLOW = Path(__file__).resolve().parent / "workflow_files"  # Snakefile, workflow/, scripts/...

SNAKEFILE = """\
# An opchain project: the chains and operations are in config/, the workflow comes from the
# installed opchain package, as a Snakemake module.
from opchain.project import WORKFLOW


configfile: "config/config.yaml"


module opchain_workflow:
    snakefile:
        str(WORKFLOW / "Snakefile")
    config:
        config


use rule * from opchain_workflow


# Snakemake runs only the main Snakefile's hooks: opchain's onstart reserves the result names,
# its onsuccess and onerror let the process exit as soon as the run is over.
onstart:
    opchain_workflow.onstart()


onsuccess:
    opchain_workflow.onsuccess()


onerror:
    opchain_workflow.onerror()
"""


def init_project(folder: Path) -> list[Path]:
    """Make ``folder`` a project (it may exist, empty); return what was written."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise OpchainError(f"{folder}: not an empty folder; opchain init makes a new project")
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in (("config", "config"), ("profiles", "profiles"),
                         ("example_data", "storage/example_data")):  # fmt: skip
        shutil.copytree(WORKFLOW / name, folder / target, symlinks=False)
    (folder / "Snakefile").write_text(SNAKEFILE, encoding="utf-8")
    (folder / ".gitignore").write_text(
        ".snakemake/\n/.opchain/\n/logs/\n/reports/\n/storage/\n!/storage/example_data/\n",
        encoding="utf-8",
    )
    return sorted(folder.iterdir())
