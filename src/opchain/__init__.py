"""opchain: reproducible chains of operations on array datasets, compiled to Snakemake rules."""

from opchain.errors import DafError, OpchainError, PlanError, SpecError
from opchain.operations import Context, operation

__version__ = "0.1.0"
__all__ = [
    "Context",
    "DafError",
    "OpchainError",
    "PlanError",
    "SpecError",
    "__version__",
    "operation",
]
