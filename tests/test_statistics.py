"""The statistics step: paired tests of a score between the values of a parameter, as scipy computes
them on the results table, corrected by Holm or Bonferroni; on the shipped digits chain through a
real `snakemake` run, and in `opchain results --stats`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import Project
from scipy import stats

from opchain.errors import OpchainError
from opchain.spec import StatisticSpec
from opchain.statistics import compare, correct
from opchain.table import read_results


def test_holm_and_bonferroni_match_hand_computed_values() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04, then
    # each at least the one before: 0.02, 0.03, 0.06, 0.06, put back in place.
    np.testing.assert_allclose(correct(p, "holm"), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(correct(p, "bonferroni"), [0.04, 0.16, 0.12, 0.02])
    np.testing.assert_allclose(correct([0.6, 0.7], "holm"), [1.0, 1.0])  # capped at 1
    # An undefined p-value is no test: m counts the others.
    np.testing.assert_allclose(correct([0.01, np.nan, 0.04], "holm"), [0.02, np.nan, 0.04])
    np.testing.assert_allclose(correct([0.01, np.nan, 0.04], "bonferroni"), [0.02, np.nan, 0.08])


def entry(**fields: object) -> StatisticSpec:
    base = {"name": "s", "operation": "fit", "score": "acc", "compare": "k",
            "pair_by": ("input", "run"), "test": "paired_t", "correction": "holm"}  # fmt: skip
    return StatisticSpec(**{**base, **fields})  # type: ignore[arg-type]


def synthetic() -> pd.DataFrame:
    """Results of an operation `fit` over k in {1, 2, 3} x depth in {4, 8}, 2 inputs x 4 runs."""
    rng = np.random.default_rng(1)
    rows = [
        {"operation": "fit", "step": 2, "step_dir": f"s{run}", "input": i, "run": run,
         "dataset": f"d{i}_{k}_{depth}", "param.k": k, "param.depth": depth,
         "score.acc": 0.5 + 0.05 * k + 0.01 * depth + rng.normal(0, 0.02)}
        for i in ("x", "y") for run in range(4) for k in (1, 2, 3) for depth in (4, 8)
    ]  # fmt: skip
    return pd.DataFrame([*rows, {"operation": "other", "step": 1, "step_dir": "o", "dataset": "o"}])


@pytest.mark.parametrize(("test", "correction"), [("paired_t", "holm"), ("wilcoxon", "bonferroni")])
def test_every_pair_of_values_is_tested_on_rows_that_agree_on_everything_else(
    test: str, correction: str
) -> None:
    """k takes 3 values: 3 pairs, each over the 16 rows that agree on input, run and depth (the
    other swept parameter), tested by scipy on b - a, corrected together."""
    table = synthetic()
    found = compare(table, entry(test=test, correction=correction))
    assert [(r.a, r.b, r.n) for r in found.itertuples()] == [(1, 2, 16), (1, 3, 16), (2, 3, 16)]
    fit = table[table["operation"] == "fit"]
    by = fit.pivot_table("score.acc", ["input", "run", "param.depth"], "param.k")
    expected_p = []
    for row in found.itertuples():
        a, b = by[row.a].to_numpy(), by[row.b].to_numpy()
        reference = stats.ttest_rel(b, a) if test == "paired_t" else stats.wilcoxon(b, a)
        assert row.statistic == pytest.approx(reference.statistic, rel=1e-12)
        assert row.p == pytest.approx(reference.pvalue, rel=1e-12)
        assert row.mean_difference == pytest.approx(np.mean(b - a), rel=1e-12)
        expected_p.append(reference.pvalue)
    np.testing.assert_allclose(found["p_corrected"], correct(expected_p, correction))


def test_rows_left_out_of_pair_by_are_averaged_first() -> None:
    """pair_by [input]: the runs of each input (and depth) are averaged, then paired."""
    found = compare(synthetic(), entry(pair_by=("input",)))
    fit = synthetic().query("operation == 'fit'")
    means = fit.pivot_table("score.acc", ["input", "param.depth"], "param.k", aggfunc="mean")
    reference = stats.ttest_rel(means[2], means[1])
    first = found.iloc[0]
    assert first["n"] == 4 and first["p"] == pytest.approx(reference.pvalue, rel=1e-12)


def test_a_score_the_results_do_not_have_is_one_line() -> None:
    with pytest.raises(
        OpchainError, match="statistics 's': operation 'fit' has no score 'accuracy'"
    ):
        compare(synthetic(), entry(score="accuracy"))


def test_statistics_of_the_digits_example_equal_scipy_on_its_results(example: Project) -> None:
    """The shipped digits chain's entry: accuracy of nearest_centroid between pca.components 10
    and 20, paired by input and run (2 inputs x 3 runs), paired t-test, Holm."""
    chain = next(
        d for d in example.storage.glob("operation_chain_results/*") if (d / "statistics").is_dir()
    )
    written = pd.read_csv(chain / "statistics" / "accuracy_by_components.csv")
    results = read_results(chain / "results.csv")
    rows = results[results["operation"] == "nearest_centroid"]
    by = rows.pivot_table("score.accuracy", ["input", "run"], "param.pca.components")
    reference = stats.ttest_rel(by[20].to_numpy(float), by[10].to_numpy(float))
    (row,) = written.itertuples()
    assert (row.a, row.b, row.n) == (10, 20, 6)
    assert row.mean_difference == pytest.approx(float((by[20] - by[10]).mean()), rel=1e-12)
    assert row.statistic == pytest.approx(reference.statistic, rel=1e-12)
    assert row.p == pytest.approx(reference.pvalue, rel=1e-12)
    assert row.p_corrected == row.p  # one pair: Holm leaves it
    copy = example.root / "reports" / "digits" / "statistics" / "accuracy_by_components.csv"
    assert copy.read_text() == (chain / "statistics" / "accuracy_by_components.csv").read_text()
    shown = example.opchain("results", "--stats").stdout.splitlines()
    assert shown[0].split() == ["chain", "statistics", "a", "b", "n", "mean_difference",
                                "statistic", "p", "p_corrected"]  # fmt: skip
    assert shown[1].split()[:5] == ["digits", "accuracy_by_components", "10", "20", "6"]
    as_csv = example.opchain("results", "digits", "--stats", "--format", "csv").stdout
    assert as_csv.splitlines()[1].startswith("digits,accuracy_by_components,10,20,6,")
