"""opchain: reproducible chains of operations on array datasets, compiled to Snakemake rules."""

from opchain.errors import DafError, OpchainError, PlanError, SpecError
from opchain.operations import Context, operation
from opchain.results import Result, load_result

__version__ = "0.1.0"
__all__ = [
    "Context",
    "DafError",
    "OpchainError",
    "PlanError",
    "Result",
    "SpecError",
    "__version__",
    "load_result",
    "operation",
]
