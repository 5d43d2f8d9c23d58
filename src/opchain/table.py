"""A chain's results as one table: a row per result dataset of every step of every run.

``results.csv`` (beside ``chain.yaml``) has the columns ``chain, run, seed, step, operation, input,
step_dir, dataset``, then ``param.<name>`` for the row's own resolved parameters and
``param.<operation>.<name>`` for those of every earlier step of its lineage (so a score can be
compared against any parameter that shaped it: ``param.pca.components`` on a nearest_centroid row),
``score.<name>`` per entry of the metadata's ``results``, and ``start, seconds, host``. ``input`` is
the original input dataset the row descends from or, below a combination (shuffle's ``a_vs_b``),
the nearest combination's name. ``summarize`` groups the rows by step, operation,
parameters and input and aggregates every score over the runs.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import shutil
from collections.abc import Collection
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from opchain.atomic import make_dirs, write_atomic
from opchain.errors import OpchainError, storage_errors
from opchain.index import timestamp_name
from opchain.verify import without_digests

__all__ = [
    "HISTORY_DIR",
    "RESULTS_CSV",
    "chain_dirs",
    "chain_rows",
    "dump_yaml",
    "entries",
    "flatten",
    "formatted",
    "history_versions",
    "informative",
    "load_yaml",
    "name_time",
    "read_metadata",
    "read_results",
    "results_text",
    "select",
    "summarize",
    "write_chain_files",
    "write_chain_outputs",
]

# libyaml's loader and emitter where PyYAML has them: a chain's table reads every result's
# metadata.yaml, a job writes one for each (~0.1 ms, not ~1 ms), a chain.yaml lists them all.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
RESULTS_CSV = "results.csv"
HISTORY_DIR = "history"
FIXED = ["chain", "run", "seed", "step", "operation", "input", "step_dir", "dataset"]
TRAILING = ["start", "seconds", "host"]
# What a row reads of each metadata.yaml of its lineage (the rest is not parsed).
ROW_ENTRIES = frozenset(
    {
        "seed",
        "operation",
        "parameters",
        "combination",
        "input",
        "results",
        "started",
        "finished",
        "cost",
        "host",
    }
)


def dump_yaml(value: Any) -> str:
    """``value`` as block-style YAML, keys in their order (the bytes ``yaml.safe_dump`` writes)."""
    lines: list[str] = []
    if isinstance(value, dict) and value and _block(value, "", lines):
        return "".join(lines)
    return yaml.dump(
        value, Dumper=_DUMPER, sort_keys=False, allow_unicode=True, default_flow_style=False
    )


# A result's metadata.yaml is mappings of words, numbers and lists of them: written here as
# libyaml's emitter would (~0.08 ms, not ~0.5 through PyYAML's representer), else by it.
_RESOLVER = yaml.resolver.Resolver()
_STR_TAG = "tag:yaml.org,2002:str"
_INDICATORS = "#,[]{}&*!|>'\"%@`"  # a scalar starting with one is never plain


def _block(mapping: dict[Any, Any], indent: str, lines: list[str]) -> bool:
    """Append the block-style lines of ``mapping`` at ``indent``; False if it holds anything
    beyond words, numbers and mappings and lists of them (nothing is then left appended that
    matters: the caller starts over)."""
    for key, value in mapping.items():
        name = _scalar(key) if isinstance(key, str) and len(key) <= 128 else None  # simple keys
        if name is None:
            return False
        if isinstance(value, dict) and value:
            lines.append(f"{indent}{name}:\n")
            if not _block(value, indent + "  ", lines):
                return False
        elif isinstance(value, list) and value:
            lines.append(f"{indent}{name}:\n")
            if not _items(value, indent, lines):
                return False
        else:
            text = "{}" if value == {} else "[]" if value == [] else _scalar(value)
            if text is None:
                return False
            lines.append(f"{indent}{name}: {text}\n")
    return True


def _items(items: list[Any], indent: str, lines: list[str]) -> bool:
    """Append the lines of a list's ``items`` at ``indent`` (a mapping's keys at the margin of
    its dash); False as :func:`_block`."""
    for item in items:
        if isinstance(item, dict) and item:
            first = len(lines)
            if not _block(item, indent + "  ", lines):
                return False
            lines[first] = f"{indent}- {lines[first][len(indent) + 2 :]}"
            continue
        text = "{}" if item == {} else "[]" if item == [] else _scalar(item)
        if text is None:
            return False
        lines.append(f"{indent}- {text}\n")
    return True


def _scalar(value: Any) -> str | None:
    """The YAML text of a plain value, as libyaml's emitter writes it; None for anything else
    (strings with spaces or beyond printable ASCII included)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    return _string(value) if isinstance(value, str) else None


