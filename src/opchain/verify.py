"""Checksums of stored datasets, and ``opchain verify``: which results and inputs still hold the
bytes they were written (or first read) with.

A result dataset's ``metadata.yaml`` ends with a ``xxh3_128:`` mapping: the digest of every file
of the dataset, by its path inside it, and of ``metadata.yaml`` itself (of its text before that
mapping, so every byte of the dataset is covered). The job computes them before it flushes and
publishes the dataset: a matrix a built-in streams out in row order was hashed as it was written
(:func:`remember`, from ``builtin.RunningDigest``), files linked from its input take the digests
the input has (its sealed ones, or its record), and the others are read back from the page cache.
A dataset reused from an earlier grid (hard links) carries the digests of the files it links;
only its own metadata is hashed anew.

XXH3-128 catches accidental damage (bit rot, a torn or truncated write) as surely as a
cryptographic hash, at ~12 GB/s a core where SHA-256 runs at ~1.5, as fast as the page cache
copies: nothing here trusts a digest against an adversary or names anything by one. Results and
input records an earlier opchain wrote with SHA-256 are checked with it (the block's key, the
record's ``algorithm``: :data:`ALGORITHMS`); a link of such a result is sealed with XXH3.

An input dataset (the user's: never written by opchain) is hashed when a job first reads it: its
files' sizes, modification times and digests go to the index (``.opchain/inputs/``), again only
when a size or time changed. So a file whose bytes differ while its size and time did not is
damaged (bit rot), while one with a new time was edited (the next run recomputes from it).

``opchain verify`` re-hashes and reports, one line per damaged dataset; ``--remove-damaged``
removes damaged results (:func:`remove_dataset`), never inputs, so the next ``snakemake``
recomputes exactly them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash
import yaml

from opchain.atomic import aside_path, flush, make_dirs, write_atomic
from opchain.errors import OpchainError
from opchain.index import INDEX_DIR

if TYPE_CHECKING:
    from opchain.plan import Plan

__all__ = [
    "ALGORITHMS",
    "DIGESTS",
    "METADATA",
    "Check",
    "check_input",
    "check_result",
    "digests",
    "new_hash",
    "record_input",
    "remember",
    "remove_dataset",
    "sealed",
    "split_sealed",
    "targets",
    "text_digest",
    "verify",
    "without_digests",
]

DIGESTS = "xxh3_128"  # the key of the digests in metadata.yaml, and the algorithm
# Every algorithm a result's digests may be in, by the key of its block: the current one first.
ALGORITHMS: dict[str, Callable[[], Any]] = {DIGESTS: xxhash.xxh3_128, "sha256": hashlib.sha256}
METADATA = "metadata.yaml"
_BLOCK = f"\n{DIGESTS}:\n".encode()  # where the digests start in a sealed metadata.yaml
INPUTS = "inputs"  # the index's records of input datasets
_DIGEST_LINE = re.compile(r'  ("(?:[^"\\]|\\.)*"): "([0-9a-f]{32})"')  # as sealed writes it


def new_hash(algorithm: str = DIGESTS) -> Any:
    """A running hash (``update``, ``hexdigest``) of ``algorithm``, a key of ALGORITHMS."""
    return ALGORITHMS[algorithm]()


def text_digest(text: str | bytes, algorithm: str = DIGESTS) -> str:
    hashed = new_hash(algorithm)
    hashed.update(text.encode() if isinstance(text, str) else text)
    return hashed.hexdigest()


def file_digest(path: Path | str, algorithm: str = DIGESTS) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, ALGORITHMS[algorithm]).hexdigest()


def files_of(folder: Path) -> list[str]:
    """Every file under ``folder``, as sorted POSIX paths relative to it."""
    found = []
    top = os.fspath(folder)
    for root, _, files in os.walk(top):
        relative = os.path.relpath(root, top)
        prefix = "" if relative == os.curdir else relative.replace(os.sep, "/") + "/"
        found += [prefix + name for name in files]
    return sorted(found)


def digests(folder: Path, carried: dict[str, str]) -> dict[str, str]:
    """The digest of every file under ``folder`` but its metadata.yaml: ``carried`` ones as given
    (hard links of an earlier dataset's files: its digests, whatever became of the bytes), the
    others hashed now (once for a file with other links: see ``_KNOWN``)."""
    top = os.fspath(folder)
    computed = {
        name: _digest(os.path.join(top, name))
        for name in files_of(folder)
        if name != METADATA and name not in carried
    }
    return dict(sorted({**carried, **computed}.items()))


# Digests known without reading the file, by its identity (device, inode, size, mtime): a file
# this process hashed while writing it, an input's files (their digests as the input recorded
# them), which a job links into every result it writes, and linked files hashed once. Datasets'
# files are replaced, never changed in place.
_KNOWN: dict[tuple[int, int, int, int], str] = {}


def _identity(status: os.stat_result) -> tuple[int, int, int, int]:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def remember(path: str, digest: str) -> None:
    """``digest`` is the digest of the file ``path`` as it is now (computed on the way in)."""
    _KNOWN[_identity(os.stat(path))] = digest


def _digest(path: str) -> str:
    status = os.stat(path)
    key = _identity(status)
    if status.st_nlink < 2:  # a file of its own: met once
        return _KNOWN.pop(key, None) or file_digest(path)
    if key not in _KNOWN:
        _KNOWN[key] = file_digest(path)
    return _KNOWN[key]


def _remember_all(folder: Path, found: dict[str, Any]) -> None:
    """Remember the digests ``found`` of the files of the input ``folder``, by their names in it
    (not its metadata.yaml's: a sealed one's covers its text above the digests)."""
    for name, digest in found.items():
        if name != METADATA and isinstance(digest, str):
            with contextlib.suppress(OSError):
                remember(os.path.join(folder, name), digest)


def sealed(text: str, files: dict[str, str]) -> str:
    """``text`` (a metadata.yaml without digests) followed by the digests of ``files`` and of
    ``text`` itself, one ``"<file>": "<hex>"`` line each (JSON strings are YAML's double-quoted
    ones: any file name reads back)."""
    digests = {**files, METADATA: text_digest(text)}
    return (
        text + f"{DIGESTS}:\n" + "".join(f'  {json.dumps(k)}: "{v}"\n' for k, v in digests.items())
    )


def split_sealed(text: str) -> tuple[str, dict[str, str] | None]:
    """A metadata.yaml's text above its digests, and the digests as :func:`sealed` wrote them (one
    JSON pair a line: no YAML parser needed), or None where it has none, they do not read so,
    or an earlier opchain wrote them with another algorithm (then hash anew)."""
    at, algorithm = _block_at(text)
    if at < 0 or algorithm != DIGESTS:
        return text[: at + 1] if at >= 0 else text, None
    body, lines = text[: at + 1], text[at + len(_BLOCK) :].splitlines()
    pairs = [_DIGEST_LINE.fullmatch(line) for line in lines]
    if not all(pairs):
        return body, None
    return body, {_unquote(p[1]): p[2] for p in pairs if p is not None}


def without_digests(text: str) -> str:
    """A metadata.yaml's text above its digests (all of it where it has none): what a reader of
    its entries parses, half the lines of a dataset of many files."""
    at = _block_at(text)[0]
    return text if at < 0 else text[: at + 1]


def _block_at(text: str | bytes) -> tuple[int, str]:
    """Where a metadata.yaml's digests start (-1: it has none), and their algorithm."""
    if isinstance(text, bytes):
        return max((text.rfind(f"\n{name}:\n".encode()), name) for name in ALGORITHMS)
    return max((text.rfind(f"\n{name}:\n"), name) for name in ALGORITHMS)


