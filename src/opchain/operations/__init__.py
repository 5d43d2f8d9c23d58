"""The operation registry: what an operation is, how it is declared, and how a spec names one.

An operation is a Python function ``fn(data, params, ctx)`` registered by name with a JSON schema for
its parameters, a version and whether it is random. ``data`` is a daf reader over one input dataset,
``params`` the validated parameters (defaults filled in), and ``ctx`` a :class:`Context` giving the
output writer, the seed and random generator (random operations only), the datastore and a logger.
A *combination* operation (``combine=`` one of :data:`COMBINATIONS`) works on the datasets of a
summary instead: ``data`` maps each member of one combination to its reader (training members
first), and ``ctx.combination`` names the combination and its ``train`` and ``test`` members.
User operations are named ``module:function`` in a spec; the function must be decorated with
:func:`operation`.
"""

from __future__ import annotations

import importlib
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from opchain.errors import SpecError

__all__ = [
    "COMBINATIONS",
    "Context",
    "Operation",
    "get_operation",
    "operation",
    "registered_operations",
]

# How a combination operation combines the datasets of a summary (see opchain.plan.combinations):
# every ordered pair X_vs_Y, every Rest_vs_X (X_vs_Rest with a true `reverse` parameter), or all.
COMBINATIONS = ("pairs", "leave_one_out", "all")


class Context:
    """What an operation gets besides its input and parameters."""

    def __init__(
        self,
        output: Any,
        datastore: Any,
        log: logging.Logger,
        seed: int | None,
        random: bool,
        combination: dict[str, Any] | None = None,
        threads: int = 1,
    ) -> None:
        self.output = output  # a daf Writer for the result dataset
        self.datastore = datastore  # an opchain.datastore.DataStore, saved beside the dataset
        self.log = log
        self.seed = seed  # the run index (of the nearest random step, for deterministic ones)
        self.random = random
        # A combination operation's: {"name": "a_vs_b", "train": ["a"], "test": ["b"]}.
        self.combination = combination
        # The cores this dataset's arithmetic may use: the job's threads no other dataset of the
        # batch is computed with (streaming built-ins cut their blocks into pieces for them).
        self.threads = threads
        self.results: dict[str, Any] = {}  # scalar scores, kept in metadata.yaml
        # name -> matplotlib Figure (opchain.report.new_figure), saved as PNG beside the datastore
        self.figures: dict[str, Any] = {}

    @cached_property
    def rng(self) -> np.random.Generator | None:
        """A numpy Generator seeded with ``seed`` for random operations, None for deterministic
        ones. Made on first use: importing numpy.random costs a job ~10 ms."""
        return np.random.default_rng(self.seed) if self.random else None


OperationFunction = Callable[[Any, dict[str, Any], Context], None]
# A check across parameters, run on each setting when the plan is made: None if the setting is
# fine, else (the parameter to blame, what is wrong), e.g. ("fold", "fold 5 is not one of ...").
ParameterCheck = Callable[[dict[str, Any]], tuple[str, str] | None]


@dataclass(frozen=True)
class Operation:
    name: str
    function: OperationFunction
    parameters: dict[str, Any]  # JSON schema "properties" of the parameter mapping
    required: tuple[str, ...]
    random: bool
    version: str
    resources: dict[str, int]  # cluster resources (mem_mb, runtime, cpus_per_task) it asks for
    check: ParameterCheck | None = None  # what the schema cannot say: checks across parameters
    combine: str | None = None  # one of COMBINATIONS for an operation over a summary
    # Called by the planner on the input datasets a first step combines ({name: reader}, one
    # setting): raises OpchainError for members it cannot combine, before anything runs.
    check_members: Callable[[dict[str, Any], dict[str, Any]], None] | None = None

    @cached_property
    def schema(self) -> dict[str, Any]:
        """The JSON schema of a setting: its parameters, the required ones and no other."""
        return {
            "type": "object",
            "properties": self.parameters,
            "required": list(self.required),
            "additionalProperties": False,
        }

    @cached_property
    def validator(self) -> Any:  # a jsonschema validator
        import jsonschema  # planning needs it, jobs do not: keep it out of every job's start-up

        return jsonschema.Draft202012Validator(self.schema)

    @property
    def defaults(self) -> dict[str, Any]:
        return {k: v["default"] for k, v in self.parameters.items() if "default" in v}

    @cached_property
    def code_hash(self) -> str:
        """Changes when the operation's source or declared version changes: it reruns its steps."""
        import hashlib  # planning needs these, jobs do not: keep them out of every job's start-up
        import inspect

        source = inspect.getsource(self.function)
        return hashlib.sha256(f"{self.version}\n{source}".encode()).hexdigest()[:16]