@functools.lru_cache(maxsize=4096)  # keys and most values recur from result to result
def _string(value: str) -> str | None:
    if not (value.isascii() and value.isprintable()):
        return None
    if not value:
        return "''"
    if " " in value:
        return None  # a long one is folded at its spaces
    if _plain(value) and _RESOLVER.resolve(yaml.ScalarNode, value, (True, False)) == _STR_TAG:
        return value
    return "'" + value.replace("'", "''") + "'"


def _plain(text: str) -> bool:
    """Whether libyaml may write ``text`` (printable ASCII, no spaces) unquoted in block style."""
    return not (
        text[0] in _INDICATORS
        or (text[0] in "?:-" and len(text) == 1)
        or text.endswith(":")
        or text.startswith(("---", "..."))
    )


def load_yaml(text: str) -> Any:
    """The YAML ``text``; read without libyaml's loader (~0.3 ms for a result's metadata, more
    than the rest of its table row) when it is as :func:`dump_yaml` writes a mapping of words,
    numbers and their mappings and lists: what is read so is written back to ``text`` exactly,
    so it is what YAML reads."""
    try:
        value, end = _load_mapping(text.split("\n"), 0, "")
    except (_NotBlock, ValueError, KeyError):
        value, end = None, -1
    if end == text.count("\n") and value and dump_yaml(value) == text:
        return value
    return yaml.load(text, LOADER)


class _NotBlock(Exception):
    """The text is not in the form :func:`load_yaml` reads."""


def _load_mapping(lines: list[str], at: int, indent: str) -> tuple[dict[str, Any], int]:
    """The mapping whose keys are at ``indent`` from line ``at`` on, and the line after it."""
    mapping: dict[str, Any] = {}
    while at < len(lines) and lines[at][len(indent) : len(indent) + 1] not in ("", " ", "-"):
        if not lines[at].startswith(indent):
            break
        key, colon, rest = lines[at][len(indent) :].partition(":")
        if not colon:
            raise _NotBlock
        name, at = _load_scalar(key), at + 1
        if rest.startswith(" "):
            mapping[name] = _load_scalar(rest[1:])
        elif rest or at == len(lines):
            raise _NotBlock
        elif lines[at].startswith(indent + "- "):
            mapping[name], at = _load_list(lines, at, indent)
        else:
            mapping[name], at = _load_mapping(lines, at, indent + "  ")
    return mapping, at


def _load_list(lines: list[str], at: int, indent: str) -> tuple[list[Any], int]:
    items = []
    while at < len(lines) and lines[at].startswith(indent + "- "):
        items.append(_load_scalar(lines[at][len(indent) + 2 :]))
        at += 1
    return items, at


_FLOAT_WORDS = {".inf": float("inf"), "-.inf": float("-inf"), ".nan": float("nan")}


def _load_scalar(text: str) -> Any:
    if text in ("{}", "[]"):
        return {} if text == "{}" else []
    return _load_word(text)


@functools.lru_cache(maxsize=4096)  # keys and most values recur from result to result
def _load_word(text: str) -> Any:
    if text.startswith("'") and text.endswith("'") and len(text) > 1:
        return text[1:-1].replace("''", "'")
    tag = _RESOLVER.resolve(yaml.ScalarNode, text, (True, False)).rpartition(":")[2]
    if tag == "str" and text[:1] not in ("'", '"'):
        return text
    if tag == "int":
        return int(text)
    if tag == "float":
        return _FLOAT_WORDS[text] if text in _FLOAT_WORDS else float(text)
    if tag in ("bool", "null"):
        return {"true": True, "false": False, "null": None}[text]
    raise _NotBlock


