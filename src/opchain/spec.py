"""Chain and operation YAML files: loading, validation, and errors that say file, key and line.

An operation file names a registered operation (``type``) and its parameters in one of three forms:
``parameters`` (one setting), ``parameter_ranges`` (the cartesian product of lists) or
``parameter_settings`` (an explicit list of settings). A chain file names an ``input_path`` (a summary
under the storage root), ``runs`` and a list of ``operations``, each an operation file name or
``{operation_spec: FILE, overridden_params: {...}}``. The shapes follow pySPACE's specs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from opchain.atomic import write_aside
from opchain.constraints import Constraint, ConstraintError, parse
from opchain.errors import SpecError
from opchain.operations import Operation, get_operation
from opchain.project import WORKFLOW
from opchain.table import LOADER

__all__ = [
    "ChainSpec",
    "OperationSpec",
    "YamlDoc",
    "check_config",
    "load_chain",
    "load_config",
    "load_operation",
    "load_yaml",
]

KeyPath = tuple[str | int, ...]
PARAMETER_FORMS = ("parameters", "parameter_ranges", "parameter_settings")
SPELLINGS = {"parameter_setting": "parameter_settings"}  # pySPACE's spelling, read alike
SETTINGS_FORMS = (*PARAMETER_FORMS, *SPELLINGS)
OPERATION_KEYS = {"type", "description", "runs", "batch", "constraints", "upstream_constraints",
                  "combine_across_settings", *SETTINGS_FORMS}  # fmt: skip
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


# libyaml's parser where available (LOADER: planning parses every operation file of every chain).
# Only its event stream is used: libyaml's composer recurses in C and crashes on deep nesting, and
# PyYAML's constructors follow tags to Python objects. ``_Builder`` makes plain data from the events
# with explicit stacks, so every limit below is checked before anything large or deep is built.
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
        for event in yaml.parse(text, Loader=LOADER):
            builder.add(event)
    except yaml.reader.ReaderError as error:  # a character YAML does not allow in a file
        line = text.count("\n", 0, error.position) + 1
        problem = f"character U+{error.character:04X} is not allowed ({error.reason})"
        raise SpecError(f"{shown(path)}:{line}: malformed YAML: {problem}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{shown(path)}:{mark.line + 1}" if mark else shown(path)
        problem = getattr(error, "problem", None) or str(error)
        if "nesting depth" in problem:  # PyYAML 6.0.4+ stops deeper nesting than its own limit
            raise SpecError(f"{where}: nested deeper than {MAX_DEPTH} levels") from None
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
class PlacedConstraint:
    """A constraint and where it was written, so that its errors name the file and line."""

    constraint: Constraint
    doc: YamlDoc
    where: KeyPath

    def error(self, message: str) -> SpecError:
        return self.doc.error(self.where, f"{self.constraint.text!r}: {message}")

    def admits(self, values: Mapping[str, Any]) -> bool:
        try:
            return self.constraint.holds(values)
        except ConstraintError as error:
            used = ", ".join(f"{n}={values[n]!r}" for n in self.constraint.names if n in values)
            raise self.error(f"cannot be evaluated for {used}: {error}") from None


@dataclass(frozen=True)
class OperationSpec:
    """One operation file, resolved: the operation and every parameter setting it expands to."""

    path: Path
    type: str  # as the spec names it: a built-in name or module:function
    operation: Operation
    settings: tuple[dict[str, Any], ...]  # validated, defaults filled in, constraints applied
    runs: int
    overrides: dict[str, Any]  # a chain's overridden_params, as written
    batch: int | str | None = None  # datasets per job ("auto" or N); None: the config's
    excluded: int = 0  # settings of the grid that its constraints dropped
    # Constraints on the parameters of earlier steps (``pca.components``): the planner gives each
    # upstream dataset (or combination) only the settings admitted() on its lineage.
    upstream_constraints: tuple[PlacedConstraint, ...] = ()
    # A combination operation's combine_across_settings: combine the upstream datasets of every
    # setting together, not only those made with the same upstream settings.
    across_settings: bool = False

    def admitted(self, upstream: Mapping[str, Any]) -> list[int]:
        """The indices of the settings the upstream constraints admit on a dataset whose lineage
        has the parameters ``upstream`` (see :func:`upstream_values`); maybe none."""
        return [
            j
            for j, setting in enumerate(self.settings)
            if all(c.admits({**setting, **upstream}) for c in self.upstream_constraints)
        ]

    def none_admitted(self, upstream: Mapping[str, Any]) -> SpecError:
        """The error for a step the upstream constraints leave with no dataset, naming the
        parameters of the first lineage they refuse (``upstream``): one line at the constraint."""
        constraints = self.upstream_constraints
        names = {n for c in constraints for n in c.constraint.names if n in upstream}
        after = ", ".join(f"{n}={upstream[n]!r}" for n in sorted(names))
        return constraints[0].error(
            "no setting satisfies the upstream constraints on any dataset it reads"
            + (f" (the first: {after})" if after else "")
        )


def upstream_values(ancestors: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """``{"pca.components": 10, ...}``: the parameters of a dataset's earlier steps, given as
    (operation name, setting) pairs, named as upstream constraints and the results table name them."""
    return {f"{name}.{key}": value for name, setting in ancestors for key, value in setting.items()}


@dataclass(frozen=True)
class StatisticSpec:
    """A chain's statistics entry: is ``score`` of ``operation``'s results different between the
    values of the parameter ``compare``, on rows paired by ``pair_by``?"""

    name: str
    operation: str
    score: str  # a score column of results.csv, without its score. prefix
    compare: str  # a parameter as results.csv names it, without its param. prefix
    pair_by: tuple[str, ...]  # input, run, seed or parameters
    test: str  # paired_t or wilcoxon
    correction: str  # holm or bonferroni


@dataclass(frozen=True)
class ChainSpec:
    name: str
    path: Path
    input_path: str
    runs: int
    steps: tuple[OperationSpec, ...]
    statistics: tuple[StatisticSpec, ...] = ()

    @property
    def origin(self) -> str:
        """The chain file's absolute path: tells another project's chain of the same name apart."""
        return str(self.path.resolve())


@dataclass
class _Source:
    """An operation file's keys as one use of it sees them: the file's, with the whole keys a
    chain's overridden_params replaces (pySPACE's dict.update); each key remembers the file and
    key path it was written at."""

    file: YamlDoc
    values: dict[str, Any]
    at: dict[str, tuple[YamlDoc, KeyPath]]

    def place(self, key: str) -> tuple[YamlDoc, KeyPath]:
        return self.at.get(key, (self.file, (key,)))

    def error(self, where: KeyPath, message: str) -> SpecError:
        if not where:
            return self.file.error((), message)
        doc, at = self.place(str(where[0]))
        return doc.error((*at, *where[1:]), message)


def load_operation(
    path: Path,
    overrides: Mapping[str, Any] | None = None,
    overrides_at: tuple[YamlDoc, KeyPath] | None = None,
) -> OperationSpec:
    """Load an operation file, apply a chain's ``overrides`` and validate every setting it
    expands to.

    ``overrides`` either replaces whole keys of the file (``parameter_ranges: {...}``, pySPACE's
    form) or sets parameters in every setting (``components: 10``). ``overrides_at`` is where
    they were written (a chain file and its key path), so that their errors name that file.
    """
    doc = load_yaml(path)
    spec = _mapping(doc, (), doc.data)
    _no_unknown_keys(doc, spec, OPERATION_KEYS)
    _one_form(doc, (), spec)
    overrides_at = overrides_at or (doc, ())
    source, named = _override(doc, spec, dict(overrides or {}), overrides_at)
    if "type" not in source.values:
        raise doc.error((), "missing key 'type' (the operation to run)")
    try:
        operation = get_operation(source.values["type"])
    except SpecError as error:
        raise source.error(("type",), str(error)) from None
    _not_ambiguous(operation, overrides or {}, overrides_at)
    form = next((f for f in SETTINGS_FORMS if f in source.values), "parameters")
    places = _Places(SPELLINGS.get(form, form), source.place(form), overrides_at, set(named))
    default = [{}] if places.form == "parameter_settings" else {}
    settings = _expand(places, source.values.get(form, default), named)
    validated = [{**operation.defaults, **setting} for setting in settings]
    key = _validity_key(operation.schema, validated)
    if key not in _valid_before():
        valid: set[tuple[Any, ...]] = set()
        for i, setting in enumerate(validated):
            _validate(places, operation, i, setting, valid)
        _record_valid(key)
    kept = _constrain(source, operation, validated)
    for i in kept:
        _check(places, operation, i, validated[i])
    runs = _positive_int(source, ("runs",), source.values.get("runs", 1))
    batch = source.values.get("batch")
    if batch not in (None, "auto"):
        batch = _positive_int(source, ("batch",), batch)
    upstream = _constraints(source, "upstream_constraints", operation)
    across = source.values.get("combine_across_settings", False)
    if across is not False and (operation.combine is None or not isinstance(across, bool)):
        raise source.error(
            ("combine_across_settings",),
            "must be true or false, for an operation that combines datasets (shuffle, merge, "
            "concatenate or a user operation declared with combine=...)",
        )
    return OperationSpec(
        path,
        source.values["type"],
        operation,
        tuple(validated[i] for i in kept),
        runs,
        dict(overrides or {}),
        batch,
        len(validated) - len(kept),
        tuple(upstream),
        across is True,
    )


def _one_form(doc: YamlDoc, where: KeyPath, spec: Mapping[str, Any]) -> None:
    forms = [form for form in SETTINGS_FORMS if form in spec]
    if len(forms) > 1:
        raise doc.error((*where, forms[1]), f"use only one of {', '.join(PARAMETER_FORMS)}")


def _override(
    doc: YamlDoc,
    spec: dict[str, Any],
    overrides: dict[str, Any],
    overrides_at: tuple[YamlDoc, KeyPath],
) -> tuple[_Source, dict[str, Any]]:
    """The file's keys after a chain's overrides, and the parameters the overrides set (when they
    name parameters rather than keys of the file). Overriding one form of settings replaces the
    file's, whichever form that is."""
    source = _Source(doc, dict(spec), {key: (doc, (key,)) for key in spec})
    keys = [key for key in overrides if key in OPERATION_KEYS]
    names = [key for key in overrides if key not in OPERATION_KEYS]
    chain, at = overrides_at
    if keys and names:
        raise chain.error(
            at,
            f"mixes keys of an operation file ({', '.join(keys)}) with parameter names "
            f"({', '.join(names)}): override whole keys (parameters: {{...}}) or parameters, "
            "not both",
        )
    if not keys:
        return source, overrides
    _one_form(chain, at, overrides)
    if any(form in overrides for form in SETTINGS_FORMS):
        for form in SETTINGS_FORMS:
            source.values.pop(form, None)
    for key, value in overrides.items():
        source.values[key] = value
        source.at[key] = (chain, (*at, key))
    return source, {}


