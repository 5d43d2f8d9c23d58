"""Shared helpers: a throwaway project folder (config, operations, storage) and real snakemake runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import settings

from opchain.daf import FilesWriter

# CI explores the same examples every time: a red run must mean a regression, not a new draw.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = Path(__file__).resolve().parent / "chains"


@dataclass
class Project:
    """A user's project folder: config/, user operations (myops.py) and the storage root."""

    root: Path

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "OPCHAIN_STORAGE"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.root), env.get("PYTHONPATH")]))
        return env

    def snakemake_command(self, *args: str) -> list[str]:
        """The repo's Snakefile run in this project, as `snakemake` in a project folder would."""
        return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                "-d", str(self.root), "--cores", "2", *args]  # fmt: skip

    def snakemake(
        self,
        *args: str,
        check: bool = True,
        env: dict[str, str] | None = None,
        umask: int = -1,  # -1: the caller's, as for subprocess
    ) -> subprocess.CompletedProcess[str]:
        return self._run(self.snakemake_command(*args), check, env, umask)

    def refusal(self, *args: str) -> str:
        """The one line a refused ``snakemake *args`` ends with (it must fail, without a
        traceback)."""
        refused = self.snakemake(*args, check=False)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
        return refused.stderr.strip().splitlines()[-1]

    def start_snakemake(self) -> subprocess.Popen[bytes]:
        """A snakemake run in the background, in its own session (so a test can kill it whole)."""
        return subprocess.Popen(self.snakemake_command(), cwd=self.root, env=self.env(),
                                start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip

    def opchain(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self._run([sys.executable, "-m", "opchain", *args], check, env)

    def _run(
        self, command: list[str], check: bool, env: dict[str, str] | None, umask: int = -1
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(command, cwd=self.root, env=env or self.env(), text=True,
                                capture_output=True, timeout=600,
                                umask=umask)  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def edit(self, relative: str, text: str) -> None:
        (self.root / relative).write_text(text, encoding="utf-8")

    def chain_dir(self) -> Path:
        (found,) = (self.storage / "operation_chain_results").iterdir()
        return found

    def manifest(self) -> dict:
        return yaml.safe_load((self.chain_dir() / "chain.yaml").read_text())

    def tree(self) -> dict[str, int]:
        """Every path under the storage root with its mtime: a snapshot to compare runs by."""
        return {
            p.relative_to(self.storage).as_posix(): p.stat().st_mtime_ns
            for p in sorted(self.storage.rglob("*"))
        }


def write_matrix(path: Path, x: np.ndarray) -> None:
    with FilesWriter(path) as out:
        out.create_axis("row", np.array([f"r{i}" for i in range(x.shape[0])], dtype=object))
        out.create_axis("col", np.array([f"c{j}" for j in range(x.shape[1])], dtype=object))
        out.set_data2d("row,col#x", x)


def make_project(root: Path) -> Project:
    """tests/chains/basic copied to ``root``, with two input datasets under storage/inputs."""
    shutil.copytree(SCENARIOS / "basic", root)
    for i, name in enumerate(["a", "b"]):
        write_matrix(root / "storage" / "inputs" / name, np.arange(12.0).reshape(4, 3) * (i + 1))
    return Project(root)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return make_project(tmp_path / "project")


@pytest.fixture(scope="session")
def example(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The shipped example (config/ and storage/example_data), run once; tests only read it."""
    project = Project(tmp_path_factory.mktemp("example") / "example")
    shutil.copytree(REPO / "config", project.root / "config")
    shutil.copytree(REPO / "storage" / "example_data", project.storage / "example_data")
    project.snakemake()
    return project