def _float(value: float) -> str:
    """SafeRepresenter's text of a float."""
    if value != value:
        return ".nan"
    if value in (float("inf"), float("-inf")):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value).lower()
    return text.replace("e", ".0e", 1) if "." not in text and "e" in text else text


def read_metadata(
    storage: Path,
    dataset: str,
    cache: dict[str, Any] | None = None,
    keys: Collection[str] | None = None,
) -> Any:
    """The metadata.yaml of the result ``dataset`` (relative to ``storage``) without its digests
    (tables need none, and they are a third of its YAML), None if it is not a result (an input
    dataset). ``keys``: only these top-level entries are parsed (a table's row needs half)."""
    if cache is not None and dataset in cache:
        return cache[dataset]
    path = storage / dataset / "metadata.yaml"
    metadata = None
    if path.is_file():
        text = without_digests(path.read_text(encoding="utf-8"))
        if keys is not None:
            text = "".join(v for k, v in entries(text).items() if k in keys)
        metadata = load_yaml(text)
    if cache is not None:
        cache[dataset] = metadata
    return metadata


def entries(text: str) -> dict[str, str]:
    """A block-style YAML mapping's text by top-level key, in order (as opchain writes YAML: an
    entry is its key's line at the margin and the lines below it, indented or list items)."""
    found: dict[str, str] = {}
    key = ""
    for line in text.splitlines(keepends=True):
        if line[:1] not in (" ", "-", "\n", ""):  # a key at column 0 starts an entry
            key = line.split(":", 1)[0]
            found[key] = ""
        found[key] += line
    return found


def lineage(
    storage: Path, dataset: str, cache: dict[str, Any], keys: Collection[str] | None = None
) -> list[tuple[str, Any]]:
    """``[(dataset, metadata), ...]`` from ``dataset`` up to its original input (metadata None),
    through the first test member (else the first member) of a combination; ``keys``: the
    entries of each metadata that are read (all by default)."""
    hops = []
    while True:
        metadata = read_metadata(storage, dataset, cache, keys)
        hops.append((dataset, metadata))
        if metadata is None:
            return hops
        dataset = metadata["input"]


def flatten(value: Any, prefix: str) -> dict[str, Any]:
    """Nested mappings as dotted columns; lists as JSON text (one CSV cell)."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat |= flatten(inner, f"{prefix}.{key}")
        return flat
    return {prefix: json.dumps(value) if isinstance(value, list) else value}


def _seconds(metadata: dict[str, Any]) -> float | None:
    wall = (metadata.get("cost") or {}).get("wall_seconds")
    if wall is not None:
        return wall
    try:
        started = datetime.fromisoformat(metadata["started"])
        return round((datetime.fromisoformat(metadata["finished"]) - started).total_seconds(), 3)
    except (KeyError, TypeError, ValueError):
        return None


def _row(chain: str, run: int, step: int, dataset: str, hops: list[tuple[str, Any]]) -> dict:
    metadata = hops[0][1]
    row: dict[str, Any] = {
        "chain": chain,
        "run": run,
        "seed": metadata.get("seed"),
        "step": step,
        "operation": metadata["operation"],
        "input": next(
            (m["combination"]["name"] for _, m in hops[:-1] if "combination" in m), hops[-1][0]
        ),
        "step_dir": dataset.rsplit("/", 1)[0],
        "dataset": dataset.rsplit("/", 1)[1],
    }
    row |= flatten(metadata.get("parameters") or {}, "param")
    ancestors = [m for _, m in hops[1:-1]]
    names = [m["operation"] for m in ancestors]
    for position, ancestor in enumerate(ancestors):
        name = ancestor["operation"]
        # The same operation twice upstream: tell the uses apart by their step number.
        key = name if names.count(name) == 1 else f"{name}@{step - 1 - position}"
        row |= flatten(ancestor.get("parameters") or {}, f"param.{key}")
    row |= flatten(metadata.get("results") or {}, "score")
    row |= {
        "start": metadata.get("started"),
        "seconds": _seconds(metadata),
        "host": metadata.get("host"),
    }
    return row


def chain_rows(storage: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per result dataset of every step of every run of the chain ``manifest`` (the
    content of chain.yaml); datasets not computed yet are left out."""
    cache: dict[str, Any] = {}
    rows = []
    for run in manifest["runs"]:
        for number, step in enumerate(run["steps"], start=1):
            for k in range(1, step["datasets"] + 1):
                dataset = f"{step['dir']}/dataset_{k}"
                hops = lineage(storage, dataset, cache, ROW_ENTRIES)
                if hops[0][1] is not None:
                    rows.append(_row(manifest["chain"], run["run"], number, dataset, hops))
    return rows


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen |= dict.fromkeys(row)
    params = [c for c in seen if c.startswith("param.")]
    scores = [c for c in seen if c.startswith("score.")]
    return FIXED + params + scores + TRAILING


