"""Chain and operation YAML files: loading, validation, and errors that say file, key and line.

An operation file names a registered operation (``type``) and its parameters in one of three forms:
``parameters`` (one setting), ``parameter_ranges`` (the cartesian product of lists) or
``parameter_settings`` (an explicit list of settings). A chain file names an ``input_path`` (a summary
under the storage root), ``runs`` and a list of ``operations``, each an operation file name or
``{operation_spec: FILE, overridden_params: {...}}``. The shapes follow pySPACE's specs.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from opchain.errors import SpecError
from opchain.operations import Operation, get_operation
from opchain.project import WORKFLOW

__all__ = [
    "ChainSpec",
    "OperationSpec",
    "YamlDoc",
    "load_chain",
    "load_config",
    "load_operation",
    "load_yaml",
]

KeyPath = tuple[str | int, ...]
PARAMETER_FORMS = ("parameters", "parameter_ranges", "parameter_settings")
CONFIG_SCHEMA = WORKFLOW / "workflow" / "schemas" / "config.schema.yaml"
# A grid is refused before it is built: its settings are made in memory, and each is a dataset.
MAX_SETTINGS = 1_000_000


@dataclass(frozen=True)
class YamlDoc:
    """A parsed YAML file that remembers the line of every key, for error messages."""

    path: Path
    data: Any
    lines: dict[KeyPath, int]

    def error(self, where: KeyPath, message: str, line_of: KeyPath | None = None) -> SpecError:
        """A SpecError naming the file, the key path and the line of ``line_of`` (default:
        ``where``; else of its nearest ancestor with a line), on one line whatever it quotes."""
        at = where if line_of is None else line_of
        line = next(self.lines[at[:n]] for n in range(len(at), -1, -1) if at[:n] in self.lines)
        key = ".".join(str(k) for k in where)
        return SpecError(shown(f"{self.path}:{line}: {key + ': ' if key else ''}{message}"))


# libyaml's parser where available (planning parses every operation file of every chain). Only its
# event stream is used: libyaml's composer recurses in C and crashes on deep nesting, and PyYAML's
# constructors follow tags to Python objects. ``_Builder`` makes plain data from the events with
# explicit stacks, so every limit below is checked before anything large or deep is built.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SCALARS = yaml.SafeLoader("")  # resolves plain scalars' types and constructs them
MAX_DEPTH = 100  # nested collections; specs need a handful, JSON and YAML writers recurse
MAX_ALIAS_NODES = 100_000  # nodes that aliases may repeat in all: refuses "billion laughs"
_TAG = "tag:yaml.org,2002:"
_PLAIN_DATA = {f"{_TAG}{kind}" for kind in ("null", "bool", "int", "float", "str")}
# Control characters have no place in specs (NUL breaks every path and name); tab and newline may
# appear in descriptions, and are refused where a path or name is expected.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_ANY_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_PARSED: dict[tuple[Path, int, int], YamlDoc] = {}  # chains share operation files: parse once


def shown(text: object) -> str:
    """``text`` on one line: control characters as escapes (a message names what it got)."""
    return _ANY_CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))


def load_yaml(path: Path) -> YamlDoc:
    """Parse a YAML file into plain data (JSON's types), recording the 1-based line of every key.

    Refused with a SpecError naming file and line: malformed YAML, several documents, tags other
    than YAML's plain ones (``!!python/...``, ``!custom``), merge keys, collections as keys,
    duplicate keys, control characters, nesting deeper than MAX_DEPTH, and aliases that repeat
    more than MAX_ALIAS_NODES nodes.
    """
    try:
        stat = path.stat()
    except (OSError, ValueError) as error:  # ValueError: a NUL in the path
        problem = (
            "no such file" if isinstance(error, FileNotFoundError) else f"cannot read: {error}"
        )
        raise SpecError(f"{shown(path)}: {problem}") from None
    key = (path, stat.st_mtime_ns, stat.st_size)
    if key not in _PARSED:
        _PARSED[key] = _parse(path)
    return _PARSED[key]


def _parse(path: Path) -> YamlDoc:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"{shown(path)}: cannot read: {error}") from None
    builder = _Builder(path)
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            builder.add(event)
    except yaml.reader.ReaderError as error:  # a character YAML does not allow in a file
        line = text.count("\n", 0, error.position) + 1
        problem = f"character U+{error.character:04X} is not allowed ({error.reason})"
        raise SpecError(f"{shown(path)}:{line}: malformed YAML: {problem}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{shown(path)}:{mark.line + 1}" if mark else shown(path)
        problem = getattr(error, "problem", None) or str(error)
        raise SpecError(f"{where}: malformed YAML: {shown(problem)}") from None
    return YamlDoc(path, builder.data, builder.lines)


@dataclass
class _Collection:
    """A mapping or sequence being built, with where it is and what it holds so far."""

    value: dict[Any, Any] | list[Any]
    where: KeyPath
    anchor: str | None
    nodes: int = 1  # itself and everything in it, aliases expanded
    key: Any = None  # a mapping's key whose value comes next
    has_key: bool = False


class _Builder:
    """Plain data from a stream of YAML events; each ``add`` does bounded work (no recursion)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: Any = None
        self.lines: dict[KeyPath, int] = {(): 1}
        self.stack: list[_Collection] = []
        self.anchors: dict[str, tuple[Any, int]] = {}  # name -> (value, nodes)
        self.alias_nodes = 0
        self.documents = 0

    def add(self, event: yaml.Event) -> None:
        line = event.start_mark.line + 1
        if isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                raise self.error(line, (), "a second YAML document: a spec is one document")
        elif isinstance(event, yaml.ScalarEvent):
            self.put(self.scalar(event, line), 1, event.anchor, line)
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor not in self.anchors:
                raise self.error(line, self.next_where(), f"undefined alias *{event.anchor}")
            value, nodes = self.anchors[event.anchor]
            self.alias_nodes += nodes
            if self.alias_nodes > MAX_ALIAS_NODES:
                raise self.error(
                    line,
                    self.next_where(),
                    f"aliases repeat more than {MAX_ALIAS_NODES} nodes (an alias bomb?)",
                )
            self.put(value, nodes, None, line)
        elif isinstance(event, yaml.CollectionStartEvent):
            self.start(event, line)
        elif isinstance(event, yaml.CollectionEndEvent):
            done = self.stack.pop()
            self.put(done.value, done.nodes, done.anchor, None)

    def start(self, event: yaml.CollectionStartEvent, line: int) -> None:
        mapping = isinstance(event, yaml.MappingStartEvent)
        kind = "map" if mapping else "seq"
        if event.tag not in (None, "!", f"{_TAG}{kind}"):
            raise self.error(line, self.next_where(), self.tag_problem(event.tag))
        if self.stack and self.key_expected():
            raise self.error(line, self.stack[-1].where, "a mapping key must be a plain value")
        if len(self.stack) >= MAX_DEPTH:
            raise self.error(line, (), f"nested deeper than {MAX_DEPTH} levels")
        where = self.next_where()
        if self.stack and isinstance(self.stack[-1].value, list):  # a key's line is its own
            self.lines[where] = line
        self.stack.append(_Collection({} if mapping else [], where, event.anchor))

    def scalar(self, event: yaml.ScalarEvent, line: int) -> Any:
        tag = event.tag
        if tag is None:
            tag = _SCALARS.resolve(yaml.ScalarNode, event.value, event.implicit)
        if tag == f"{_TAG}merge":
            raise self.error(line, self.next_where(), "merge keys (<<) are not supported")
        if tag in ("!", f"{_TAG}timestamp", f"{_TAG}value"):  # plain text in JSON's data model
            tag = f"{_TAG}str"
        if tag not in _PLAIN_DATA:
            raise self.error(line, self.next_where(), self.tag_problem(tag))
        if tag == f"{_TAG}str":
            control = _CONTROL.search(event.value)
            if control:
                raise self.error(
                    line, self.next_where(), f"control character {control.group()!r} in a string"
                )
            return event.value
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        try:
            value = _SCALARS.yaml_constructors[tag](_SCALARS, node)
        except (KeyError, ValueError, yaml.YAMLError):
            problem = f"{event.value[:40]!r} is not a valid {self.tag_name(tag)}"
            raise self.error(line, self.next_where(), problem) from None
        if isinstance(value, int) and abs(value) >= 2**64:  # printing it can fail; JSON loses it
            raise self.error(line, self.next_where(), "an integer larger than 64 bits")
        return value

    def put(self, value: Any, nodes: int, anchor: str | None, line: int | None) -> None:
        """Place a finished node: the document, an item, a key or a key's value."""
        if anchor is not None:
            self.anchors[anchor] = (value, nodes)
        if not self.stack:
            self.data = value
            return
        parent = self.stack[-1]
        parent.nodes += nodes
        if isinstance(parent.value, list):
            if line is not None:
                self.lines[(*parent.where, len(parent.value))] = line
            parent.value.append(value)
        elif parent.has_key:
            parent.value[parent.key] = value
            parent.has_key = False
        else:
            assert line is not None  # keys are scalars or aliases: collections are refused
            self.key(parent, value, line)

    def key(self, parent: _Collection, key: Any, line: int) -> None:
        if isinstance(key, (dict, list)):  # an alias of a collection
            raise self.error(line, parent.where, "a mapping key must be a plain value")
        where = (*parent.where, key)
        if key in parent.value:
            raise self.error(line, where, f"duplicate key (first on line {self.lines[where]})")
        self.lines[where] = line
        parent.key, parent.has_key = key, True

    def key_expected(self) -> bool:
        top = self.stack[-1]
        return isinstance(top.value, dict) and not top.has_key

    def next_where(self) -> KeyPath:
        """The key path of the node that comes next."""
        if not self.stack:
            return ()
        top = self.stack[-1]
        if isinstance(top.value, list):
            return (*top.where, len(top.value))
        return (*top.where, top.key) if top.has_key else top.where

    def tag_problem(self, tag: str) -> str:
        return f"unsupported tag {self.tag_name(tag)} (specs hold plain YAML data)"

    @staticmethod
    def tag_name(tag: str) -> str:
        return "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else tag

    def error(self, line: int, where: KeyPath, message: str) -> SpecError:
        return YamlDoc(self.path, None, {where: line}).error(where, message)


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
    # A combination operation's combine_across_settings: combine the upstream datasets of every
    # setting together, not only those made with the same upstream settings.
    across_settings: bool = False


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


def load_operation(
    path: Path,
    overrides: Mapping[str, Any] | None = None,
    overrides_at: tuple[YamlDoc, KeyPath] | None = None,
) -> OperationSpec:
    """Load an operation file, apply ``overrides`` and validate every setting it expands to.

    ``overrides_at`` is where the overrides were written (a chain file and its key path), so that
    an error in an overridden value names that file and line.
    """
    doc = load_yaml(path)
    spec = _mapping(doc, (), doc.data)
    known = {"type", "description", "runs", "batch", "combine_across_settings", *PARAMETER_FORMS}
    _no_unknown_keys(doc, spec, known)
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
    overrides = dict(overrides or {})
    places = _Places(doc, form, overrides_at or (doc, ()), set(overrides))
    settings = _expand(places, raw, overrides)
    validated = tuple(_validate(places, operation, i, s) for i, s in enumerate(settings))
    runs = _positive_int(doc, ("runs",), spec.get("runs", 1))
    batch = spec.get("batch")
    if batch not in (None, "auto"):
        batch = _positive_int(doc, ("batch",), batch)
    across = spec.get("combine_across_settings", False)
    if across is not False and (operation.combine is None or not isinstance(across, bool)):
        raise doc.error(
            ("combine_across_settings",),
            "must be true or false, for an operation that combines datasets (shuffle, merge, "
            "concatenate or a user operation declared with combine=...)",
        )
    return OperationSpec(
        path, spec["type"], operation, validated, runs, overrides, batch, across is True
    )


@dataclass
class _Places:
    """Where each value of each setting was written, for errors that name what the user wrote:
    ``parameter_ranges.components`` at the line of the offending value, not setting ``3``."""

    doc: YamlDoc
    form: str
    overrides_at: tuple[YamlDoc, KeyPath]
    overridden: set[str]
    ranges: dict[str, list[Any]] = field(default_factory=dict)  # the grid, overrides applied

    def error(self, i: int, path: KeyPath, message: str) -> SpecError:
        """An error about setting ``i`` at ``path`` (a parameter, then a path inside its value)."""
        if not path:
            settings_item = (i,) if self.form == "parameter_settings" else ()
            return self.doc.error((self.form, *settings_item), message)
        key, rest = path[0], path[1:]
        if key in self.overridden:
            doc, base = self.overrides_at
        else:
            doc, base = self.doc, (self.form, *((i,) if self.form == "parameter_settings" else ()))
        where = (*base, key, *rest)
        if key not in self.ranges:
            return doc.error(where, message)
        return doc.error(where, message, line_of=(*base, key, self.range_index(i, key), *rest))

    def range_index(self, i: int, key: str) -> int:
        """The index of ``key``'s value in combination ``i`` of the grid (the last key varies
        fastest, as in itertools.product)."""
        keys = list(self.ranges)
        after = math.prod(len(self.ranges[k]) for k in keys[keys.index(key) + 1 :])
        return (i // after) % len(self.ranges[key])


def _expand(places: _Places, raw: Any, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """Turn one of the three parameter forms into a list of settings, overrides applied."""
    doc, form = places.doc, places.form
    if form == "parameter_settings":
        if not isinstance(raw, list) or not raw:
            raise doc.error((form,), "must be a non-empty list of parameter mappings")
        return [{**_mapping(doc, (form, i), s), **overrides} for i, s in enumerate(raw)]
    raw = {**_mapping(doc, (form,), raw), **overrides}
    if form == "parameters":
        return [raw]
    for key, values in raw.items():
        if not isinstance(values, list) or not values:
            raise places.error(0, (key,), "a parameter range must be a non-empty list")
    size = math.prod(len(values) for values in raw.values())
    if size > MAX_SETTINGS:
        sizes = " x ".join(f"{key} {len(values)}" for key, values in raw.items())
        raise doc.error((form,), f"a grid of {size} settings ({sizes}), more than {MAX_SETTINGS}")
    places.ranges = raw
    return [dict(zip(raw, combo, strict=True)) for combo in itertools.product(*raw.values())]


def _validate(
    places: _Places, operation: Operation, i: int, setting: dict[str, Any]
) -> dict[str, Any]:
    full = {**operation.defaults, **setting}
    error = jsonschema.exceptions.best_match(operation.validator.iter_errors(full))
    if error is not None:
        path = tuple(error.absolute_path)
        if error.validator == "additionalProperties":  # name the unexpected key, at its line
            path += (next(key for key in error.instance if key not in operation.parameters),)
        raise places.error(i, path, f"{error.message} (operation '{operation.name}')")
    return full


def load_config(path: Path) -> dict[str, Any]:
    """The opchain config file, parsed like a spec and checked against the workflow's config schema
    (which Snakemake validates it with), so that ``opchain`` refuses what ``snakemake`` refuses."""
    doc = load_yaml(path)
    config = _mapping(doc, (), {} if doc.data is None else doc.data)
    validator = jsonschema.Draft202012Validator(load_yaml(CONFIG_SCHEMA).data)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise doc.error(tuple(error.absolute_path), error.message)
    return config


def load_chain(path: Path, operations_dir: Path) -> ChainSpec:
    """Load a chain file; its operation files are looked up in ``operations_dir``."""
    doc = load_yaml(path)
    spec = _mapping(doc, (), doc.data)
    _no_unknown_keys(doc, spec, {"input_path", "runs", "operations", "description"})
    for key in ("input_path", "operations"):
        if key not in spec:
            raise doc.error((), f"missing key '{key}'")
    if not _is_path(spec["input_path"]):
        raise doc.error(
            ("input_path",),
            "must be a path without control characters (a summary under the storage root)",
        )
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
    if not _is_path(name):
        raise doc.error(
            where,
            "must be an operation file name (no control characters) or {operation_spec: FILE, ...}",
        )
    path = operations_dir / name
    if not path.is_file():
        raise doc.error(where, f"no operation file '{name}' in {operations_dir}")
    return load_operation(path, overrides, (doc, (*where, "overridden_params")))


def _is_path(value: Any) -> bool:
    """A non-empty string without control characters (tabs and newlines included)."""
    return isinstance(value, str) and bool(value) and not _ANY_CONTROL.search(value)


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