def _not_ambiguous(
    operation: Operation, overrides: Mapping[str, Any], overrides_at: tuple[YamlDoc, KeyPath]
) -> None:
    """Refuse an override that could mean a key of the file or a parameter of the same name."""
    for key in overrides:
        if key in OPERATION_KEYS and key in operation.parameters:
            chain, at = overrides_at
            raise chain.error(
                (*at, key),
                f"'{key}' is both a key of operation files and a parameter of operation "
                f"'{operation.name}': to set the parameter, override parameters: {{{key}: ...}} "
                "(which replaces the file's parameters)",
            )


@dataclass
class _Places:
    """Where each value of each setting was written, for errors that name what the user wrote:
    ``parameter_ranges.components`` at the line of the offending value, not setting ``3``."""

    form: str  # how the settings are written: parameters, parameter_ranges or parameter_settings
    form_at: tuple[YamlDoc, KeyPath]  # the operation file's key, or a chain's override of it
    overrides_at: tuple[YamlDoc, KeyPath]
    overridden: set[str]  # parameters a chain's overrides set
    ranges: dict[str, list[Any]] = field(default_factory=dict)  # the grid, overrides applied

    def error(self, i: int, path: KeyPath, message: str) -> SpecError:
        """An error about setting ``i`` at ``path`` (a parameter, then a path inside its value)."""
        doc, base = self.form_at
        base = (*base, *((i,) if self.form == "parameter_settings" else ()))
        if not path:
            return doc.error(base, message)
        key, rest = path[0], path[1:]
        if key in self.overridden:
            doc, base = self.overrides_at
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
    doc, at = places.form_at
    if places.form == "parameter_settings":
        if not isinstance(raw, list) or not raw:
            raise doc.error(at, "must be a non-empty list of parameter mappings")
        return [{**_mapping(doc, (*at, i), s), **overrides} for i, s in enumerate(raw)]
    raw = {**_mapping(doc, at, raw), **overrides}
    if places.form == "parameters":
        return [raw]
    for key, values in raw.items():
        if not isinstance(values, list) or not values:
            raise places.error(0, (key,), "a parameter range must be a non-empty list")
    size = math.prod(len(values) for values in raw.values())
    if size > MAX_SETTINGS:
        sizes = " x ".join(f"{key} {len(values)}" for key, values in raw.items())
        raise doc.error(at, f"a grid of {size} settings ({sizes}), more than {MAX_SETTINGS}")
    places.ranges = raw
    return [dict(zip(raw, combo, strict=True)) for combo in itertools.product(*raw.values())]


