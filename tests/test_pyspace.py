"""pySPACE's chain and operation files run as written: overrides of whole keys of an operation file,
the singular parameter_setting, and constraints that drop settings of a grid, all through real
`snakemake` processes on the basic scenario (tests/chains/basic)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import Project, write_matrix

from opchain.daf import open_reader
from opchain.errors import SpecError
from opchain.spec import load_chain, upstream_values

CHAIN = "config/chains/basic.yaml"
KFOLD = """type: kfold
parameter_ranges:
  axis: [row]
  folds: [5, 10]
  fold: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
"""
UPSTREAM = 'upstream_constraints: ["{}"]\n'


def parameters(step: Path) -> list[dict]:
    return [
        yaml.safe_load((d / "metadata.yaml").read_text())["parameters"]
        for d in sorted(step.glob("dataset_*"))
    ]


def last_step(project: Project) -> Path:
    return project.storage / project.manifest()["runs"][0]["steps"][-1]["dir"]


def test_a_chain_in_pyspace_override_form_runs_as_its_plain_form_would(project: Project) -> None:
    """overridden_params replacing whole keys (pySPACE's dict.update of the operation spec),
    parameter_setting in the singular: the same results, in the same directories, as operation
    files that say the same in opchain's own forms."""
    project.edit(
        CHAIN,
        """input_path: inputs
operations:
  - add_one.yaml
  - operation_spec: add.yaml
    overridden_params:
      parameter_setting: [{value: 10}, {value: 20}]
  - operation_spec: jitter.yaml
    overridden_params:
      parameter_ranges: {scale: [0.0, 1.0]}
""",
    )
    project.snakemake()
    manifest = project.manifest()
    add, jitter = (project.storage / s["dir"] for s in manifest["runs"][0]["steps"][1:])
    assert [p["value"] for p in parameters(add)] == [10, 20, 10, 20]  # 2 settings x 2 inputs
    assert [p["scale"] for p in parameters(jitter)] == [0.0, 1.0] * 4
    project.edit("config/operations/add_both.yaml", "type: myops:add\nparameter_settings: [{value: 10}, {value: 20}]\n")  # fmt: skip
    project.edit("config/operations/jitter_grid.yaml", "type: myops:jitter\nparameter_ranges: {scale: [0.0, 1.0]}\n")  # fmt: skip
    project.edit(CHAIN, "input_path: inputs\noperations: [add_one.yaml, add_both.yaml, jitter_grid.yaml]\n")  # fmt: skip
    assert "Nothing to be done" in project.snakemake("-n").stdout
    # Today's form, parameter names, keeps working beside it.
    project.edit(
        CHAIN,
        "input_path: inputs\noperations:\n  - add_one.yaml\n"
        "  - {operation_spec: add_both.yaml, overridden_params: {value: 7}}\n",
    )
    project.snakemake()
    assert [p["value"] for p in parameters(last_step(project))] == [7, 7, 7, 7]


def test_kfold_grid_with_a_constraint_plans_exactly_the_valid_settings(project: Project) -> None:
    """folds [5, 10] x fold [0..9] is 20 settings, of which 5 have no such fold: the constraint
    drops them when the plan is made, status says so, and the 15 run; without the constraint the
    plan is refused with one line before any job runs."""
    write_matrix(project.storage / "single" / "d", np.arange(60.0).reshape(20, 3))
    project.edit(CHAIN, "input_path: single\noperations: [kfold.yaml]\n")
    project.edit("config/operations/kfold.yaml", KFOLD + 'constraints: ["fold < folds"]\n')
    status = project.opchain("status").stdout
    assert "[constraints excluded 5 settings]" in status
    planned = project.snakemake("-n").stdout
    assert "15 settings x 1 inputs" in planned and re.search(r"^kfold\s+15$", planned, re.M)
    project.snakemake()
    step = last_step(project)
    found = [(p["folds"], p["fold"]) for p in parameters(step)]
    assert sorted(found) == [(5, f) for f in range(5)] + [(10, f) for f in range(10)]
    tests = {
        (p["folds"], p["fold"]): np.asarray(open_reader(d).get_data1d("row#is_test"))
        for p, d in zip(parameters(step), sorted(step.glob("dataset_*")), strict=True)
    }
    for folds in (5, 10):  # each partition's folds cover the 20 rows once
        assert np.array_equal(sum(tests[(folds, f)].astype(int) for f in range(folds)), np.ones(20))

    # Per-point reuse: a narrower constraint finds every point already computed.
    project.edit(
        "config/operations/kfold.yaml", KFOLD + 'constraints: ["fold < folds", "folds == 10"]\n'
    )
    project.snakemake()
    narrower = last_step(project)
    assert narrower != step and len(parameters(narrower)) == 10
    assert all(
        yaml.safe_load((d / "metadata.yaml").read_text()).get("computed_in")
        for d in narrower.glob("dataset_*")
    )

    project.edit("config/operations/kfold.yaml", KFOLD)
    before = sorted(p.name for p in step.parent.iterdir())
    assert project.refusal("-n") == (
        "opchain: config/operations/kfold.yaml:5: parameter_ranges.fold: fold 5 is not one of the "
        '5 folds 0..4 (a grid over both drops such settings: constraints: ["fold < folds"]) '
        "(operation 'kfold')"
    )
    assert sorted(p.name for p in step.parent.iterdir()) == before


def test_upstream_constraints_admit_settings_by_the_earlier_steps_parameters(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the planner asks for each upstream dataset: the settings its lineage admits, named as
    the results table names them (maybe none); a step left with none is one line at the
    constraint."""
    project.edit(
        "config/operations/add.yaml",
        "type: myops:add\nparameter_ranges: {value: [0, 1, 2]}\n"
        'upstream_constraints: ["value > jitter.scale", "value != add.value"]\n',
    )
    project.edit(CHAIN, "input_path: inputs\noperations: [add_one.yaml, jitter.yaml, add.yaml]\n")
    monkeypatch.syspath_prepend(str(project.root))  # its myops module, as opchain would import it
    chain = load_chain(project.root / CHAIN, project.root / "config" / "operations")
    last = chain.steps[-1]
    lineage = upstream_values([("add", {"value": 1}), ("jitter", {"scale": 0.5})])
    assert lineage == {"add.value": 1, "jitter.scale": 0.5}
    assert last.admitted(lineage) == [2]  # value 0 is not above 0.5, value 1 is add's own
    refused = upstream_values([("add", {"value": 1}), ("jitter", {"scale": 5})])
    assert last.admitted(refused) == []
    assert str(last.none_admitted(refused)) == (
        f"{project.root / 'config/operations/add.yaml'}:3: upstream_constraints.0: "
        "'value > jitter.scale': no setting satisfies the upstream constraints on any dataset it "
        "reads (the first: add.value=1, jitter.scale=5)"
    )


def test_a_grid_validates_each_value_and_still_names_the_bad_one(tmp_path: Path) -> None:
    """A grid's settings share their values (a 3 x 3 grid has 6), so validation remembers the
    values found valid; a bad value is still refused at its line, whatever came before it, and
    a value valid for one parameter is not taken as valid for another."""
    from opchain.spec import load_operation

    spec = tmp_path / "op.yaml"
    spec.write_text(
        "type: kfold\nparameter_ranges:\n  axis: [cell]\n  folds: [2, 3, 4]\n  fold: [0, 1]\n"
    )
    assert len(load_operation(spec).settings) == 6
    spec.write_text(
        "type: kfold\nparameter_ranges:\n  axis: [cell]\n  folds: [2, 3, 1]\n  fold: [0, 1]\n"
    )  # folds 1 comes after fold 1 was found valid
    with pytest.raises(SpecError, match=r"op.yaml:4: .*1 is less than the minimum of 2"):
        load_operation(spec)
    spec.write_text("type: kfold\nparameter_ranges:\n  axis: [cell, 2]\n  folds: [2]\n")
    with pytest.raises(SpecError, match=r"op.yaml:3: .*2 is not of type 'string'"):
        load_operation(spec)


def test_validity_is_recorded_by_content_and_never_passes_a_changed_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings found valid are recorded in the working directory (the next run need not
    validate them again); a file changed to an invalid setting is refused all the same."""
    from opchain.spec import load_operation

    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "op.yaml"
    spec.write_text("type: kfold\nparameters: {axis: cell, folds: 3, fold: 1}\n")
    load_operation(spec)
    record = tmp_path / ".opchain" / "valid"
    assert len(record.read_text().split()) == 1
    spec.write_text("type: kfold\nparameters: {axis: cell, folds: 1, fold: 0}\n")
    with pytest.raises(SpecError, match=r"op.yaml:2: .*1 is less than the minimum of 2"):
        load_operation(spec)
    assert len(record.read_text().split()) == 1
    spec.write_text("type: kfold\nparameters: {axis: cell, folds: 3, fold: 1}\n")
    load_operation(spec)  # valid again: found in the record
    assert len(record.read_text().split()) == 1


def test_upstream_constraints_give_each_upstream_dataset_the_settings_its_lineage_admits(
    project: Project,
) -> None:
    """add [1, 2] -> jitter [0, 1] -> add [1, 2, 3] with value >= add.value + jitter.scale: each
    upstream dataset gets 3, 2, 2 or 1 of the 3 settings, 16 datasets of 24 for inputs a and b,
    each with the parameters its lineage admits. Status counts the 8 pairs excluded, a rerun has
    nothing to do, the results table lists them; without the constraint its 16 points are linked,
    not computed again; a constraint that leaves no dataset is one line at the constraint."""
    project.edit("config/operations/add_one.yaml", "type: myops:add\nparameter_ranges: {value: [1, 2]}\n")  # fmt: skip
    project.edit("config/operations/jitter.yaml", "type: myops:jitter\nparameter_ranges: {scale: [0.0, 1.0]}\n")  # fmt: skip
    grid = "type: myops:add\nparameter_ranges: {value: [1, 2, 3]}\n"
    project.edit("config/operations/add.yaml", grid + UPSTREAM.format("value >= add.value + jitter.scale"))  # fmt: skip
    project.edit(CHAIN, "input_path: inputs\noperations: [add_one.yaml, jitter.yaml, add.yaml]\n")
    excluded = "[8 (setting, upstream dataset) pairs excluded by upstream constraints]"
    assert excluded in project.opchain("status").stdout
    project.snakemake()
    admitted = [
        (add, scale, value)
        for add in (1, 2)
        for scale in (0.0, 1.0)
        for value in (1, 2, 3)
        if value >= add + scale
    ]
    step = last_step(project)
    found = [lineage_parameters(project.storage, d) for d in step.glob("dataset_*")]
    assert sorted(found) == sorted(admitted * 2)
    assert "Nothing to be done" in project.snakemake("-n").stdout
    assert excluded in project.opchain("status").stdout
    table = project.opchain("results", "basic", "--format", "csv").stdout
    rows = [r for r in csv.DictReader(io.StringIO(table)) if r["step"] == "3"]
    found = [tuple(float(r[f"param.{p}"]) for p in ("add.value", "jitter.scale", "value")) for r in rows]  # fmt: skip
    assert sorted(found) == sorted(admitted * 2)

    # Per-point reuse: the whole grid finds the 16 admitted points computed.
    project.edit("config/operations/add.yaml", grid)
    assert "upstream_constraints changed" in project.opchain("status").stdout
    project.snakemake()
    linked = [
        "computed_in" in yaml.safe_load((d / "metadata.yaml").read_text())
        for d in last_step(project).glob("dataset_*")
    ]
    assert last_step(project) != step and sorted(linked) == [False] * 8 + [True] * 16

    project.edit("config/operations/add.yaml", grid + UPSTREAM.format("value > add.value + 5"))
    before = project.tree()
    assert project.refusal("-n") == (
        "opchain: config/operations/add.yaml:3: upstream_constraints.0: 'value > add.value + 5': "
        "no setting satisfies the upstream constraints on any dataset it reads (the first: "
        "add.value=1)"
    )
    assert project.tree() == before


def lineage_parameters(storage: Path, dataset: Path) -> tuple[float, float, float]:
    """(add.value, jitter.scale, value) of a dataset of the last step, from its lineage."""
    own = yaml.safe_load((dataset / "metadata.yaml").read_text())
    jitter = yaml.safe_load((storage / own["input"] / "metadata.yaml").read_text())
    add = yaml.safe_load((storage / jitter["input"] / "metadata.yaml").read_text())
    return add["parameters"]["value"], jitter["parameters"]["scale"], own["parameters"]["value"]
