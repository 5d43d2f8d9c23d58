"""Snakemake script of rule `chain_manifest`: chain.yaml and results.csv of one chain."""

from opchain.run import write_chain

write_chain(snakemake.params.spec, snakemake.output.chain, snakemake.output.table, list(snakemake.input.markers))  # type: ignore[name-defined]  # noqa: F821