_REGISTRY: dict[str, Operation] = {}


def operation(
    name: str,
    *,
    parameters: dict[str, Any],
    required: tuple[str, ...] | None = None,
    random: bool = False,
    version: str = "1",
    resources: dict[str, int] | None = None,
    check: ParameterCheck | None = None,
    combine: str | None = None,
    check_members: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
) -> Callable[[OperationFunction], OperationFunction]:
    """Register ``fn`` as operation ``name`` (for user modules: declare it, it is found by path).

    ``required`` defaults to every parameter without a default: a spec that omits one would give
    the function no value for it, and every job would fail with a KeyError instead of the plan
    with one line. Pass ``required`` explicitly to make such a parameter optional.

    ``check(params)`` judges what the JSON schema cannot, relations between parameters: it gets
    each setting (valid by the schema, defaults filled in) when the plan is made and returns None,
    or ``(parameter, problem)``, which refuses the plan with one line at that parameter's place.
    ``combine`` makes it an operation over the datasets of a summary: ``"pairs"`` (a result per
    ordered pair, ``X_vs_Y``: train on X, test on Y), ``"leave_one_out"`` (``Rest_vs_X``; with a
    true ``reverse`` parameter ``X_vs_Rest``) or ``"all"`` (one result of every dataset).
    ``check_members(members, params)`` (operations over a summary) gets the input datasets a first
    step combines, as readers by name, and raises OpchainError for members it cannot combine.
    """
    if combine not in (None, *COMBINATIONS):
        raise ValueError(f"operation {name!r}: combine must be one of {COMBINATIONS}")
    if required is None:
        required = tuple(key for key, schema in parameters.items() if "default" not in schema)

    def register(fn: OperationFunction) -> OperationFunction:
        op = Operation(
            name,
            fn,
            parameters,
            tuple(required),
            random,
            version,
            resources or {},
            check,
            combine,
            check_members,
        )
        fn.__opchain_operation__ = op  # type: ignore[attr-defined]
        if fn.__module__.startswith("opchain."):
            _REGISTRY[name] = op
        return fn

    return register


def registered_operations() -> dict[str, Operation]:
    return dict(_REGISTRY)


def get_operation(name: Any, *, checked: bool = False) -> Operation:
    """The operation a spec's ``type`` names: a plain name (built in, from an installed package or
    the project's folder: see :mod:`opchain.operations.sources`) or ``module:function``.
    ``checked``: the planner already made sure the name is unambiguous (a job's lookup)."""
    if not isinstance(name, str) or not name:
        raise SpecError(f"must name an operation, not {name!r}")
    if ":" not in name:
        from opchain.operations import sources

        return sources.find(name, builtins=_REGISTRY, checked=checked)  # type: ignore[return-value]
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as error:  # the user's module ran and failed, however it fails
        missing = getattr(error, "name", None) if isinstance(error, ModuleNotFoundError) else None
        if missing and f"{module_name}.".startswith(f"{missing}."):
            raise SpecError(f"cannot load operation '{name}': {error}") from None
        raise SpecError(
            f"cannot load operation '{name}': importing module '{module_name}' failed"
            f"{_raised_at(error)}: {type(error).__name__}: {_detail(error)}"
        ) from None
    fn = getattr(module, attribute, None)
    if fn is None:
        raise SpecError(
            f"cannot load operation '{name}': module '{module_name}' has no '{attribute}'"
        )
    op = getattr(fn, "__opchain_operation__", None)
    if op is None:
        raise SpecError(f"'{name}' is not an operation: decorate it with @opchain.operation(...)")
    return op


def _raised_at(error: BaseException) -> str:
    """`` at file:line`` of the user's code that raised ``error`` (a SyntaxError's own place)."""
    if isinstance(error, SyntaxError) and error.filename:
        return f" at {_relative(error.filename)}:{error.lineno}"
    frames = traceback.extract_tb(error.__traceback__)
    ours = ("<frozen", importlib.__path__[0], __file__)
    user = [frame for frame in frames if not frame.filename.startswith(ours)]
    if not user:
        return ""
    module_file = user[0].filename  # the module's top level; report its last line on the stack
    line = [frame for frame in user if frame.filename == module_file][-1].lineno
    return f" at {_relative(module_file)}:{line}"


def _detail(error: BaseException) -> str:
    return str(error.msg if isinstance(error, SyntaxError) else error)  # msg: without its place


def _relative(filename: str) -> str:
    path = Path(filename)
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else filename


from opchain.operations import builtin, pooling, reshape  # noqa: E402, F401  (the built-ins)
