"""Snakemake script of rule `chain_report`: a chain's results table and figures for the report."""

from pathlib import Path

from opchain.report import build_report

results_csv = Path(snakemake.input[0])  # type: ignore[name-defined]  # noqa: F821
storage = results_csv.parents[2]  # <storage>/operation_chain_results/<chain>/results.csv
build_report(
    results_csv,
    storage,
    Path(snakemake.output.table),  # type: ignore[name-defined]  # noqa: F821
    Path(snakemake.output.figures),  # type: ignore[name-defined]  # noqa: F821
)
