"""Exceptions whose message is a complete, one-line user-facing explanation."""

__all__ = ["DafError", "OpchainError", "PlanError", "SpecError"]


class OpchainError(Exception):
    """A user error: the CLI and the Snakefile print its message without a traceback."""


class DafError(OpchainError):
    """A daf dataset is missing, malformed, or was asked for something it does not hold."""


class SpecError(OpchainError):
    """A chain or operation YAML file is malformed or names something that does not exist."""


class PlanError(OpchainError):
    """The plan cannot be made or reserved (e.g. a concurrent planner took the same names)."""
