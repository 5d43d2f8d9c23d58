"""Snakemake script of rule `chain_manifest`: chain.yaml (versions kept in history/) and results.csv."""

import json
from pathlib import Path

from opchain.table import write_chain_outputs

chain_yaml = Path(snakemake.output[0])  # type: ignore[name-defined]  # noqa: F821
manifest = json.loads(snakemake.params.manifest)  # type: ignore[name-defined]  # noqa: F821
storage = chain_yaml.parents[2]  # <storage>/operation_chain_results/<chain>/chain.yaml
write_chain_outputs(storage, chain_yaml.parent, manifest)