def rows_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns_of(rows), restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return out.getvalue()


def name_time(name: str) -> tuple[int, ...]:
    """A timestamp name (``2026_11_23_8_5_2``, maybe with a ``_1`` suffix) as numbers, so names
    that are not zero-padded sort by time; other names sort first."""
    try:
        return tuple(int(part) for part in name.removesuffix(".yaml").split("_"))
    except ValueError:
        return ()


def history_versions(chain_dir: Path) -> list[Path]:
    """The chain's compiled versions, oldest first (the last is the current chain.yaml)."""
    return sorted((chain_dir / HISTORY_DIR).glob("*.yaml"), key=lambda p: name_time(p.name))


def _keep_history(chain_dir: Path, text: str) -> None:
    """Add ``text`` as the newest version unless it already is: every version a chain.yaml ever
    had stays in ``history/`` (Snakemake may remove chain.yaml before its job runs)."""
    versions = history_versions(chain_dir)
    if versions and versions[-1].read_text(encoding="utf-8") == text:
        return
    folder = chain_dir / HISTORY_DIR
    make_dirs(folder)
    base = timestamp_name()
    name, suffix = base, 0
    while (folder / f"{name}.yaml").exists():
        suffix += 1
        name = f"{base}_{suffix}"
    write_atomic(folder / f"{name}.yaml", text)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_bytes() != text.encode():
        write_atomic(path, text)


def write_chain_outputs(storage: Path, chain_dir: Path, manifest: dict[str, Any]) -> None:
    """Write ``chain.yaml`` (its versions kept in ``history/``) and ``results.csv`` of a chain,
    each atomically and only when its bytes change."""
    text = dump_yaml(manifest)
    make_dirs(chain_dir)
    _keep_history(chain_dir, text)
    _write_if_changed(chain_dir / "chain.yaml", text)
    _write_if_changed(chain_dir / RESULTS_CSV, rows_csv(chain_rows(storage, manifest)))


def write_chain_files(spec: Path, chain_copy: Path, table_copy: Path) -> None:
    """Rule ``chain_manifest``'s work: a chain's outputs from the compiled chain the run started
    with (``spec``: JSON holding ``storage``, the chain's ``dir`` and its manifest), and their
    copies in the working directory (the rule's outputs)."""
    manifest = json.loads(spec.read_text(encoding="utf-8"))
    storage = Path(manifest.pop("storage"))
    chain_dir = storage / manifest.pop("dir")
    with storage_errors(chain_dir):  # a full disk or a read-only root: one line
        write_chain_outputs(storage, chain_dir, manifest)
    shutil.copyfile(chain_dir / "chain.yaml", chain_copy)
    shutil.copyfile(chain_dir / RESULTS_CSV, table_copy)


def summarize(table: Any) -> Any:
    """Results rows grouped by chain, step, operation, parameters and input: one row per group and
    score with that score's ``mean``, ``std`` and ``n`` over the runs. A dataset shared by several
    runs (a deterministic step) counts once."""
    import pandas as pd  # pandas only where tables are analysed: not in jobs
    from pandas.api.types import is_numeric_dtype

    table = table.drop_duplicates(["chain", "step_dir", "dataset"])
    keys = ["chain", "step", "operation", "input"] + [c for c in table if c.startswith("param.")]
    parts = []
    for score in [c for c in table if c.startswith("score.") and is_numeric_dtype(table[c])]:
        scored = table[table[score].notna()]
        stats = scored.groupby(keys, dropna=False, sort=True)[score].agg(["mean", "std", "count"])
        stats = stats.reset_index().rename(columns={"count": "n"})
        stats.insert(len(keys), "score", score.removeprefix("score."))
        parts.append(stats)
    if not parts:
        return pd.DataFrame(columns=[*keys, "score", "mean", "std", "n"])
    return pd.concat(parts, ignore_index=True).sort_values(["chain", "step"], kind="stable")


