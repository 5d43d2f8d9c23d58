"""Snakemake script of rule `chain_manifest`: chain.yaml (every version kept in history/) and
results.csv, from the compiled chain the run started with. Then the markers of the batches it
waited for are dropped: the datasets on disk say what is done."""

import json
from pathlib import Path

from opchain.table import write_chain_outputs

smk = snakemake  # type: ignore[name-defined]  # noqa: F821
manifest = json.loads(Path(smk.params.spec).read_text(encoding="utf-8"))
storage = Path(manifest.pop("storage"))
chain_dir = Path(smk.output.chain).parent
manifest.pop("dir")
write_chain_outputs(storage, chain_dir, manifest)
for marker in smk.input.markers:
    Path(marker).unlink(missing_ok=True)
