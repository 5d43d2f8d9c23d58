"""Paired tests over a chain's results: is a score different between the values of a parameter?

A chain file's ``statistics`` entries (pySPACE's ``statistic`` operation) each name an operation, a
score, the parameter compared and what pairs rows (by default the input dataset and the run).
For every two values ``a < b`` of the parameter, the rows of ``a`` are paired with those of ``b``
that agree on ``pair_by`` and on every other parameter that varies among the rows of one value
(rows that still agree, e.g. the runs when ``pair_by`` leaves ``run`` out, are averaged first),
and scipy tests the differences ``b - a``: a paired t-test or Wilcoxon's signed-rank test. The
p-values of all pairs of one entry are corrected together (Holm or Bonferroni). The rule
``chain_statistics`` writes ``<chain dir>/statistics/<name>.csv`` whenever results.csv changes.
pandas and scipy are imported only here, when statistics are computed.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from opchain.atomic import write_atomic
from opchain.errors import OpchainError
from opchain.spec import ROW_KEYS, StatisticSpec
from opchain.table import RESULTS_CSV, read_results

__all__ = ["COLUMNS", "STATISTICS_DIR", "compare", "correct", "stats_table", "write_statistics"]

STATISTICS_DIR = "statistics"
COLUMNS = ["a", "b", "n", "mean_difference", "statistic", "p", "p_corrected"]


def column(name: str) -> str:
    """The results.csv column of a name as statistics entries write it."""
    return name if name in ROW_KEYS else f"param.{name}"


def correct(p: Any, method: str) -> np.ndarray:
    """Holm's step-down or Bonferroni's correction of the p-values ``p`` (NaN stays NaN and does not
    count as a test)."""
    p = np.asarray(p, dtype=float)
    corrected = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    if method == "bonferroni":
        corrected[tested] = np.minimum(1.0, m * p[tested])
        return corrected
    order = tested[np.argsort(p[tested], kind="stable")]  # Holm: smallest p first, times m, m-1...
    corrected[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return corrected


def _test(test: str, b: np.ndarray, a: np.ndarray) -> tuple[float, float]:
    """scipy's paired test of ``b - a``; NaN when it is undefined (fewer than 2 pairs, or no
    difference at all)."""
    from scipy import stats

    if len(a) < 2:
        return np.nan, np.nan
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # constant differences: scipy warns and returns NaN
        try:
            result = stats.ttest_rel(b, a) if test == "paired_t" else stats.wilcoxon(b, a)
        except ValueError:  # wilcoxon: every difference is zero
            return np.nan, np.nan
    return float(result.statistic), float(result.pvalue)


def compare(table: Any, entry: StatisticSpec) -> Any:
    """The statistics of one entry over a results table (a DataFrame of results.csv): a row per
    pair of values of ``entry.compare`` with COLUMNS."""
    import pandas as pd

    rows = table[table["operation"] == entry.operation].drop_duplicates(["step_dir", "dataset"])
    score, compared = f"score.{entry.score}", column(entry.compare)
    if score not in rows or rows[score].isna().all():
        known = ", ".join(c.removeprefix("score.") for c in rows if c.startswith("score."))
        raise OpchainError(
            f"statistics '{entry.name}': operation '{entry.operation}' has no score "
            f"'{entry.score}' in the results (scores: {known or 'none'})"
        )
    rows = rows[rows[score].notna()]
    within = rows.groupby(compared, dropna=False)
    others = [
        c
        for c in rows
        if c.startswith("param.") and c != compared and within[c].nunique(dropna=False).max() > 1
    ]
    keys = ["step", *(column(k) for k in entry.pair_by), *others]
    means = rows.groupby([*keys, compared], dropna=False)[score].mean().unstack(compared)
    found = []
    for a, b in itertools.combinations(sorted(means.columns), 2):
        pairs = means[[a, b]].dropna()
        statistic, p = _test(entry.test, pairs[b].to_numpy(float), pairs[a].to_numpy(float))
        difference = float((pairs[b] - pairs[a]).mean()) if len(pairs) else np.nan
        found.append([a, b, len(pairs), difference, statistic, p])
    result = pd.DataFrame(found, columns=COLUMNS[:-1])
    result["p_corrected"] = correct(result["p"], entry.correction)
    return result


def write_statistics(
    results: Path, entries: list[Mapping[str, Any]], chain_dir: Path, copies: Path
) -> None:
    """Every statistics entry of a chain, from its results table: ``<chain_dir>/statistics/
    <name>.csv`` (written atomically; files of entries no longer listed are removed), and a copy
    of each in the folder ``copies`` (the rule's output, shown in the report)."""
    table = read_results(results)
    texts = {e["name"]: compare(table, StatisticSpec(**e)).to_csv(index=False) for e in entries}
    folder = chain_dir / STATISTICS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.csv"):
        if stale.stem not in texts:
            stale.unlink()
    copies.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        write_atomic(folder / f"{name}.csv", text)
        write_atomic(copies / f"{name}.csv", text)


def stats_table(dirs: list[Path]) -> Any:
    """``opchain results --stats``: every statistics file of the chains in ``dirs``, as one
    table with the chain's and the entry's names first."""
    import pandas as pd

    parts = []
    for chain_dir in dirs:
        manifest = chain_dir / "chain.yaml"
        if not manifest.is_file():
            raise OpchainError(f"{chain_dir / RESULTS_CSV}: no results yet (run snakemake)")
        chain = yaml.safe_load(manifest.read_text(encoding="utf-8"))["chain"]
        for path in sorted((chain_dir / STATISTICS_DIR).glob("*.csv")):
            part = pd.read_csv(path, float_precision="round_trip")
            part.insert(0, "statistics", path.stem)
            part.insert(0, "chain", chain)
            parts.append(part)
    if not parts:
        where = ", ".join(str(d / STATISTICS_DIR) for d in dirs)
        raise OpchainError(
            f"no statistics in {where} (add statistics: to the chain file and run snakemake)"
        )
    return pd.concat(parts, ignore_index=True)
