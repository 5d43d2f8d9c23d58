"""results.csv beside chain.yaml, the chain's history, and `opchain results`, on real runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from conftest import Project, make_project
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opchain.table import (
    ROW_ENTRIES,
    dump_yaml,
    history_versions,
    load_yaml,
    name_time,
    read_metadata,
)

LIBYAML = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

JITTER_2 = "type: myops:jitter\nparameters: {scale: 2.0}\n"


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The basic chain (add_one -> jitter -> add, 2 runs, inputs a and b), run once, read only."""
    project = make_project(tmp_path_factory.mktemp("results") / "project")
    project.snakemake()
    return project


def read_rows(project: Project) -> list[dict[str, str]]:
    with (project.chain_dir() / "results.csv").open(newline="") as table:
        return list(csv.DictReader(table))


def test_results_csv_has_one_row_per_dataset_with_lineage_parameters(ran: Project) -> None:
    rows = read_rows(ran)
    assert len(rows) == 2 * 3 * 2  # runs x steps x input datasets (shared step 1 once per run)
    assert list(rows[0])[:8] == [
        "chain", "run", "seed", "step", "operation", "input", "step_dir", "dataset",
    ]  # fmt: skip
    assert list(rows[0])[-3:] == ["start", "seconds", "host"]
    last = [r for r in rows if r["step"] == "3" and r["run"] == "1"]
    assert {r["input"] for r in last} == {"inputs/a", "inputs/b"}  # the original inputs
    for row in last:
        # Its own value (overridden to 10), and those of the steps it descends from.
        assert (row["param.value"], row["param.add.value"], row["param.jitter.scale"]) == (
            "10", "1", "0.5",
        )  # fmt: skip
        assert row["seed"] == "1" and row["operation"] == "add"
        metadata = yaml.safe_load(
            (ran.storage / row["step_dir"] / row["dataset"] / "metadata.yaml").read_text()
        )
        assert metadata["output"] == f"{row['step_dir']}/{row['dataset']}"
    jitter = [r for r in rows if r["operation"] == "jitter"]
    for row in jitter:
        metadata = yaml.safe_load(
            (ran.storage / row["step_dir"] / row["dataset"] / "metadata.yaml").read_text()
        )
        assert float(row["score.noise_mean"]) == metadata["results"]["noise_mean"]
        assert float(row["seconds"]) >= 0 and row["host"] == metadata["host"]


def test_a_row_parses_only_its_entries_and_reads_them_as_the_whole_file_has_them(
    ran: Project, tmp_path: Path
) -> None:
    """A table's rows parse only the top-level entries they need of each metadata.yaml (half of
    it): each must read exactly as it does in the whole file, whatever YAML it holds."""
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "metadata.yaml").write_text(
        dump_yaml(
            {
                "operation": "x",
                "seed": [1, 2],  # a list at the margin: its items are not indented
                "items": ["a", "b"],
                "results": {"note": "two\nlines", "long": "word " * 40, "list": [1, [2, 3]]},
                "components": {"host": "not the host"},
                "host": "h: with a colon",
                "cost": None,
            }
        )
    )
    results = ran.storage.glob("operation_chain_results/*/*/dataset_*/metadata.yaml")
    places = [
        (tmp_path, "odd"),
        *((ran.storage, str(p.parent.relative_to(ran.storage))) for p in results),
    ]
    for storage, dataset in places:
        whole = read_metadata(storage, dataset)
        assert read_metadata(storage, dataset, keys=ROW_ENTRIES) == {
            k: v for k, v in whole.items() if k in ROW_ENTRIES
        }
    assert len(places) > 10


def test_results_csv_and_chain_yaml_change_exactly_when_a_result_does(project: Project) -> None:
    project.snakemake()
    chain = project.chain_dir()
    before = project.tree()
    project.snakemake()  # nothing to do: nothing is touched
    assert project.tree() == before
    first = (chain / "chain.yaml").read_text()
    assert [p.read_text() for p in history_versions(chain)] == [first]

    project.edit("config/operations/jitter.yaml", JITTER_2)
    project.snakemake()
    rows = read_rows(project)
    assert {r["param.scale"] for r in rows if r["operation"] == "jitter"} == {"2.0"}
    assert {r["param.jitter.scale"] for r in rows if r["step"] == "3"} == {"2.0"}
    versions = history_versions(chain)
    assert [p.read_text() for p in versions] == [first, (chain / "chain.yaml").read_text()]
    assert name_time(versions[0].name) < name_time(versions[1].name)


def test_results_summary_aggregates_each_score_over_runs(ran: Project) -> None:
    summary = json.loads(ran.opchain("results", "--summary", "--format", "json").stdout)
    assert {row["score"] for row in summary} == {"noise_mean"}
    assert len(summary) == 2  # jitter on inputs/a and on inputs/b, over the 2 runs
    rows = read_rows(ran)
    for group in summary:
        assert set(group) >= {"chain", "step", "operation", "input", "score", "mean", "std", "n"}
        values = [
            float(r["score.noise_mean"])
            for r in rows
            if r["operation"] == "jitter" and r["input"] == group["input"]
        ]
        assert group["n"] == 2 and group["mean"] == pytest.approx(sum(values) / 2)
        assert group["param.scale"] == 0.5 and group["param.add.value"] == 1
    text = ran.opchain("results", "--summary").stdout
    assert "noise_mean" in text and "inputs/a" in text and "mean" in text


