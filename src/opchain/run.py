"""Execute one job: a batch of result datasets of one step, each written atomically and alone.

``python -m opchain.run --code HASH --workers N MARKER LOG`` reads its step's spec from
``step.json`` beside MARKER (written by the planner when the run started) and its batch number from
MARKER's name, then for each dataset of the batch (N at once, in forked processes):

- if the dataset exists (an earlier attempt, or another run sharing the root, finished it): keep it;
- if the same grid point was computed before (same dataset fingerprint): hard-link its files
  (copy across filesystems) and write a ``metadata.yaml`` naming where it was ``computed_in``;
  the batch's known points are linked first, in bulk and without locks (:func:`_link_known`:
  groups published in one round of flushes each);
- else, under that dataset's lock in the storage root, read the input, call the operation, and
  write the result under a hidden temporary name beside its final place (daf data,
  ``datastore/``, ``input_metadata.yaml``, ``metadata.yaml`` ending with the digest of every
  file), published only when complete, with the datasets the process computed within half a
  second (:class:`_Publication`: flushed to stable storage, renamed, their directories flushed).

A dataset is never put over a finished one: of two processes publishing the same point (the
same bytes), the second drops its copy.

So a killed batch keeps its finished datasets (all but the last half second's) and its rerun computes only the missing ones, and no
process ever removes another live process's temporary. The step-level files are shared by the
step's jobs: ``operation.log`` gets each dataset's lines in one appending write, and
``source_operation.yaml`` (the operation as it ran) is written once. Finally the job touches MARKER,
the output Snakemake waits for.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import Future, wait
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

from opchain import __version__, locks, verify
from opchain.atomic import (
    aside_path,
    durable,
    link_same,
    make_dirs,
    publish_many,
    remove_leftovers,
    set_durable,
    tree,
    write_atomic,
)
from opchain.daf import FilesReader, FilesWriter, Reader, open_reader
from opchain.datastore import DataStore
from opchain.errors import OpchainError, storage_error, storage_errors
from opchain.index import Index
from opchain.operations import Context, Operation, get_operation
from opchain.operations.sources import set_project_folder
from opchain.reuse import link_files, linked_files, linked_metadata
from opchain.table import dump_yaml

__all__ = ["keep_freed_memory", "main", "run_batch", "versions"]

H5_FILE = "data.h5"  # a result stored as HDF5 is <dataset dir>/data.h5
LINK_GROUP = 256  # datasets linked at once, in one round of flushes
PUBLISH_SECONDS = 0.5  # a computed dataset waits at most this long to be published with others
PUBLISH_GROUP = 64
INPUT_METADATA = "input_metadata.yaml"
log = logging.getLogger("opchain")


class DatasetFailed(OpchainError):
    """One dataset of a batch failed; the message names it, the traceback goes to the job log."""


def versions(snakemake_version: str) -> dict[str, str]:
    """What a result records of the software that made it."""
    return {
        "opchain": __version__,
        "python": sys.version.split()[0],  # = platform.python_version(), without its import
        "numpy": np.__version__,
        "snakemake": snakemake_version,
    }


def now() -> str:
    return datetime.now(UTC).astimezone().isoformat(timespec="milliseconds")


def run_batch(spec: dict[str, Any], code: str | None = None, workers: int = 1) -> list[Path]:
    """Make every dataset of the batch ``spec`` exist; return their directories. ``code``: the
    operation's code hash the run was planned with (refused if the code changed since);
    ``workers``: how many datasets are computed at once (the job's threads)."""
    storage = Path(spec["storage"])
    step_dir = storage / spec["dir"]
    set_durable(spec.get("durable", True))
    set_project_folder(Path(spec["operations_code"]) if spec["operations_code"] else None)
    operation = get_operation(spec["type"], checked=True)
    if code is not None and operation.code_hash != code:
        raise OpchainError(
            f"operation '{spec['operation']}' changed since this run was planned; run snakemake "
            "again to plan with its new code"
        )
    make_dirs(step_dir)
    # Killed attempts' temporaries (.dataset_<k>.tmp-*), found with one listing of the step.
    leftovers = {n.split(".tmp-")[0][1:] for n in os.listdir(step_dir) if ".tmp-" in n}
    outputs = [step_dir / f"dataset_{d['k']}" for d in spec["datasets"]]
    # The fast path: no lock needed to see a finished dataset.
    todo = [d for d, output in zip(spec["datasets"], outputs, strict=True) if not output.exists()]
    if not spec.get("forced"):  # a forced step computes afresh what was computed before
        todo = _link_known(spec, todo, leftovers)
    shares = [todo[i::workers] for i in range(min(workers, len(todo)))] or [[]]
    threads = max(1, workers // len(shares))  # what fewer datasets than threads leave: their own
    if len(shares) == 1:
        _make_datasets(operation, spec, shares[0], leftovers, threads)
    else:  # datasets are independent: one process each, forked with the operation loaded
        import multiprocessing  # here: ~50 ms of imports a one-thread job does without
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(len(shares), mp_context=context) as pool:
            done = [
                pool.submit(_make_datasets, operation, spec, s, leftovers, threads) for s in shares
            ]
            for future in done:
                future.result()
    source = step_dir / "source_operation.yaml"
    if not source.exists():
        write_atomic(step_dir / "source_operation.original.yaml", _original(spec["source"]))
        write_atomic(source, source_operation(spec["source"]))
    return outputs


def _make_datasets(
    operation: Operation,
    spec: dict[str, Any],
    datasets: list[dict[str, Any]],
    leftovers: set[str],
    threads: int,
) -> None:
    """Make ``datasets`` of the batch, one after another, each under its lock, each with
    ``threads`` cores for its arithmetic."""
    storage, index = Path(spec["storage"]), Index(Path(spec["storage"]))
    step_dir = storage / spec["dir"]
    log_fd = os.open(step_dir / "operation.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    with CostMeter() as meter, closing_fd(log_fd), _Publication(log_fd) as publication:
        for dataset in datasets:
            output = step_dir / f"dataset_{dataset['k']}"
            with ExitStack() as lock:
                lock.enter_context(locks.hold(storage, f"{spec['dir']}/{output.name}"))
                if output.exists():  # finished by another run while we waited
                    continue
                if output.name in leftovers:  # we hold the lock: none of them is a live one
                    remove_leftovers(output)
                computed = None if spec.get("forced") else index.computed_at(dataset["fingerprint"])
                if computed and _link_group(spec, [(dataset, computed)], log_fd):
                    continue
                with _step_log(output, log_fd) as step_log:
                    ready = _make_dataset(
                        operation, spec, dataset, output, index, step_log, meter, threads
                    )
                publication.add(ready, lock.pop_all())  # the lock is held until it is published


class _Ready(NamedTuple):
    """A dataset computed aside, to publish."""

    temporary: Path
    output: Path
    entry: tuple[Path, Path]  # its index entry: aside, final
    written: list[Path]  # what publishing it flushes first


class _Publication:
    """The datasets a process computes within PUBLISH_SECONDS of each other, published together:
    one round of flushes before their renames and one after, for all of them (a round waits for
    the disk, and two a dataset were most of a cheap dataset's cost), each under its lock until
    then. A timer publishes a group at the latest PUBLISH_SECONDS after its first dataset was
    ready, so a kill loses no more finished work than that (removed as leftovers), however long
    the next dataset takes; an error publishes what is complete first."""

    def __init__(self, log_fd: int) -> None:
        self.log_fd = log_fd
        self.ready: list[tuple[_Ready, ExitStack]] = []
        self.mutex = threading.Lock()  # guards ready: the timers' threads publish too
        self.timer: threading.Timer | None = None  # the pending group's
        self.timers: list[threading.Timer] = []  # every one started: joined at the end
        self.failed: BaseException | None = None  # a timer's publication's error, to raise

    def __enter__(self) -> _Publication:
        return self

    def add(self, ready: _Ready, lock: ExitStack) -> None:
        if self.failed is not None:
            raise self.failed
        with self.mutex:
            self.ready.append((ready, lock))
            group = self._take() if len(self.ready) >= PUBLISH_GROUP else []
            if not group and self.timer is None:
                self.timer = threading.Timer(PUBLISH_SECONDS, self._due)
                self.timer.daemon = True
                self.timer.start()
                self.timers.append(self.timer)
        self._publish(group)  # not under the mutex: computing goes on while a group is flushed

    def _take(self) -> list[tuple[_Ready, ExitStack]]:
        """The pending group, to publish (under the mutex)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        pending, self.ready = self.ready, []
        return pending

    def _due(self) -> None:
        with self.mutex:
            group = self._take()
        try:
            self._publish(group)
        except BaseException as error:
            self.failed = error

    def _publish(self, pending: list[tuple[_Ready, ExitStack]]) -> None:
        if not pending:
            return
        group = [ready for ready, _ in pending]
        try:
            published = publish_many(
                [(r.temporary, r.output) for r in group],
                [path for r in group for path in (*r.written, r.entry[0])],
                along={r.output: [r.entry] for r in group},
            )
        finally:  # what was not published is removed, and every lock released
            for ready, lock in pending:
                shutil.rmtree(ready.temporary, ignore_errors=True)
                ready.entry[0].unlink(missing_ok=True)
                lock.close()
        dropped = "".join(
            log_line(r.output.name, "INFO", "published meanwhile by another process: dropped")
            for r in group
            if r.output not in published  # a process linking the same point: the same bytes
        )
        os.write(self.log_fd, dropped.encode())

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        with self.mutex:
            group = self._take()
        try:
            if kind is None:
                self._publish(group)
            else:  # the error that stopped the batch is the one to tell, not one publishing
                with suppress(Exception):
                    self._publish(group)
        finally:
            for timer in self.timers:  # a group being published by its timer
                timer.join()
        if kind is None and self.failed is not None:
            raise self.failed


def _make_dataset(
    operation: Operation,
    spec: dict[str, Any],
    dataset: dict[str, Any],
    output: Path,
    index: Index,
    step_log: logging.Logger,
    meter: CostMeter,
    threads: int,
) -> _Ready:
    """Compute ``dataset`` into a temporary beside ``output``, with its index entry aside."""
    storage = Path(spec["storage"])
    temporary = aside_path(output)
    temporary.mkdir()
    entry = None
    try:
        step_log.info("%s %s on %s", spec["operation"], dataset["parameters"], dataset["input"])
        metadata, linked = _compute(
            operation, spec, dataset, temporary, output, step_log, meter, threads
        )
        scores = metadata["results"]
        step_log.info("done: %s", ", ".join(f"{k}={v}" for k, v in scores.items()) or "-")
        described = inputs_metadata(storage, dataset)
        _write_input_metadata(temporary / INPUT_METADATA, described)
        for path in dataset_inputs(dataset):  # its digests are those of the files it links
            _recording(storage, path).result()
        files = verify.digests(temporary, {})
        # The dataset's cost counts its checksums too: hashing costs what writing does.
        metadata.update(finished=now(), cost=meter.stop())
        text = verify.sealed(dump_yaml(metadata), files)
        (temporary / "metadata.yaml").write_text(text, encoding="utf-8")
        entry = index.dataset_entry(dataset["fingerprint"], metadata["output"])
        written = tree(temporary, linked) if durable() else []
        return _Ready(temporary, output, entry, written)
    except BaseException as error:
        wait(list(_RECORDINGS.values()))
        shutil.rmtree(temporary, ignore_errors=True)
        if entry is not None:
            entry[0].unlink(missing_ok=True)
        if not isinstance(error, Exception):
            raise
        full = storage_error(error, output)  # the storage's fault, not the operation's
        step_log.error("failed: %s", full or f"{type(error).__name__}: {error}")
        if full is not None:  # no traceback: Snakemake shows a failed job's log
            raise full from None
        if not isinstance(error, OpchainError):  # a bug in the operation: the job log has all
            log.error("%s", traceback.format_exc().rstrip())
        raise DatasetFailed(
            f"{output.relative_to(storage)}: operation '{spec['operation']}' failed: "
            f"{type(error).__name__}: {error}"
        ) from error


def _compute(
    operation: Operation,
    spec: dict[str, Any],
    dataset: dict[str, Any],
    temporary: Path,
    output: Path,
    step_log: logging.Logger,
    meter: CostMeter,
    threads: int,
) -> tuple[dict[str, Any], set[str]]:
    """Call the operation into ``temporary``; return the dataset's metadata, and the names of
    the files it hard-linked from its input (not flushed again when published)."""
    storage = Path(spec["storage"])
    started = now()
    meter.start()
    data = open_inputs(storage, dataset)
    for path in dataset_inputs(dataset):
        _recording(storage, path)
    if spec["format"] == "h5":
        from opchain.daf import H5Writer

        writer = H5Writer(temporary / H5_FILE, atomic=False)
    else:
        writer = FilesWriter(temporary, overwrite=True, atomic=False)
    combination = combination_metadata(dataset)
    context = Context(
        writer,
        DataStore(),
        step_log,
        spec["seed"],
        operation.random,
        combination.get("combination"),
        threads,
    )
    operation.function(data, dict(dataset["parameters"]), context)
    writer.close()
    # The values are written aside; their URLs name where the directory will be.
    urls = (
        context.datastore.save(temporary / "datastore", storage, final_folder=output / "datastore")
        if context.datastore
        else {}
    )
    figures = {}
    if context.figures:  # only then: matplotlib's import costs a job ~200 ms
        from opchain.report import save_figures

        figures = save_figures(
            context.figures, temporary / "datastore", storage, output / "datastore"
        )
    metadata = {
        "operation": spec["operation"],
        "type": spec["type"],
        "parameters": dataset["parameters"],
        "run": spec["seed"],
        "seed": spec["seed"],
        "fingerprint": spec["fingerprint"],
        "dataset_fingerprint": dataset["fingerprint"],
        "input": dataset["input"],
        **combination,
        "output": output.relative_to(storage).as_posix(),
        "format": spec["format"],
        "results": _plain(context.results),
        "datastore": urls,
        "figures": figures,
        "components": spec["components"],
        "versions": versions(spec["snakemake"]),
        "host": os.uname().nodename,  # = socket.gethostname(), without its import
        "started": started,
    }
    return metadata, writer.linked if isinstance(writer, FilesWriter) else set()


def _link_known(
    spec: dict[str, Any], datasets: list[dict[str, Any]], leftovers: set[str]
) -> list[dict[str, Any]]:
    """Link the datasets of the batch computed before (their fingerprints are in the index) in
    groups of LINK_GROUP; return the datasets still to compute. No lock is taken: a link is
    cheap and the same whoever makes it, and publishing never puts a dataset over a finished one
    (of two processes linking one point, one publishes, the other drops its copy)."""
    storage = Path(spec["storage"])
    index, step_dir = Index(storage), storage / spec["dir"]
    known = {d["k"]: found for d in datasets if (found := index.computed_at(d["fingerprint"]))}
    linkable = [(d, known[d["k"]]) for d in datasets if d["k"] in known]
    if not linkable:
        return datasets
    for dataset, _ in linkable:
        if f"dataset_{dataset['k']}" in leftovers:  # only dead writers' (remove_leftovers)
            remove_leftovers(step_dir / f"dataset_{dataset['k']}")
    done: set[int] = set()
    log_fd = os.open(step_dir / "operation.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    with closing_fd(log_fd):
        for at in range(0, len(linkable), LINK_GROUP):
            done |= _link_group(spec, linkable[at : at + LINK_GROUP], log_fd)
    return [d for d in datasets if d["k"] not in done]


def _link_group(
    spec: dict[str, Any], datasets: list[tuple[dict[str, Any], str]], log_fd: int
) -> set[int]:
    """Link each of ``datasets`` from where it was computed (paired with it), all published in
    one round of flushes; log a line each; return the numbers of those now in place (not those
    whose earlier place is gone: they are computed)."""
    moves: dict[Path, tuple[Path, str]] = {}  # final: (temporary, where it was computed)
    written: list[Path] = []
    numbers = {}
    try:
        for dataset, computed in datasets:
            output = Path(spec["storage"], spec["dir"], f"dataset_{dataset['k']}")
            aside = _link_aside(spec, dataset, computed, output)
            if aside is not None:
                moves[output] = (aside[0], computed)
                written += aside[1]
                numbers[output] = dataset["k"]
        published = publish_many([(aside, final) for final, (aside, _) in moves.items()], written)
    finally:  # what was not published: on an error, or another process's dataset is there
        for aside, _ in moves.values():
            if aside.exists():
                shutil.rmtree(aside, ignore_errors=True)
    lines = [
        log_line(final.name, "INFO", f"the same point as {computed}: linked")
        for final, (_, computed) in moves.items()
        if final in published
    ]
    os.write(log_fd, "".join(lines).encode())
    return {numbers[final] for final in moves}


def _link_aside(
    spec: dict[str, Any], dataset: dict[str, Any], computed: str, output: Path
) -> tuple[Path, list[Path]] | None:
    """The dataset computed at ``computed`` linked into a temporary beside ``output``, with its
    own metadata for that place; returns the temporary and what to flush before publishing it,
    or None if the earlier place is gone (or lost a file) since: then it is computed."""
    storage = Path(spec["storage"])
    try:
        body, digests = verify.split_sealed(
            (storage / computed / "metadata.yaml").read_text(encoding="utf-8")
        )
    except OSError:
        return None
    temporary = aside_path(output)
    temporary.mkdir()
    try:
        written = link_files(
            storage / computed, temporary, linked_files(storage / computed, digests)
        )
        own = inputs_metadata(storage, dataset)
        _write_input_metadata(temporary / INPUT_METADATA, own)
        place = {
            "seed": spec["seed"],
            "run": spec["seed"],
            "fingerprint": spec["fingerprint"],
            "input": dataset["input"],
            **combination_metadata(dataset),  # its members' datasets here
            "output": output.relative_to(storage).as_posix(),
        }
        metadata = linked_metadata(body, digests, place, temporary, own)
        (temporary / "metadata.yaml").write_text(metadata, encoding="utf-8")
    except BaseException as error:
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, FileNotFoundError):  # a file of it is gone
            return None
        raise
    return temporary, [*written, temporary / INPUT_METADATA, temporary / "metadata.yaml"]


def _plain(value: Any) -> Any:
    """Scores as plain YAML values (numpy scalars and arrays become Python numbers and lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value.tolist() if isinstance(value, np.generic | np.ndarray) else value


@cache  # a batch reads one input with many settings
def input_metadata(storage: Path, dataset: str) -> str:
    """The input's own metadata.yaml, or a generated description of a raw dataset."""
    path = storage / dataset
    own = path / "metadata.yaml"
    if own.is_file():
        return own.read_text(encoding="utf-8")
    return dump_yaml({**open_reader(path).description(), "path": dataset})


def open_inputs(storage: Path, dataset: dict[str, Any]) -> Any:
    """What the operation reads: a reader of its input or, for a combination, one per member
    (training members first)."""
    combination = dataset.get("combination")
    if combination is None:
        return _readers([storage / dataset["input"]])[0]
    paths = {name: storage / path for name, path in members(combination).items()}
    return dict(zip(paths, _readers(list(paths.values())), strict=True))


_LAST_INPUT_METADATA: dict[str, Path] = {}  # the last input_metadata.yaml written, by text


def _write_input_metadata(path: Path, text: str) -> None:
    """Write ``path``, or link the last one written if it is the same text (one file less to
    create: a batch's results mostly read one input). Linking the same file each time, its
    text is checked by its inode, size and time (``link_same``), not read. It may be in a
    temporary published since: then it is written afresh, once a group of datasets."""
    last = _LAST_INPUT_METADATA.get(text)
    if last is not None and link_same(last, path, text.encode()):
        return
    path.write_text(text, encoding="utf-8")
    _LAST_INPUT_METADATA.clear()
    _LAST_INPUT_METADATA[text] = path


_LAST_READERS: dict[Path, Reader] = {}  # the readers this process handed out for its last dataset


def _readers(paths: list[Path]) -> list[Reader]:
    """A reader of each of ``paths``: reopened from the last dataset's reader of the same path,
    so the datasets of a batch that read one input (every setting of a grid) read and check its
    files once. Only the last dataset's readers are kept, so a process holds no more than one
    dataset needs."""
    fresh = [
        known.reopened()
        if isinstance(known := _LAST_READERS.get(path), FilesReader)
        else open_reader(path)
        for path in paths
    ]
    _LAST_READERS.clear()
    _LAST_READERS.update(zip(paths, fresh, strict=True))
    return fresh


_RECORDINGS: dict[tuple[Path, str], Future[None]] = {}  # by (storage, input): once a process


def _recording(storage: Path, path: str) -> Future[None]:
    """The input's digests being recorded (:func:`opchain.verify.record_input`) in a thread of
    its own while the operation computes: reading and hashing release the GIL (the first step
    on an input of 8 GB reads it all). Its results wait for it before they are hashed, and a
    failed dataset before it is cleaned up (no half-written record is left behind)."""
    if (storage, path) in _RECORDINGS:
        return _RECORDINGS[storage, path]
    done: Future[None] = Future()
    _RECORDINGS[storage, path] = done

    def record() -> None:
        try:
            verify.record_input(storage, path)
        except BaseException as error:  # the dataset fails with it, as if recorded in line
            done.set_exception(error)
        else:
            done.set_result(None)

    threading.Thread(target=record, daemon=True).start()
    return done


def dataset_inputs(dataset: dict[str, Any]) -> list[str]:
    """The datasets a result reads: its input, or every member of its combination."""
    combination = dataset.get("combination")
    return list(members(combination).values()) if combination else [dataset["input"]]


def combination_metadata(dataset: dict[str, Any]) -> dict[str, Any]:
    """A combination's entries in its result's metadata.yaml: ``combination`` (its name, train
    and test members) and ``inputs`` (each member's dataset); none for other results."""
    combination = dataset.get("combination")
    if combination is None:
        return {}
    roles = {key: combination[key] for key in ("name", "train", "test")}
    return {"combination": roles, "inputs": members(combination)}


def members(combination: dict[str, Any]) -> dict[str, str]:
    """A combination's members' datasets, training members first (step.json sorts keys)."""
    return {
        name: combination["inputs"][name] for name in combination["train"] + combination["test"]
    }


def inputs_metadata(storage: Path, dataset: dict[str, Any]) -> str:
    """input_metadata.yaml: the input's metadata, or for a combination each member's by name."""
    combination = dataset.get("combination")
    if combination is None:
        return input_metadata(storage, dataset["input"])
    return dump_yaml(
        {
            name: yaml.safe_load(input_metadata(storage, path))
            for name, path in members(combination).items()
        }
    )


def source_operation(source: dict[str, Any]) -> str:
    """The operation as it ran: its type and every resolved setting (overrides applied, defaults
    filled in). The file as written is kept beside it, in source_operation.original.yaml."""
    settings = source["settings"]
    spec: dict[str, Any] = {"type": source["type"]}
    if len(settings) == 1:
        spec["parameters"] = settings[0]
    else:
        spec["parameter_settings"] = settings
    if source["overridden_params"]:
        spec["overridden_params"] = source["overridden_params"]
    header = f"# the operation as it ran, from {source['file']} (as written: source_operation.original.yaml)\n"
    return header + dump_yaml(spec)


def _original(source: dict[str, Any]) -> str:
    return Path(source["file"]).read_text(encoding="utf-8")


def log_line(name: str, level: str, message: str, created: float | None = None) -> str:
    """One line of a step's operation.log, about dataset ``name``."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
    return f"{stamp} {name} {level} {message}\n"


@contextmanager
def _step_log(output: Path, log_fd: int) -> Iterator[logging.Logger]:
    """Collect one dataset's log lines and append them to the step's operation.log (open as
    ``log_fd``, O_APPEND) in one write, so the lines of jobs running side by side never mix."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(
                log_line(output.name, record.levelname, record.getMessage(), record.created)
            )

    step_log = logging.getLogger("opchain.step")
    handler = Collect()
    step_log.addHandler(handler)
    step_log.setLevel(logging.INFO)
    try:
        yield step_log
    finally:
        step_log.removeHandler(handler)
        os.write(log_fd, "".join(lines).encode())


@contextmanager
def closing_fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


class CostMeter:
    """Wall and CPU time and peak anonymous memory (RssAnon, sampled every 20 ms from /proc) of
    each dataset a job computes: what a step costs, to size its ``resources`` from."""

    def __init__(self) -> None:
        self._peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> CostMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self._peak = max(self._peak, rss_anon())

    def start(self) -> None:
        self._peak = rss_anon()
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self) -> dict[str, float]:
        return {
            "wall_seconds": round(time.perf_counter() - self._wall, 4),
            "cpu_seconds": round(time.process_time() - self._cpu, 4),
            "peak_anon_mb": round(max(self._peak, rss_anon()) / 2**20, 1),
        }


def rss_anon() -> int:
    """This process's anonymous resident memory in bytes (0 where /proc has no RssAnon)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def batch_spec(marker: Path) -> dict[str, Any]:
    """The spec of the batch whose output is ``marker`` (``.../<step>/batch_<b>``): its step's
    spec (``step.json`` beside it, written when the run started) with the batch's datasets."""
    spec = json.loads((marker.parent / "step.json").read_text(encoding="utf-8"))
    b, batch = int(marker.name.removeprefix("batch_")), spec["batch"]
    last = min(b * batch, len(spec["fingerprints"]))
    spec["datasets"] = []
    for k in range((b - 1) * batch + 1, last + 1):
        u, j = _pair(spec, k)
        spec["datasets"].append(
            {
                "k": k,
                "parameters": spec["settings"][j],
                "fingerprint": spec["fingerprints"][k - 1],
                **_reads(spec, k, u),
            }
        )
    return spec


def _pair(spec: dict[str, Any], k: int) -> tuple[int, int]:
    """Dataset k's (input or combination, setting): as listed where upstream constraints drop
    some (see :attr:`opchain.plan.Step.pairs`), else every input with every setting in turn."""
    if spec["pairs"] is not None:
        u, j = spec["pairs"][k - 1]
        return u, j
    return divmod(k - 1, len(spec["settings"]))


def _reads(spec: dict[str, Any], k: int, u: int) -> dict[str, Any]:
    """Dataset k's ``input`` (input ``u``; for a combination: its first test member, else its
    first, which lineage follows) and its ``combination``."""
    if "combinations" not in spec:
        return {"input": spec["inputs"][u]}
    combination = spec["combinations"][k - 1]
    first = (combination["test"] or combination["train"])[0]
    return {"input": combination["inputs"][first], "combination": combination}


def keep_freed_memory() -> None:
    """Have the C library's malloc keep the memory numpy frees for its next allocation. glibc
    hands blocks of 128 KiB and more back to the kernel by default, so each temporary of the
    arithmetic on a piece of a block (256 KiB - 2 MiB) is fresh pages, faulted in again: log1p
    cost 6.2 ns a value that way, 2.6 ns with the memory kept. Elsewhere (no ``mallopt``): as is."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the process's own C library
    if mallopt is not None:
        mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks this big or more are mapped on their own
        mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: free memory kept at the heap's top


def main(argv: list[str]) -> None:
    """``python -m opchain.run --code HASH --workers N MARKER LOG``: the command of every operation
    rule. A plain process, not a ``script:`` job: not importing Snakemake saves each job as much
    as numpy costs it. HASH is the operation's code hash the run was planned with; N datasets are
    computed at once (the job's threads)."""
    if len(argv) != 6 or argv[0] != "--code" or argv[2] != "--workers":
        sys.exit(
            "usage: python -m opchain.run --code HASH --workers N MARKER LOG  "
            "(step.json beside MARKER)"
        )
    code, workers, marker, log_file = argv[1], int(argv[3]), Path(argv[4]), argv[5]
    keep_freed_memory()
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        spec = batch_spec(marker)
        with storage_errors(Path(spec["storage"], spec["dir"])):
            for output in run_batch(spec, code, workers):
                log.info("%s", output)
    except OpchainError as error:  # one line on stderr; the traceback, if any, is in the log
        message = f"opchain: {error}"
        if isinstance(error.__cause__, Exception) and not isinstance(error.__cause__, OpchainError):
            message += f" (traceback in {log_file})"
        log.error(message)
        os.write(2, f"{message}\n".encode())  # one write: jobs running side by side share stderr
        sys.exit(1)
    marker.touch()


if __name__ == "__main__":
    main(sys.argv[1:])
    gc.freeze()  # the interpreter's exit need not search all the job imported for cycles (~0.1 s)