def _validate(
    places: _Places, operation: Operation, i: int, full: dict[str, Any], valid: set[tuple]
) -> None:
    """Validate the setting ``full`` (with its defaults) against the operation's schema.
    ``valid`` holds the keys and the scalar values of the settings found valid so far: the schema
    is an object of ``properties`` (each judging its own value), ``required`` and no other keys,
    so a setting whose keys and every value were parts of valid ones is valid, and a grid of
    10,000 points validates each swept value once, not each point (~0.1 ms each)."""
    parts = {(None, *sorted(full))} | {
        (key, type(value), value) for key, value in full.items() if _is_scalar(value)
    }
    if len(parts) == len(full) + 1 and parts <= valid:
        return
    error = _best_error(operation.validator, full)
    if error is not None:
        path = tuple(error.absolute_path)
        if error.validator == "additionalProperties":  # name the unexpected key, at its line
            path += (next(key for key in error.instance if key not in operation.parameters),)
        raise places.error(i, path, f"{error.message} (operation '{operation.name}')")
    valid |= parts


def _best_error(validator: Any, document: Any) -> Any:
    """jsonschema's most relevant error of ``document``, or None where it is valid."""
    import jsonschema  # only where a document was not found valid before (see VALID_RECORD)

    return jsonschema.exceptions.best_match(validator.iter_errors(document))


