"""Chain and operation YAML files: loading, validation, and errors that say file, key and line.

An operation file names a registered operation (``type``) and its parameters in one of three forms:
``parameters`` (one setting), ``parameter_ranges`` (the cartesian product of lists) or
``parameter_settings`` (an explicit list of settings). A chain file names an ``input_path`` (a summary
under the storage root), ``runs`` and a list of ``operations``, each an operation file name or
``{operation_spec: FILE, overridden_params: {...}}``. The shapes follow pySPACE's specs.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from opchain.errors import SpecError
from opchain.operations import Operation, get_operation

__all__ = [
    "ChainSpec",
    "OperationSpec",
    "YamlDoc",
    "load_chain",
    "load_operation",
    "load_yaml",
]

KeyPath = tuple[str | int, ...]
PARAMETER_FORMS = ("parameters", "parameter_ranges", "parameter_settings")


@dataclass(frozen=True)
class YamlDoc:
    """A parsed YAML file that remembers the line of every key, for error messages."""

    path: Path
    data: Any
    lines: dict[KeyPath, int]

    def error(self, where: KeyPath, message: str) -> SpecError:
        """A SpecError naming the file, the key path and (where known) its line."""
        line = next(
            (self.lines[where[:n]] for n in range(len(where), -1, -1) if where[:n] in self.lines),
            None,
        )
        place = f"{self.path}:{line}" if line else str(self.path)
        key = ".".join(str(k) for k in where)
        return SpecError(f"{place}: {key + ': ' if key else ''}{message}")


# libyaml's composer where available: planning parses every operation file of every chain.
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SCALARS = yaml.SafeLoader("")  # one constructor for every scalar node
_PARSED: dict[tuple[Path, int, int], YamlDoc] = {}  # chains share operation files: parse once


def load_yaml(path: Path) -> YamlDoc:
    """Parse a YAML file into plain data, recording the 1-based line of every mapping key."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    key = (path, stat.st_mtime_ns, stat.st_size)
    if key not in _PARSED:
        _PARSED[key] = _parse(path)
    return _PARSED[key]


def _parse(path: Path) -> YamlDoc:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: cannot read: {error}") from None
    try:
        node = yaml.compose(text, Loader=_COMPOSER)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or str(error)
        raise SpecError(f"{where}: malformed YAML: {problem}") from None
    lines: dict[KeyPath, int] = {(): 1}
    data = _construct(node, (), lines) if node is not None else None
    _SCALARS.constructed_objects.clear()  # it remembers every node it built; drop them
    return YamlDoc(path, data, lines)


def _construct(node: yaml.Node, where: KeyPath, lines: dict[KeyPath, int]) -> Any:
    if isinstance(node, yaml.MappingNode):
        result = {}
        for key_node, value_node in node.value:
            key = _SCALARS.construct_object(key_node)
            lines[(*where, key)] = key_node.start_mark.line + 1
            result[key] = _construct(value_node, (*where, key), lines)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            lines[(*where, i)] = item.start_mark.line + 1
            items.append(_construct(item, (*where, i), lines))
        return items
    return _SCALARS.construct_object(node)


@dataclass(frozen=True)
class OperationSpec:
    """One operation file, resolved: the operation and every parameter setting it expands to."""

    path: Path
    type: str  # as the spec names it: a built-in name or module:function
    operation: Operation
    settings: tuple[dict[str, Any], ...]  # validated, defaults filled in
    runs: int
    overrides: dict[str, Any]  # a chain's overridden_params, applied to every setting
    batch: int | str | None = None  # datasets per job ("auto" or N); None: the config's


@dataclass(frozen=True)
class ChainSpec:
    name: str
    path: Path
    input_path: str
    runs: int
    steps: tuple[OperationSpec, ...]

    @property
    def origin(self) -> str:
        """The chain file's absolute path: tells another project's chain of the same name apart."""
        return str(self.path.resolve())


