"""Snakemake script of rule `step`: run one job of the plan (its spec arrives as params.spec)."""

from opchain.run import main

main(snakemake)  # type: ignore[name-defined]  # noqa: F821  (injected by Snakemake)
