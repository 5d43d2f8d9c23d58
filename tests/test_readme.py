"""Every code block of the README runs as written, on a copy of the shipped example project, so the
README cannot drift from the code. Blocks without a language are printed output, not code; a block
right after an `<!-- not run ... -->` comment says why it is not run here."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, Project

from opchain.spec import load_chain, load_operation

BLOCK = re.compile(r"(<!-- not run[^>]*-->\n)?```(\w+)\n(.*?)```", re.S)


def blocks(language: str) -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [code for skip, lang, code in BLOCK.findall(text) if lang == language and not skip]


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A clone of the repository (its workflow, config and example data), as the README's
    commands expect to find it."""
    project = Project(tmp_path_factory.mktemp("readme") / "example")
    for folder in ("config", "workflow", "scripts", "profiles", "storage/example_data"):
        shutil.copytree(REPO / folder, project.root / folder)
    for file in ("Snakefile", "environment.yml"):
        shutil.copy(REPO / file, project.root)
    return project


def run_bash(project: Project, code: str) -> None:
    # `pip install -e .` is the package this test runs from; every other command runs as written.
    code = re.sub(r"pip install -e [^&\n]*&& ", "", code)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=project.root,
                            env=project.env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, f"{code}\n{result.stdout}\n{result.stderr}"


def test_the_bash_blocks_run_in_order(example: Project) -> None:
    found = blocks("bash")
    assert found[0].strip() == "pip install -e . && snakemake --cores all"  # the first command
    for code in found:
        run_bash(example, code)
    assert (example.storage / "operation_chain_results").is_dir()


def test_the_python_blocks_run(example: Project, tmp_path: Path) -> None:
    if not (example.storage / "operation_chain_results").is_dir():
        run_bash(example, blocks("bash")[0])
    for i, code in enumerate(blocks("python")):
        script = tmp_path / f"block_{i}.py"
        script.write_text(code, encoding="utf-8")
        result = subprocess.run([sys.executable, str(script)], cwd=example.root,
                                env=example.env(), capture_output=True, text=True)  # fmt: skip
        assert result.returncode == 0, f"{code}\n{result.stderr}"


def test_the_user_operation_runs_on_the_shipped_cells(example: Project) -> None:
    (code,) = [c for c in blocks("python") if '@operation("scale"' in c]
    (example.root / "mymodule.py").write_text(code, encoding="utf-8")
    (example.root / "scale.yaml").write_text("type: mymodule:scale\n", encoding="utf-8")
    example.opchain("run-op", "scale.yaml", "example_data/cells", "--cores", "1")
    results = [
        yaml.safe_load(p.read_text())
        for p in example.storage.glob("operation_results/*/dataset_1/metadata.yaml")
    ]
    (scaled,) = [r for r in results if r["operation"] == "scale"]
    assert scaled["results"] == {"note": "scores go to metadata.yaml"}


def test_the_yaml_blocks_are_valid_specs(example: Project, tmp_path: Path) -> None:
    for i, code in enumerate(blocks("yaml")):
        spec = tmp_path / f"block_{i}.yaml"
        spec.write_text(code, encoding="utf-8")
        if "operations:" in code:
            load_chain(spec, example.root / "config" / "operations")
        else:
            load_operation(spec)