def load_operation(path: Path, overrides: Mapping[str, Any] | None = None) -> OperationSpec:
    """Load an operation file, apply ``overrides`` and validate every setting it expands to."""
    doc = load_yaml(path)
    spec = _mapping(doc, (), doc.data)
    _no_unknown_keys(doc, spec, {"type", "description", "runs", "batch", *PARAMETER_FORMS})
    if "type" not in spec:
        raise doc.error((), "missing key 'type' (the operation to run)")
    try:
        operation = get_operation(spec["type"])
    except SpecError as error:
        raise doc.error(("type",), str(error)) from None
    forms = [form for form in PARAMETER_FORMS if form in spec]
    if len(forms) > 1:
        raise doc.error((forms[1],), f"use only one of {', '.join(PARAMETER_FORMS)}")
    form = forms[0] if forms else "parameters"
    raw = spec.get(form, {} if form != "parameter_settings" else [{}])
    settings = _expand(doc, form, raw, dict(overrides or {}))
    validated = tuple(
        _validate(doc, operation, (form,) if len(settings) == 1 else (form, i), s)
        for i, s in enumerate(settings)
    )
    runs = _positive_int(doc, ("runs",), spec.get("runs", 1))
    batch = spec.get("batch")
    if batch not in (None, "auto"):
        batch = _positive_int(doc, ("batch",), batch)
    return OperationSpec(
        path, spec["type"], operation, validated, runs, dict(overrides or {}), batch
    )


def _expand(doc: YamlDoc, form: str, raw: Any, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """Turn one of the three parameter forms into a list of settings, overrides applied."""
    if form == "parameter_settings":
        if not isinstance(raw, list) or not raw:
            raise doc.error((form,), "must be a non-empty list of parameter mappings")
        return [{**_mapping(doc, (form, i), s), **overrides} for i, s in enumerate(raw)]
    raw = {**_mapping(doc, (form,), raw), **overrides}
    if form == "parameters":
        return [raw]
    for key, values in raw.items():
        if not isinstance(values, list) or not values:
            raise doc.error((form, key), "a parameter range must be a non-empty list")
    return [dict(zip(raw, combo, strict=True)) for combo in itertools.product(*raw.values())]


def _validate(
    doc: YamlDoc, operation: Operation, where: KeyPath, setting: dict[str, Any]
) -> dict[str, Any]:
    full = {**operation.defaults, **setting}
    error = jsonschema.exceptions.best_match(operation.validator.iter_errors(full))
    if error is not None:
        key = tuple(error.absolute_path)
        raise doc.error((*where, *key), f"{error.message} (operation '{operation.name}')")
    return full


def load_chain(path: Path, operations_dir: Path) -> ChainSpec:
    """Load a chain file; its operation files are looked up in ``operations_dir``."""
    doc = load_yaml(path)
    spec = _mapping(doc, (), doc.data)
    _no_unknown_keys(doc, spec, {"input_path", "runs", "operations", "description"})
    for key in ("input_path", "operations"):
        if key not in spec:
            raise doc.error((), f"missing key '{key}'")
    if not isinstance(spec["input_path"], str) or not spec["input_path"]:
        raise doc.error(("input_path",), "must be a path (a summary under the storage root)")
    items = spec["operations"]
    if not isinstance(items, list) or not items:
        raise doc.error(("operations",), "must be a non-empty list of operation files")
    steps = tuple(_chain_item(doc, i, item, operations_dir) for i, item in enumerate(items))
    runs = _positive_int(doc, ("runs",), spec.get("runs", 1))
    return ChainSpec(path.stem, path, spec["input_path"], runs, steps)


def _chain_item(doc: YamlDoc, i: int, item: Any, operations_dir: Path) -> OperationSpec:
    where: KeyPath = ("operations", i)
    overrides: dict[str, Any] = {}
    if isinstance(item, dict):
        _no_unknown_keys(doc, item, {"operation_spec", "overridden_params"}, where)
        name = item.get("operation_spec")
        overrides = _mapping(doc, (*where, "overridden_params"), item.get("overridden_params", {}))
    else:
        name = item
    if not isinstance(name, str) or not name:
        raise doc.error(where, "must be an operation file name or {operation_spec: FILE, ...}")
    path = operations_dir / name
    if not path.is_file():
        raise doc.error(where, f"no operation file '{name}' in {operations_dir}")
    return load_operation(path, overrides)


def _mapping(doc: YamlDoc, where: KeyPath, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise doc.error(where, f"must be a mapping, not {type(value).__name__}")
    return value


def _no_unknown_keys(
    doc: YamlDoc, spec: dict[str, Any], known: set[str], where: KeyPath = ()
) -> None:
    for key in spec:
        if key not in known:
            raise doc.error(
                (*where, key), f"unknown key (expected one of: {', '.join(sorted(known))})"
            )


def _positive_int(doc: YamlDoc, where: KeyPath, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise doc.error(where, f"must be a positive integer, not {value!r}")
    return value
