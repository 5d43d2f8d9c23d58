"""opchain as a user installs it, in fresh virtual environments: the README's install command gives
a working `snakemake --report`, and a wheel installed elsewhere runs a project made by
`opchain init` with plain `snakemake`, `opchain run` and Snakemake's own commands."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@dataclass
class Fresh:
    venv: Path  # a new virtual environment, no system packages
    env: dict[str, str]  # the environment to run in it
    checkout: Path  # a copy of the repository, installed there by the README's command


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Fresh:
    top = tmp_path_factory.mktemp("install")
    venv.create(top / "venv", with_pip=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OPCHAIN_STORAGE")}
    env["PATH"] = f"{top / 'venv' / 'bin'}{os.pathsep}{env['PATH']}"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    (install,) = set(re.findall(r"^(pip install -e \.) && snakemake --cores all$", readme, re.M))
    left_out = shutil.ignore_patterns(".git", ".snakemake", ".opchain", "logs", "reports", "*.egg-info",
                                      "operation_*_results")  # fmt: skip
    shutil.copytree(REPO, top / "opchain", ignore=left_out)
    run(["bash", "-c", install], top / "opchain", env)
    return Fresh(top / "venv", env, top / "opchain")


def test_the_readme_install_makes_reports(fresh: Fresh) -> None:
    run(["snakemake", "--cores", "all"], fresh.checkout, fresh.env)
    # A rerun compares the finished jobs' params without pandas, which Snakemake would import
    # for it (~0.35 s of every rerun): opchain's params are strings and numbers. Nor does it
    # validate the unchanged config and operation files again (jsonschema's import, ~0.1 s).
    timed = {**fresh.env, "PYTHONPROFILEIMPORTTIME": "1"}
    rerun = run(["snakemake", "--cores", "all", "-n"], fresh.checkout, timed)
    modules = re.findall(r"^import time: .*\| +(\S+)$", rerun, re.MULTILINE)
    assert "Nothing to be done" in rerun and "numpy" in modules
    assert "pandas" not in modules and "jsonschema" not in modules
    out = run(["snakemake", "--report", "report.html"], fresh.checkout, fresh.env)
    assert "Report created" in out and (fresh.checkout / "report.html").stat().st_size > 100_000


def test_a_project_from_opchain_init_runs_on_an_installed_wheel(
    fresh: Fresh, tmp_path: Path
) -> None:
    root, env = fresh.venv, fresh.env
    wheels = tmp_path / "wheels"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(REPO)],
        tmp_path,
        env,
    )
    (wheel,) = wheels.glob("opchain-*.whl")
    run(
        [str(root / "bin" / "pip"), "install", "--force-reinstall", "--no-deps", str(wheel)],
        tmp_path,
        env,
    )
    run(["opchain", "init", "project"], tmp_path, env)
    project = tmp_path / "project"
    assert not (project / "workflow").exists()  # the workflow comes from the package
    run(["snakemake", "--cores", "all"], project, env)
    assert "Nothing to be done" in run(["snakemake", "-n"], project, env)
    assert "Nothing to be done" in run(["opchain", "run", "-n"], project, env)
    rules = run(["snakemake", "--rulegraph"], project, env)
    assert {"standardize", "pca", "nearest_centroid", "kmeans"} <= set(
        re.findall(r'label = "(\w+)"', rules)
    )
    results = run(["opchain", "results", "digits", "--summary"], project, env)
    assert "accuracy" in results
    refused = subprocess.run(
        ["opchain", "init", "project"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert (
        refused.returncode == 1
        and refused.stderr.startswith("opchain: ")
        and "Traceback" not in refused.stderr
    )
