"""Snakemake script of rule `chain_manifest`: write chain.yaml from the compiled chain."""

from opchain.run import write_manifest

write_manifest(snakemake.output[0], snakemake.params.manifest)  # type: ignore[name-defined]  # noqa: F821
