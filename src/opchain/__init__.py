"""opchain: reproducible chains of operations on array datasets, compiled to Snakemake rules."""

from opchain.errors import DafError, OpchainError, PlanError, SpecError

__version__ = "0.1.0"
__all__ = ["DafError", "OpchainError", "PlanError", "SpecError", "__version__"]
