"""Where operations come from: built in, installed packages, and the project's own folder.

A package registers operations under the entry-point group ``opchain.operations`` (``name =
"package.module:function"``); a project keeps its operations as ``.py`` files in a folder named in
the config (``operations_code``, default ``scripts/operations``), found without installing
anything. A spec names any of them by its plain name (``type: pca``); a name that two sources
define is an error naming both, never a silent choice. (``type: module:function`` names an
importable module directly and bypasses these sources.)
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from opchain.errors import SpecError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = ["ENTRY_POINTS", "Source", "find", "project_folder", "set_project_folder", "sources"]

ENTRY_POINTS = "opchain.operations"
_project: list[Path] = []  # the project's operations folder, as the config names it


@dataclass(frozen=True)
class Source:
    name: str  # the operation's name, as specs write it
    where: str  # "built-in", "package NAME (module:function)" or "project FILE"
    load: Callable[[], object]  # -> Operation (imports what it must)


def set_project_folder(folder: Path | None) -> None:
    """The folder of the project's own operations (the config's ``operations_code``)."""
    _project[:] = [folder] if folder is not None else []


def project_folder() -> Path | None:
    return _project[0] if _project else None


def sources() -> dict[str, list[Source]]:
    """Every available operation by name, with every source that defines it."""
    from opchain.operations import registered_operations

    found: dict[str, list[Source]] = {}
    for name, op in registered_operations().items():
        found.setdefault(name, []).append(Source(name, "built-in", lambda op=op: op))
    for entry in _entry_points():
        where = f"package {entry.dist.name if entry.dist else '?'} ({entry.value})"
        source = Source(entry.name, where, lambda entry=entry: _load_entry(entry))
        found.setdefault(entry.name, []).append(source)
    for folder in _project:
        for path in sorted(folder.glob("*.py")) if folder.is_dir() else ():
            for op in _file_operations(path.resolve()):
                source = Source(op.name, f"project {path}", lambda op=op: op)
                found.setdefault(op.name, []).append(source)
    return found


def find(name: str, *, builtins: dict[str, object], checked: bool = False) -> object:
    """The operation ``name`` from the one source that defines it. ``checked``: the planner has
    made sure only one source does, so a job takes the first it finds, cheapest first (reading
    the installed packages' entry points costs ~25 ms, as much as a job's own work)."""
    if checked:
        if name in builtins:
            return builtins[name]
        for path in _project_files():
            for op in _file_operations(path.resolve()):
                if op.name == name:  # type: ignore[attr-defined]
                    return op
    candidates = sources().get(name, [])
    if len(candidates) > 1:
        places = " and by ".join(c.where for c in candidates)
        raise SpecError(f"operation '{name}' is defined by {places}: rename one of them")
    if not candidates:
        raise SpecError(
            f"unknown operation '{name}' (available: {', '.join(sorted(sources()))}; "
            "or name a user operation as module:function)"
        )
    return candidates[0].load()


@cache
def _entry_points() -> tuple[EntryPoint, ...]:
    from importlib.metadata import entry_points  # ~18 ms: only when a name is not a built-in

    return tuple(entry_points(group=ENTRY_POINTS))


def _project_files() -> list[Path]:
    return [p for folder in _project if folder.is_dir() for p in folder.glob("*.py")]


def _load_entry(entry: EntryPoint) -> object:
    try:
        function = entry.load()
    except (Exception, SystemExit) as error:
        raise SpecError(
            f"cannot load operation '{entry.name}' ({entry.value}): {type(error).__name__}: {error}"
        ) from None
    return _declared(function, f"{entry.value} (entry point '{entry.name}')")


@cache
def _file_operations(path: Path) -> tuple[object, ...]:
    """The operations a project file declares (it is imported once per process)."""
    module_name = f"opchain_project_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as error:
        del sys.modules[module_name]
        line = error.lineno if isinstance(error, SyntaxError) else _line_in(error, path)
        raise SpecError(
            f"{path}:{line}: cannot load the project's operations: {type(error).__name__}: {error}"
        ) from None
    return tuple(
        value.__opchain_operation__
        for value in vars(module).values()
        if callable(value) and hasattr(value, "__opchain_operation__")
    )


def _line_in(error: BaseException, path: Path) -> int | str:
    tb, line = error.__traceback__, "?"
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).resolve() == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _declared(function: object, what: str) -> object:
    op = getattr(function, "__opchain_operation__", None)
    if op is None:
        raise SpecError(f"{what} is not an operation: decorate it with @opchain.operation(...)")
    return op


def catalog() -> str:
    """``opchain operations``: every available operation, its one-line doc and where it is from."""
    rows = []
    for name, found in sorted(sources().items()):
        for source in found:
            op = source.load()
            doc = _doc(op).splitlines()
            rows.append((name, source.where, doc[0] if doc else ""))
    width = max((len(r[0]) for r in rows), default=0)
    return "".join(f"{n:<{width}}  {d}  [{w}]\n" for n, w, d in rows)


def details(name: str) -> str:
    """``opchain operations NAME``: parameters, randomness, resources, and an operation file that
    validates as printed."""
    from opchain.operations import get_operation

    op = get_operation(name)
    lines = [f"{op.name}: {_doc(op)}", "parameters:"]
    for key, schema in op.parameters.items():
        facts = [str(schema.get("type", "any"))]
        if "default" in schema:
            facts.append(f"default {schema['default']!r}")
        facts += [f"{word} {schema[k]}" for k, word in RANGE_WORDS.items() if k in schema]
        if "enum" in schema:
            facts.append(f"one of {schema['enum']}")
        if key in op.required:
            facts.append("required")
        about = f": {schema['description']}" if "description" in schema else ""
        lines.append(f"  {key} ({', '.join(facts)}){about}")
    lines.append(
        f"random: {'yes: it gets ctx.seed and ctx.rng, one result per run' if op.random else 'no'}"
    )
    lines.append(f"resources: {op.resources or 'the profile defaults'}")
    lines.append("example operation file:")
    example = {key: example_value(op.parameters[key]) for key in op.required}
    body = f"type: {name}\n" + (f"parameters: {_flow(example)}\n" if example else "")
    return "\n".join(lines) + "\n" + body


RANGE_WORDS = {
    "minimum": ">=",
    "exclusiveMinimum": ">",
    "maximum": "<=",
    "exclusiveMaximum": "<",
    "pattern": "matching",
}


def example_value(schema: dict) -> object:
    """A value the schema accepts: its first example, default or enum value, or its minimum."""
    for key in ("examples", "enum"):
        if schema.get(key):
            return schema[key][0]
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
    return {"integer": int(low) + 1, "number": low + 1, "boolean": False}.get(kind, "value")


def _doc(op: object) -> str:
    """An operation's docstring as plain text (reStructuredText's double backquotes dropped)."""
    return (op.function.__doc__ or "").strip().replace("``", "")  # type: ignore[attr-defined]


def _flow(values: dict) -> str:
    import json

    return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in values.items()) + "}"