# What a run found valid (a config, an operation file's settings) is recorded by a digest of the
# schema and the document in the working directory's .opchain/valid, so that a rerun whose files
# did not change validates nothing and does not import jsonschema (~0.1 s of every `snakemake`
# start: a third of opchain's share of a rerun with nothing to do).
VALID_RECORD = Path(".opchain", "valid")
VALID_KEPT = 1000  # the latest digests


def _validity_key(schema: Any, document: Any) -> str | None:
    """A digest of ``schema`` and ``document``; None where they are not plain JSON data."""
    try:
        text = json.dumps([schema, document], sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _valid_before() -> dict[str, None]:
    """The digests recorded in the working directory, oldest first."""
    return _records(os.getcwd())


@cache  # read once a process; updated by _record_valid
def _records(folder: str) -> dict[str, None]:
    try:
        return dict.fromkeys(Path(folder, VALID_RECORD).read_text(encoding="ascii").split())
    except (OSError, ValueError):
        return {}


def _record_valid(key: str | None) -> None:
    """Record the digest ``key`` of a document found valid (where the working directory takes
    it: a record that cannot be written only costs the next run a validation)."""
    if key is None:
        return
    known = _valid_before()
    known[key] = None
    try:
        VALID_RECORD.parent.mkdir(exist_ok=True)
        aside = write_aside(VALID_RECORD, "".join(f"{k}\n" for k in list(known)[-VALID_KEPT:]))
    except OSError:
        return
    try:
        os.replace(aside, VALID_RECORD)  # a cache, not flushed: lost, it costs a validation
    except OSError:
        aside.unlink(missing_ok=True)


def _is_scalar(value: Any) -> bool:
    """A value remembered by what it is (lists and mappings are validated each time)."""
    return value is None or isinstance(value, str | int | float)  # bool is an int


def _check(places: _Places, operation: Operation, i: int, setting: dict[str, Any]) -> None:
    """The operation's own check across parameters (kfold: fold < folds), at planning."""
    problem = operation.check(setting) if operation.check else None
    if problem is not None:
        parameter, message = problem
        raise places.error(i, (parameter,), f"{message} (operation '{operation.name}')")


def _constraints(source: _Source, key: str, operation: Operation) -> list[PlacedConstraint]:
    """The parsed ``constraints`` or ``upstream_constraints`` of an operation file. Plain names
    must be the operation's parameters; dotted ones (``pca.components``, upstream constraints
    only) are checked against the chain's earlier steps by :func:`load_chain`."""
    texts = source.values.get(key, [])
    if not isinstance(texts, list):
        raise source.error((key,), "must be a list of constraints (strings like 'fold < folds')")
    placed = []
    for i, text in enumerate(texts):
        doc, at = source.place(key)
        try:
            constraint = parse(text)
        except ConstraintError as error:
            raise doc.error((*at, i), str(error)) from None
        found = PlacedConstraint(constraint, doc, (*at, i))
        for name in constraint.names:
            if "." in name and key == "upstream_constraints":
                continue
            if "." in name:
                problem = (
                    f"'{name}' is a parameter of an earlier step: put it in upstream_constraints"
                )
            elif name not in operation.parameters:
                known = ", ".join(sorted(operation.parameters)) or "none"
                problem = (
                    f"unknown name '{name}' (parameters of operation '{operation.name}': {known})"
                )
            else:
                continue
            raise found.error(problem)
        placed.append(found)
    return placed


def _constrain(source: _Source, operation: Operation, settings: list[dict[str, Any]]) -> list[int]:
    """The indices of the settings all of the file's ``constraints`` admit (pySPACE's constraints,
    parsed rather than ``eval``'d)."""
    kept = list(range(len(settings)))
    for placed in _constraints(source, "constraints", operation):
        kept = [i for i in kept if placed.admits(settings[i])]
        if not kept:
            raise placed.error(f"no setting of the {len(settings)} satisfies the constraints")
    return kept


def load_config(path: Path) -> dict[str, Any]:
    """The opchain config file, parsed like a spec and checked against the workflow's config schema
    (which Snakemake validates it with), so that ``opchain`` refuses what ``snakemake`` refuses."""
    doc = load_yaml(path)
    config = _mapping(doc, (), {} if doc.data is None else doc.data)
    error = _config_error(config)
    if error is not None:
        raise doc.error(tuple(error.absolute_path), error.message)
    return config


def check_config(config: dict[str, Any], files: Iterable[str] = ()) -> None:
    """Check Snakemake's ``config`` (its config ``files`` merged, with any ``--config``) against
    the workflow's config schema: a SpecError naming the key, at its line in the last of
    ``files`` that sets it."""
    error = _config_error(config)
    if error is None:
        return
    where = tuple(error.absolute_path)
    for file in reversed(list(files)):
        doc = load_yaml(Path(file))
        if isinstance(doc.data, dict) and (not where or where[0] in doc.data):
            raise doc.error(where, error.message)
    key = ".".join(map(str, where))
    raise SpecError(f"config: {key + ': ' if key else ''}{error.message}")


def _config_error(config: dict[str, Any]) -> Any:
    """The most relevant error of ``config`` against the config schema, or None."""
    schema = load_yaml(CONFIG_SCHEMA).data
    key = _validity_key(schema, config)
    if key in _valid_before():
        return None
    import jsonschema  # only where this config was not found valid before

    error = _best_error(jsonschema.Draft202012Validator(schema), config)
    if error is None:
        _record_valid(key)
    return error


def load_chain(path: Path, operations_dir: Path) -> ChainSpec:
    """Load a chain file; its operation files are looked up in ``operations_dir``."""
    doc = load_yaml(path)
    spec = _mapping(doc, (), doc.data)
    _no_unknown_keys(doc, spec, {"input_path", "runs", "operations", "description", "statistics"})
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
    for position, step in enumerate(steps):
        earlier = [s.operation for s in steps[:position]]
        for placed in step.upstream_constraints:
            for name in (n for n in placed.constraint.names if "." in n):
                problem = _parameter_problem(name, step.operation, earlier)
                if problem:
                    raise placed.error(problem)
    runs = _positive_int(doc, ("runs",), spec.get("runs", 1))
    entries = spec.get("statistics", [])
    if not isinstance(entries, list):
        raise doc.error(("statistics",), "must be a list of statistics entries")
    statistics: list[StatisticSpec] = []
    for i, entry in enumerate(entries):
        statistics.append(_statistic(doc, ("statistics", i), entry, steps))
        if statistics[-1].name in [s.name for s in statistics[:-1]]:
            raise doc.error(("statistics", i, "name"), "another statistics entry has this name")
    return ChainSpec(path.stem, path, spec["input_path"], runs, steps, tuple(statistics))


def _parameter_problem(name: str, operation: Operation, earlier: list[Operation]) -> str | None:
    """What is wrong with ``name`` as a parameter of a result of ``operation`` after the steps
    ``earlier``: its own (``components``) or an earlier step's (``pca.components``, named as the
    results table names it); None if it names one."""
    step, _, parameter = name.rpartition(".")
    if not step:
        if name in operation.parameters:
            return None
        known = ", ".join(sorted(operation.parameters)) or "none"
        return f"unknown name '{name}' (parameters of operation '{operation.name}': {known})"
    runs = [op for op in earlier if op.name == step]
    if not runs:
        names = ", ".join(op.name for op in earlier) or "none"
        return f"no earlier step runs '{step}' (earlier steps: {names})"
    if len(runs) > 1:
        return f"'{step}' runs at {len(runs)} earlier steps: '{name}' cannot tell them apart"
    if parameter not in runs[0].parameters:
        known = ", ".join(sorted(runs[0].parameters)) or "none"
        return f"operation '{step}' has no parameter '{parameter}' (it has: {known})"
    return None


STATISTIC_DEFAULTS = {"pair_by": ["input", "run"], "test": "paired_t", "correction": "holm"}
STATISTIC_CHOICES = {"test": ("paired_t", "wilcoxon"), "correction": ("holm", "bonferroni")}
ROW_KEYS = ("input", "run", "seed")  # results.csv columns that tell rows apart besides parameters
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _statistic(
    doc: YamlDoc, where: KeyPath, entry: Any, steps: tuple[OperationSpec, ...]
) -> StatisticSpec:
    """One statistics entry of a chain file, checked against the chain's steps."""
    entry = {**STATISTIC_DEFAULTS, **_mapping(doc, where, entry)}
    _no_unknown_keys(doc, entry, {f.name for f in dataclasses.fields(StatisticSpec)}, where)
    for key in ("name", "operation", "score", "compare"):
        if key not in entry:
            raise doc.error(where, f"missing key '{key}'")
        if not _is_path(entry[key]):
            raise doc.error((*where, key), f"must be a non-empty string, not {entry[key]!r}")
    if not _FILE_NAME.fullmatch(entry["name"]):
        raise doc.error((*where, "name"), "must be a file name: letters, digits, _ . - only")
    for key, choices in STATISTIC_CHOICES.items():
        if entry[key] not in choices:
            raise doc.error((*where, key), f"must be one of {', '.join(choices)}")
    positions = [i for i, s in enumerate(steps) if s.operation.name == entry["operation"]]
    if not positions:
        names = ", ".join(s.operation.name for s in steps)
        raise doc.error((*where, "operation"), f"no step runs it (the chain runs: {names})")
    operation = steps[positions[0]].operation
    earlier = [s.operation for s in steps[: positions[0]]]
    pair_by = entry["pair_by"]
    if not isinstance(pair_by, list) or not all(isinstance(k, str) for k in pair_by):
        raise doc.error(
            (*where, "pair_by"), "must be a list of names (input, run, seed, parameters)"
        )
    if entry["compare"] in pair_by:
        raise doc.error((*where, "compare"), "is in pair_by too: pairs differ in what they compare")
    named = [(("compare",), entry["compare"])]
    named += [(("pair_by", k), name) for k, name in enumerate(pair_by) if name not in ROW_KEYS]
    for key, name in named:
        problem = _parameter_problem(name, operation, earlier)
        if problem:
            also = (
                f" (besides parameters, rows pair by {', '.join(ROW_KEYS)})"
                if key[0] == "pair_by"
                else ""
            )
            raise doc.error((*where, *key), problem + also)
    return StatisticSpec(**{**entry, "pair_by": tuple(pair_by)})


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


def _positive_int(doc: YamlDoc | _Source, where: KeyPath, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise doc.error(where, f"must be a positive integer, not {value!r}")
    return value