def _unquote(name: str) -> str:
    """A JSON string's value (most file names need no escape: no parser)."""
    return name[1:-1] if "\\" not in name else json.loads(name)


def _unseal(raw: bytes) -> tuple[bytes, dict[str, str] | None, str]:
    """(the text the digests cover, the digests, their algorithm), or (raw, None, DIGESTS) for a
    metadata.yaml without."""
    at, algorithm = _block_at(raw)
    if at < 0:
        return raw, None, DIGESTS
    try:
        found = yaml.safe_load(raw[at + 1 :])[algorithm]
    except (yaml.YAMLError, TypeError, KeyError):
        found = None
    if not isinstance(found, dict) or not all(isinstance(v, str) for v in found.values()):
        return raw[: at + 1], {}, algorithm  # a damaged digest block: nothing matches
    return raw[: at + 1], {str(k): v for k, v in found.items()}, algorithm


# Inputs ------------------------------------------------------------------------------------------


def _record_path(storage: Path, dataset: str) -> Path:
    return storage / INDEX_DIR / INPUTS / hashlib.sha256(dataset.encode()).hexdigest()[:32]


def _stats(path: Path) -> dict[str, os.stat_result]:
    return {name: (path / name).stat() for name in files_of(path)}


def _size_time(status: os.stat_result) -> list[int]:
    """What an input's record keeps of a file's state: its size and modification time (ns)."""
    return [status.st_size, status.st_mtime_ns]