def select(table: Any, *, summary: bool, score: str | None, sort: str | None) -> Any:
    """What ``opchain results`` prints: the rows (or their summary), only those that have
    ``score`` (and only that score's columns), sorted by ``sort`` (``-`` first: descending; a
    score or parameter name without its ``score.``/``param.`` prefix is found too)."""
    if score is not None:
        column = f"score.{score.removeprefix('score.')}"
        if column not in table:
            known = ", ".join(c.removeprefix("score.") for c in table if c.startswith("score."))
            raise OpchainError(f"no score '{score}' in these results (scores: {known or 'none'})")
        others = [c for c in table if c.startswith("score.") and c != column]
        table = table[table[column].notna()].drop(columns=others)
    if summary:
        table = summarize(table)
    if sort:
        name = sort.removeprefix("-")
        candidates = [name, f"score.{name}", f"param.{name}"]
        found = next((c for c in candidates if c in table), None)
        if found is None:
            raise OpchainError(f"--sort {sort}: no such column (columns: {', '.join(table)})")
        table = table.sort_values(found, ascending=not sort.startswith("-"), kind="stable")
    return table


def informative(table: Any) -> Any:
    """The table as a person reads it to compare results: parameter columns only where they vary
    within a step, and no column that is empty everywhere."""
    steps = table.groupby(["chain", "step"], dropna=False)
    constant = [
        c for c in table if c.startswith("param.") and steps[c].nunique(dropna=False).max() <= 1
    ]
    return table.drop(columns=constant).dropna(axis="columns", how="all")


def chain_dirs(storage: Path, names: list[str], configured: list[str]) -> list[Path]:
    """The chain directories ``names`` (chain names or directory names, any chain under the
    storage root) or, without names, those of the configured chains (``configured``)."""
    if not names:
        return [storage / relative for relative in configured]
    found: dict[str, list[Path]] = {}
    for manifest in sorted((storage / "operation_chain_results").glob("*/chain.yaml")):
        chain = (yaml.safe_load(manifest.read_text(encoding="utf-8")) or {}).get("chain")
        for key in (chain, manifest.parent.name):
            found.setdefault(str(key), []).append(manifest.parent)
    dirs = []
    for name in names:
        if name not in found:
            raise OpchainError(f"no chain '{name}' under {storage / 'operation_chain_results'}")
        dirs += found[name]
    return dirs


def read_results(path: Path) -> Any:
    """A results.csv as a DataFrame: floats exactly as written, integer columns with gaps still
    integers (components 10, not 10.0)."""
    import pandas as pd

    return pd.read_csv(path, float_precision="round_trip").convert_dtypes()


def results_text(
    dirs: list[Path], fmt: str, *, summary: bool, score: str | None, sort: str | None
) -> str:
    """``opchain results``: the results.csv of the chains in ``dirs`` as a table, CSV or JSON."""
    import pandas as pd

    missing = [d for d in dirs if not (d / RESULTS_CSV).is_file()]
    if missing:
        raise OpchainError(f"{missing[0] / RESULTS_CSV}: no results yet (run snakemake)")
    # Nullable dtypes: integer columns with gaps stay integers (components 10, not 10.0).
    tables = [read_results(d / RESULTS_CSV) for d in dirs]
    table = pd.concat(tables, ignore_index=True)
    table = select(table, summary=summary, score=score, sort=sort)
    return formatted(table if fmt != "table" else informative(table), fmt)


def formatted(table: Any, fmt: str) -> str:
    """A DataFrame as ``opchain results`` prints it: CSV, JSON records or a text table."""
    import pandas as pd

    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        records = table.astype(object).where(table.notna(), None).to_dict("records")
        return json.dumps(records, indent=2, default=lambda v: v.item()) + "\n"
    shown = table.astype(object)
    shown = shown.map(lambda v: "" if pd.isna(v) else f"{v:.4g}" if isinstance(v, float) else v)
    return shown.to_string(index=False) + "\n"
