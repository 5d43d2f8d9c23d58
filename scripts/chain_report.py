"""Snakemake script of rule `chain_report`: a chain's results table and figures for the report."""

from pathlib import Path

from opchain.report import build_report

smk = snakemake  # type: ignore[name-defined]  # noqa: F821
build_report(
    Path(smk.input[0]), Path(smk.params.storage), Path(smk.output.table), Path(smk.output.figures)
)