@cache  # once per input and process: a batch reads one input with many settings
def record_input(storage: Path, dataset: str) -> None:
    """Record the digests of the input ``dataset``'s files unless its record is current (same
    files, sizes and times), and remember them (``_KNOWN``) for the results that link its files. A
    dataset that carries its own digests (a result used as an input) needs no record: its digests
    are remembered."""
    path = storage / dataset
    text = _read(path / METADATA)
    at, algorithm = _block_at(text)
    if at >= 0 and algorithm == DIGESTS:  # a result: sealed already
        _remember_all(path, split_sealed(text.decode(errors="replace"))[1] or {})
        return
    stats = _stats(path)
    now = {name: _size_time(status) for name, status in stats.items()}
    record = _record_path(storage, dataset)
    old = _read_json(record)
    files = old.get("files", {})
    if (
        old.get("path") != dataset
        or old.get("algorithm", "sha256") != DIGESTS
        or {k: v[:2] for k, v in files.items()} != now
    ):
        files = {name: [*now[name], file_digest(path / name)] for name in stats}
        make_dirs(record.parent)
        found = {"path": dataset, "algorithm": DIGESTS, "files": files}
        record_text = json.dumps(found, sort_keys=True)
        write_atomic(record, record_text, clean=False)
    for name, status in stats.items():  # the very states the record was checked against
        _KNOWN[_identity(status)] = files[name][-1]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def recorded_inputs(storage: Path) -> list[str]:
    """Every input dataset with a record, sorted."""
    folder = storage / INDEX_DIR / INPUTS
    records = sorted(folder.iterdir()) if folder.is_dir() else []
    return sorted({str(r["path"]) for r in map(_read_json, records) if "path" in r})


# Checks ------------------------------------------------------------------------------------------


@dataclass
class Check:
    """What a dataset holds against what was recorded."""

    dataset: str  # relative to the storage root
    input: bool  # a user's input (never removed), else a result
    problems: list[str] = field(default_factory=list)  # "<file>: <what is wrong>": damage
    changes: list[str] = field(default_factory=list)  # an input's files edited since recorded
    verifiable: bool = True  # False: nothing recorded to check against
    bytes: int = 0  # read to check it

    @property
    def damaged(self) -> bool:
        return bool(self.problems)


def _mismatch(name: str, expected: str, found: str, algorithm: str) -> str:
    return f"{name}: expected {algorithm} {expected[:16]}, found {algorithm} {found[:16]}"


def _compare(check: Check, path: Path, expected: dict[str, str], algorithm: str) -> None:
    """Add a problem for each file of ``expected`` that is missing or whose digest differs."""
    for name, digest in expected.items():
        try:
            found = file_digest(path / name, algorithm)
        except FileNotFoundError:
            check.problems.append(f"{name}: missing")
            continue
        check.bytes += (path / name).stat().st_size
        if found != digest:
            check.problems.append(_mismatch(name, digest, found, algorithm))


def check_result(storage: Path, dataset: str) -> Check:
    """A result dataset against the digests in its metadata.yaml."""
    path = storage / dataset
    check = Check(dataset, input=False)
    try:
        raw = (path / METADATA).read_bytes()
    except FileNotFoundError:
        check.problems.append(f"{METADATA}: missing (an incomplete dataset)")
        return check
    covered, expected, algorithm = _unseal(raw)
    if expected is None:  # written before opchain recorded digests: nothing to check against
        check.verifiable = False
        return check
    own = expected.pop(METADATA, "")
    found = text_digest(covered, algorithm)
    if found != own:
        check.problems.append(_mismatch(METADATA, own, found, algorithm))
    _compare(check, path, expected, algorithm)
    extra = [n for n in files_of(path) if n != METADATA and n not in expected]
    check.problems += [f"{name}: unexpected (not written by opchain)" for name in extra]
    return check


def check_input(storage: Path, dataset: str) -> Check:
    """An input dataset against the record of its files made when a job first read them."""
    path = storage / dataset
    check = Check(dataset, input=True)
    record = _read_json(_record_path(storage, dataset))
    if record.get("path") != dataset:
        check.verifiable = False
        return check
    if not path.is_dir():  # removed by its owner, not by the disk
        check.changes.append("removed")
        return check
    stats = _stats(path)
    unchanged = {}
    for name, (size, mtime, digest) in record["files"].items():
        if name in stats and _size_time(stats[name]) != [size, mtime]:
            check.changes.append(f"{name}: modified")
        else:
            unchanged[name] = digest  # a missing file counts as damage: a lost one looks alike
    _compare(check, path, unchanged, record.get("algorithm", "sha256"))
    check.changes += [f"{name}: added" for name in stats if name not in record["files"]]
    return check


