"""Snakemake script of rule `chain_manifest`: chain.yaml (every version kept in history/) and
results.csv in the chain's directory, from the compiled chain the run started with, and their
copies as the rule's outputs."""

import json
import shutil
import sys
from pathlib import Path

from opchain.atomic import set_durable
from opchain.errors import StorageError, storage_errors
from opchain.table import write_chain_outputs

smk = snakemake  # type: ignore[name-defined]  # noqa: F821
set_durable(smk.config.get("durable", True))
manifest = json.loads(Path(smk.params.spec).read_text(encoding="utf-8"))
storage = Path(manifest.pop("storage"))
chain_dir = storage / manifest.pop("dir")
try:
    with storage_errors(chain_dir):
        write_chain_outputs(storage, chain_dir, manifest)
except StorageError as error:  # a full disk or a read-only root: one line, not a traceback
    sys.exit(f"opchain: {error}")
for name, output in (("chain.yaml", smk.output.chain), ("results.csv", smk.output.table)):
    shutil.copyfile(chain_dir / name, output)
