"""Operations from installed packages (entry points) and from the project's own folder, found by
plain name, listed and described by `opchain operations`; a name two sources define is an error."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import Project
from test_chains import x_of

from opchain.operations import registered_operations
from opchain.spec import load_operation

PLUGIN = '''\
import numpy as np

from opchain import operation


@operation("double", parameters={"matrix": {"type": "string"}})
def double(data, params, ctx):
    """Multiply a matrix by two."""
    for axis in data.axis_names():
        ctx.output.create_axis(axis, data.axis_entries(axis))
    ctx.output.set_data2d(params["matrix"], np.asarray(data.get_data2d(params["matrix"])) * 2)
'''


def install_plugin(site: Path) -> None:
    """A real installed distribution (what `pip install` leaves): package + dist-info."""
    (site / "doubling").mkdir(parents=True)
    (site / "doubling" / "__init__.py").write_text(PLUGIN)
    info = site / "doubling-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: doubling\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[opchain.operations]\ndouble = doubling:double\n")


def with_site(project: Project, site: Path) -> dict[str, str]:
    env = project.env()
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    return env


def chain_of(project: Project, operation: str) -> None:
    project.edit(
        "config/operations/op.yaml", f"type: {operation}\nparameters: {{matrix: 'row,col#x'}}\n"
    )
    project.edit("config/chains/basic.yaml", "input_path: inputs\noperations: [op.yaml]\n")


def test_an_installed_packages_operation_is_found_by_name(project: Project, tmp_path: Path) -> None:
    install_plugin(tmp_path / "site")
    chain_of(project, "double")
    project.snakemake(env=with_site(project, tmp_path / "site"))
    (step,) = [s["dir"] for s in project.manifest()["runs"][0]["steps"]]
    np.testing.assert_array_equal(
        x_of(project.storage / step / "dataset_2"), np.arange(12.0).reshape(4, 3) * 2 * 2
    )
    listing = project.opchain("operations", env=with_site(project, tmp_path / "site")).stdout
    assert re.search(
        r"^double +Multiply a matrix by two\.  \[package doubling \(doubling:double\)\]$",
        listing,
        re.M,
    )
    assert "[built-in]" in listing


def test_a_projects_own_operations_need_no_install(project: Project) -> None:
    folder = project.root / "scripts" / "operations"
    folder.mkdir(parents=True)
    (folder / "doubling.py").write_text(PLUGIN)
    chain_of(project, "double")
    project.snakemake()
    assert len(list(project.storage.glob("operation_chain_results/*/*/dataset_*"))) == 2
    listing = project.opchain("operations").stdout
    assert re.search(
        r"^double +Multiply .*\[project scripts/operations/doubling\.py\]$", listing, re.M
    )


def test_a_name_two_sources_define_is_an_error_naming_both(project: Project) -> None:
    folder = project.root / "scripts" / "operations"
    folder.mkdir(parents=True)
    (folder / "mine.py").write_text(PLUGIN.replace('"double"', '"log1p"'))
    chain_of(project, "log1p")
    result = project.opchain("status", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "type: operation 'log1p' is defined by built-in and by project "
        "scripts/operations/mine.py: rename one of them"
    ), result.stderr


@pytest.mark.parametrize("name", sorted(registered_operations()))
def test_each_built_ins_description_has_an_example_that_validates(
    project: Project, name: str, tmp_path: Path
) -> None:
    text = project.opchain("operations", name).stdout
    assert "parameters:" in text and "random:" in text and "resources:" in text
    example = text.split("example operation file:\n", 1)[1]
    (tmp_path / "example.yaml").write_text(example)
    assert load_operation(tmp_path / "example.yaml").operation.name == name