def remove_dataset(path: Path) -> None:
    """Remove the result dataset at ``path`` whole: renamed aside first (one atomic step: from
    then on it is absent, and the next ``snakemake`` recomputes it), then deleted. A kill in
    between leaves a hidden leftover that the dataset's next writer removes."""
    aside = aside_path(path)
    os.rename(path, aside)
    flush([path.parent])
    shutil.rmtree(aside)


# opchain verify ----------------------------------------------------------------------------------


def targets(plan: Plan, paths: list[Path], everything: bool) -> tuple[list[str], list[str]]:
    """The result and input datasets to check, relative to the storage root: those under
    ``paths``, under the whole root (``everything``), or by default those the configured chains
    use (their steps' datasets and their inputs)."""
    from opchain.plan import CHAINS_DIR, OPERATIONS_DIR  # here: jobs import this module, not plan

    storage = plan.storage
    if not paths and not everything:
        steps = plan.steps.values()
        found = {f"{s.dir}/dataset_{k}" for s in steps for k in range(1, s.size + 1)}
        results = sorted(d for d in found if (storage / d).is_dir())
        return results, sorted({d for s in steps for d in s.sources})
    tops = [""] if everything else [_inside(storage, path) for path in paths]
    patterns = (f"{CHAINS_DIR}/*/*/dataset_*", f"{OPERATIONS_DIR}/*/dataset_*")
    results = sorted(p.relative_to(storage).as_posix() for g in patterns for p in storage.glob(g))
    results = [d for d in results if any(_under(d, t) for t in tops)]
    inputs = [d for d in recorded_inputs(storage) if any(_under(d, t) for t in tops)]
    for path, top in zip(paths, tops, strict=False):
        if not any(_under(d, top) for d in results + inputs):
            raise OpchainError(f"{path}: holds no result dataset, nor an input a job has read")
    return results, inputs


def _inside(storage: Path, path: Path) -> str:
    """``path`` relative to the storage root ("" for the root itself)."""
    root = storage.resolve()
    if not path.resolve().is_relative_to(root):
        raise OpchainError(f"{path}: not under the storage root {storage}")
    relative = path.resolve().relative_to(root).as_posix()
    return "" if relative == "." else relative


def _under(dataset: str, top: str) -> bool:
    return not top or f"{dataset}/".startswith(f"{top}/")


def _progress(checks: Iterable[Check], total: int) -> Iterator[Check]:
    """``checks``, with a progress line on stderr: live on a terminal, else every 30 s."""
    live = sys.stderr.isatty()
    started = last = time.monotonic()
    read = 0
    for done, check in enumerate(checks, 1):
        read += check.bytes
        now = time.monotonic()
        if now - last >= (0.2 if live else 30):
            last = now
            line = (
                f"verifying: {done}/{total} datasets, {read / 2**20:.0f} MiB, {now - started:.0f} s"
            )
            sys.stderr.write(f"\r{line}" if live else f"{line}\n")
            sys.stderr.flush()
        yield check
    if live and last > started:
        sys.stderr.write("\r\033[K")


def verify(storage: Path, results: list[str], inputs: list[str], *, remove_damaged: bool) -> int:
    """Check ``results`` and ``inputs`` (relative to ``storage``), print a line per damaged
    dataset and per changed input, then a summary; remove damaged results if asked. Returns the
    exit code: 1 if anything was damaged."""
    pending = [(d, False) for d in results] + [(d, True) for d in inputs]
    checks = (check_input(storage, d) if i else check_result(storage, d) for d, i in pending)
    counts = {"intact": 0, "damaged": 0, "unverifiable": 0, "changed": 0, "removed": 0}
    read = 0
    for check in _progress(checks, len(pending)):
        read += check.bytes
        kind = "input " if check.input else ""
        if check.damaged:
            counts["damaged"] += 1
            note = " (an input: never removed)" if check.input else ""
            print(f"damaged {kind}{check.dataset}: {'; '.join(check.problems)}{note}")
            if remove_damaged and not check.input:
                remove_dataset(storage / check.dataset)
                counts["removed"] += 1
                print(f"removed {check.dataset} (the next snakemake recomputes it)")
        elif check.changes:
            counts["changed"] += 1
            changes = "; ".join(check.changes)
            print(
                f"changed input {check.dataset}: {changes} (edited since it was used: not damage)"
            )
        else:
            counts["intact" if check.verifiable else "unverifiable"] += 1
    parts = [f"{n} {what}" for what, n in counts.items() if n or what in ("intact", "damaged")]
    why = " (unverifiable: no checksums recorded, e.g. results written before opchain kept them)"
    print(
        f"verified {len(pending)} datasets ({read / 2**20:.1f} MiB read): {', '.join(parts)}"
        + (why if counts["unverifiable"] else "")
    )
    return 1 if counts["damaged"] else 0