def test_results_formats_score_filter_and_sort(ran: Project) -> None:
    rows = json.loads(ran.opchain("results", "--format", "json").stdout)
    assert len(rows) == 12 and all(isinstance(row["run"], int) for row in rows)
    only = json.loads(
        ran.opchain("results", "basic", "--score", "noise_mean", "--sort=-noise_mean",
                    "--format", "json").stdout
    )  # fmt: skip
    assert len(only) == 4 and {row["operation"] for row in only} == {"jitter"}
    scores = [row["score.noise_mean"] for row in only]
    assert scores == sorted(scores, reverse=True)
    assert (
        ran.opchain("results", "--format", "csv").stdout
        == (ran.chain_dir() / "results.csv").read_text()
    )
    wrong = ran.opchain("results", "--score", "nope", check=False)
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1
    assert wrong.stderr.startswith("opchain: no score 'nope'") and "noise_mean" in wrong.stderr


def test_results_of_a_chain_that_never_ran_is_one_line(project: Project) -> None:
    result = project.opchain("results", check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "no results yet" in result.stderr


def test_example_answers_accuracy_by_components_in_one_command(example: Project) -> None:
    rows = json.loads(
        example.opchain("results", "digits", "--summary", "--score", "accuracy",
                        "--format", "json").stdout
    )  # fmt: skip
    assert len(rows) == 4  # 2 inputs x components 10, 20; each over the 3 runs
    assert {(Path(r["input"]).name, r["param.pca.components"]) for r in rows} == {
        (half, k) for half in ("first_half", "second_half") for k in (10, 20)
    }
    assert all(r["n"] == 3 and r["std"] > 0 and 0.75 < r["mean"] <= 1 for r in rows)
    text = example.opchain("results", "digits", "--summary", "--score", "accuracy").stdout
    header = text.splitlines()[0].split()
    assert "param.pca.components" in header and "param.matrix" not in header  # only what varies


# Words YAML reads as something else, indicators, and what a metadata.yaml holds.
TRICKY_WORDS = [
    "", "-", "?", ":", "a:", "a:b", "---x", "...", "null", "Null", "~", "yes", "No", "on", "OFF",
    "true", "y", "1", "1.5", "1e3", "1.0e+3", "0x1F", "0o7", "010", "1_000", "1:20", "-1", "+.5",
    ".inf", ".NaN", "2026-12-05", "2026-12-05T06:24:37.128+00:00", "<<", "=", "a#b", "a #b", "#a",
    ",a", "cell,gene#UMIs", "%x", "@x", "!x", "&x", "*x", "|", ">", "it's", "a b", "x" * 200,
    "/abs/path", "operation_chain_results/2026_12_5/dataset_1", "3.11.7", "0b101", "é",
    "two\nlines", "word " * 40,
]  # fmt: skip
TRICKY_TEXT = st.one_of(
    st.sampled_from(TRICKY_WORDS),
    st.text(alphabet="aZ09_-.:/,#?'\"!&*|>%@`[]{}~+=e x\té", max_size=8),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.sampled_from([1e17, 1e-05, -2e300, -0.0, 0.1]),  # repr without a point: 1e+17
    TRICKY_TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(TRICKY_TEXT, inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(TRICKY_TEXT, VALUES, min_size=1, max_size=6))
def test_metadata_yaml_is_the_bytes_libyaml_writes(value: dict) -> None:
    """A result's metadata.yaml is written without PyYAML's representer where it can be, byte for
    byte as libyaml's emitter writes it (quoting, floats, empty and nested collections)."""
    expected = yaml.dump(
        value, Dumper=LIBYAML, sort_keys=False, allow_unicode=True, default_flow_style=False
    )
    assert dump_yaml(value) == expected


LINES = st.lists(
    st.sampled_from(
        ["a: 1", "a: x", "b: '1'", "c:", "  d: 2", "  e:", "    f: null", "- 1", "  - y", "-", "g: {}",
         "h: []", "i: 1.0e+17", "j: .nan", "k: 'it''s'", "l: \"q\"", "m: yes", "n: 010", "a: b: c",
         "o: ~", "p:  q", "'r': 1", "s: 2026-12-05", "", "t: [1, 2]", "u: &x 1", "v: *x"]
    ),
    max_size=8,
)  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.one_of(
        st.dictionaries(TRICKY_TEXT, VALUES, max_size=6).map(dump_yaml),
        LINES.map(lambda lines: "".join(line + "\n" for line in lines)),
    )
)
def test_metadata_yaml_is_read_as_yaml_reads_it(text: str) -> None:
    """A metadata.yaml is read without libyaml's loader where it is in the form opchain writes,
    to what YAML reads; any other text reads as YAML reads it, or fails as it fails."""
    try:
        expected = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as error:
        with pytest.raises(type(error)):
            load_yaml(text)
        return
    assert repr(load_yaml(text)) == repr(expected)  # repr: NaN equals NaN
