"""Snakemake script of rule `chain_statistics`: a chain's statistics files, from its results.csv."""

import sys
from pathlib import Path

from opchain.errors import OpchainError
from opchain.statistics import write_statistics

smk = snakemake  # type: ignore[name-defined]  # noqa: F821
try:
    write_statistics(
        Path(smk.input[0]), smk.params.entries, Path(smk.params.chain_dir), Path(smk.output[0])
    )
except OpchainError as error:  # a score the results do not have: one line, no traceback
    sys.exit(f"opchain: {error}")
