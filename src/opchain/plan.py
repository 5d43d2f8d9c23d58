"""From specs to Snakemake jobs: every step gets a fingerprint and a directory, every result
dataset a fingerprint of its own, and every incomplete batch of datasets one Snakemake job.

A step is one operation of a chain applied to every dataset of its input summary, once per parameter
setting: ``dataset_<k>`` of a step reads upstream dataset ``i`` with setting ``j``
(``k = i * settings + j + 1``). The step's fingerprint hashes the operation, its code hash and
version, the whole grid of settings, the upstream step (for the first step: the input files' paths,
sizes and mtimes), the result format and, for random operations only, the seed: it names the step
directory, so a changed parameter gives a new directory and setting it back finds the old one. A
dataset's own fingerprint hashes the same but for one setting and one upstream *dataset*: a grid
point computed once is reused (hard-linked) by any later grid that contains it.

What runs is decided here, not by Snakemake's file timestamps: a batch (a run of consecutive
datasets of one step, see :func:`batch_size`) is a job exactly when one of its datasets is missing
on disk. Snakemake sees one small marker file per such batch (``.opchain/jobs/...`` in the working
directory; rule chain_manifest removes them once it has read them) and orders the jobs by the
markers of the incomplete upstream batches they read. So deleting a result directory reruns exactly
it, and a run with nothing missing does nothing.

Planning runs at Snakefile parse time, in the main process and again in every cluster job; it reads
the index and lists each step directory once. Directory names are proposed here and reserved in
Snakemake's ``onstart`` (:meth:`Plan.start`), which also writes each job's spec file: a dry run
writes nothing to the storage root.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from opchain.atomic import durable, set_durable, write_atomic
from opchain.errors import SpecError
from opchain.index import Index
from opchain.operations.sources import project_folder, set_project_folder
from opchain.spec import ChainSpec, OperationSpec, load_chain, load_operation

__all__ = [
    "ChainPlan",
    "Plan",
    "Step",
    "batch_size",
    "canonical_json",
    "find_datasets",
    "inside_storage",
    "plan_from_config",
    "storage_root",
]

CHAINS_DIR = "operation_chain_results"
OPERATIONS_DIR = "operation_results"
FORMATS = ("files", "h5")
JOBS_DIR = ".opchain/jobs"  # in the working directory: markers and job specs of this run
TABLES_DIR = ".opchain/chains"  # in the working directory: Snakemake's copies of chain tables
MAX_BATCH = 100  # datasets per job at most: a cheap dataset costs ~1-5 ms, a job's start ~130 ms
JOBS_PER_STEP = 16  # auto batches aim at this many jobs per step: every core and node gets work
DEFAULT_MAX_DATASETS = 1_000_000
PROJECT_OPERATIONS = "scripts/operations"  # the project's own operations, found by name


def rule_name(operation: str) -> str:
    """A Snakemake rule name for an operation: a Python identifier, clear of opchain's own rules."""
    name = re.sub(r"\W", "_", operation)
    return (
        f"op_{name}"
        if name in ("all", "chain_manifest", "chain_report") or name[0].isdigit()
        else name
    )


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def fingerprint(components: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(components).encode()).hexdigest()[:20]


def batch_size(datasets: int, setting: int | str) -> int:
    """Datasets per job: ``setting`` if a number, else enough for ~16 jobs per step, at most 100
    (a fixed function of the step, so every process of a run cuts the same batches)."""
    if setting != "auto":
        return int(setting)
    return max(1, min(MAX_BATCH, math.ceil(datasets / JOBS_PER_STEP)))


@dataclass(eq=False)
class Step:
    dir: str
    fingerprint: str
    components: dict[str, Any]
    operation: OperationSpec
    seed: int | None
    sources: list[str]  # a first step's input datasets (a later step reads its upstream's)
    upstream: Step | None
    input_fingerprints: list[str]  # for a first step: each input dataset's files fingerprint
    label: str  # <chain>/<position>_<fingerprint>: its jobs' marker folder
    batch: int  # datasets per job
    existing: frozenset[str] = frozenset()  # dataset_<k> names found in its directory

    @property
    def settings(self) -> tuple[dict[str, Any], ...]:
        return self.operation.settings

    def input_of(self, i: int) -> str:
        """The dataset it reads for inputs i (the upstream's by its final name, once reserved)."""
        return f"{self.upstream.dir}/dataset_{i + 1}" if self.upstream else self.sources[i]

    @property
    def size(self) -> int:
        n_inputs = self.upstream.size if self.upstream else len(self.sources)
        return n_inputs * len(self.settings)

    @property
    def batches(self) -> int:
        return math.ceil(self.size / self.batch)

    def batch_range(self, b: int) -> range:
        """The dataset numbers k of batch b (both 1-based)."""
        return range((b - 1) * self.batch + 1, min(b * self.batch, self.size) + 1)

    @cached_property
    def incomplete(self) -> list[int]:
        """The batches with a dataset missing on disk: the ones that become jobs."""
        return [
            b
            for b in range(1, self.batches + 1)
            if any(f"dataset_{k}" not in self.existing for k in self.batch_range(b))
        ]

    def marker(self, b: int) -> str:
        return f"{JOBS_DIR}/{rule_name(self.operation.operation.name)}/{self.label}/batch_{b}"

    def upstream_markers(self, b: int) -> list[str]:
        """Markers of the incomplete upstream batches that batch b reads from."""
        up = self.upstream
        if up is None or not up.incomplete:
            return []
        k = self.batch_range(b)
        first, last = (k.start - 1) // len(self.settings), (k.stop - 2) // len(self.settings)
        wanted = range(first // up.batch + 1, last // up.batch + 2)
        return [up.marker(u) for u in up.incomplete if u in wanted]

    @cached_property
    def _point(self) -> dict[str, Any]:
        return {k: v for k, v in self.components.items() if k not in ("settings", "upstream")}

    def dataset_fingerprint(self, k: int) -> str:
        """What dataset k is a pure function of: one setting applied to one upstream dataset."""
        i, j = divmod(k - 1, len(self.settings))
        if self.upstream is None:
            upstream = self.input_fingerprints[i]
        else:
            upstream = self.upstream.dataset_fingerprint(i + 1)
        return fingerprint({**self._point, "setting": self.settings[j], "upstream": upstream})

    def describe(self, b: int) -> str:
        """A job's line in Snakemake's output."""
        ks = self.batch_range(b)
        grid = f"{len(self.settings)} settings x " if len(self.settings) > 1 else ""
        seed = f", seed {self.seed}" if self.operation.operation.random else ""
        resources = "".join(f", {k}={v}" for k, v in self.operation.operation.resources.items())
        which = f"dataset {ks.start}" if len(ks) == 1 else f"datasets {ks.start}-{ks.stop - 1}"
        return (
            f"{self.operation.operation.name} ({self.label}{seed}): {grid}"
            f"{self.size // len(self.settings)} inputs, {which} of {self.size} in {self.dir}"
            f"{resources}"
        )

    def job_spec(self, b: int, storage: Path, snakemake_version: str) -> dict[str, Any]:
        """Everything batch b's process needs (written to a file by :meth:`Plan.start`)."""
        op = self.operation
        datasets = []
        for k in self.batch_range(b):
            i, j = divmod(k - 1, len(self.settings))
            datasets.append(
                {
                    "k": k,
                    "input": self.input_of(i),
                    "parameters": self.settings[j],
                    "fingerprint": self.dataset_fingerprint(k),
                }
            )
        folder = project_folder()
        return {
            "storage": str(storage),
            "durable": durable(),  # the config's, for the job's process
            "operations_code": str(folder) if folder else None,
            "snakemake": snakemake_version,
            "dir": self.dir,
            "operation": op.operation.name,
            "type": op.type,
            "seed": self.seed,
            "fingerprint": self.fingerprint,
            "components": self._point,
            "format": self.components["format"],
            "source": self.source_file,  # the step's whole grid: read once, not in every batch
            "datasets": datasets,
        }

    @property
    def source_file(self) -> str:
        return f"{JOBS_DIR}/{rule_name(self.operation.operation.name)}/{self.label}/source.json"

    def source(self) -> dict[str, Any]:
        """What the step's source_operation.yaml records: the operation as it runs."""
        op = self.operation
        return {
            "file": str(op.path),
            "type": op.type,
            "overridden_params": op.overrides,
            "settings": list(self.settings),
        }


@dataclass
class ChainPlan:
    spec: ChainSpec
    key: str  # its index key: the chain's name, made unique against other projects' chains
    dir: str
    runs: list[list[Step]]  # runs[r][i]: step i of run r (deterministic prefixes are shared)

    def manifest(self) -> dict[str, Any]:
        """chain.yaml: the compiled chain, in order, with the directory of every step of every run."""
        return {
            "chain": self.spec.name,
            "key": self.key,
            "origin": self.spec.origin,
            "spec": str(self.spec.path),
            "input_path": self.spec.input_path,
            "runs": [
                {
                    "run": r,
                    "seed": r,
                    "steps": [
                        {
                            "dir": s.dir,
                            "operation": s.operation.operation.name,
                            "fingerprint": s.fingerprint,
                            "seed": s.seed,
                            "datasets": s.size,
                            "components": s.components,
                        }
                        for s in steps
                    ],
                }
                for r, steps in enumerate(self.runs)
            ],
        }

    @property
    def steps(self) -> list[Step]:
        return list({id(s): s for steps in self.runs for s in steps}.values())

    @property
    def markers(self) -> list[str]:
        """The jobs chain.yaml waits for: every incomplete batch of the chain."""
        return [s.marker(b) for s in self.steps for b in s.incomplete]

    def changed_folders(self, storage: Path) -> list[str]:
        """For each incomplete step, and for the chain if its chain.yaml is gone, its folder (or
        the nearest existing one above it): deleting a dataset or adding one touches it, which
        makes the chain's tables out of date in Snakemake's eyes. (Snakemake 9 does not rerun a
        job for a missing intermediate file, here a marker, while what follows looks done.)"""
        dirs = [s.dir for s in self.steps if s.incomplete]
        if not (storage / self.dir / "chain.yaml").is_file():
            dirs.append(self.dir)
        folders = set()
        for relative in dirs:
            folder = storage / relative
            while not folder.exists() and folder != storage:
                folder = folder.parent
            folders.add(str(folder))
        return sorted(folders)

    @property
    def content_key(self) -> str:
        """Changes exactly when chain.yaml's content would (its steps' fingerprints)."""
        return fingerprint({"runs": [[s.fingerprint for s in run] for run in self.runs]})

    @property
    def spec_file(self) -> str:
        return f"{JOBS_DIR}/chains/{self.spec.name}.json"

    @property
    def tables(self) -> list[str]:
        """Snakemake's outputs for the chain: copies, in the working directory, of chain.yaml and
        results.csv, which are published in the chain's directory. Keeping storage names out of
        Snakemake's paths lets every name be reserved only when the run starts, so two runs
        sharing the storage root that plan the same names at once both go through."""
        return [f"{TABLES_DIR}/{self.spec.name}/{n}" for n in ("chain.yaml", "results.csv")]


@dataclass
class Plan:
    storage: Path
    index: Index
    dataset_format: str
    batch: int | str = "auto"
    max_datasets: int = DEFAULT_MAX_DATASETS
    steps: dict[str, Step] = field(default_factory=dict)  # by fingerprint
    labels: dict[str, Step] = field(default_factory=dict)  # by label
    chains: list[ChainPlan] = field(default_factory=list)
    operation_steps: list[Step] = field(default_factory=list)  # a single operation's runs
    _input_fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def operation_rules(self) -> dict[str, dict[str, int]]:
        """One Snakemake rule per operation the plan uses (job lines and --dag name it), with the
        cluster resources the operation declares."""
        return {
            rule_name(s.operation.operation.name): s.operation.operation.resources
            for s in sorted(self.steps.values(), key=lambda s: s.operation.operation.name)
        }

    def drop_stale_markers(self) -> None:
        """Remove the markers of incomplete batches (a dataset was deleted after its batch ran, or
        a run was killed before chain.yaml consumed them), so Snakemake runs those batches again.
        Markers live in the working directory, never in the storage root."""
        for step in self.steps.values():
            for b in step.incomplete:
                Path(step.marker(b)).unlink(missing_ok=True)

    def start(self, snakemake_version: str) -> None:
        """Snakemake's onstart (real runs, main process): reserve the new names (adopting those
        another run reserved for the same fingerprint meanwhile), then write every job's spec."""
        for reservation, final, key in self.index.commit():
            if reservation.kind == "steps":
                self.steps[reservation.key].dir = final
            else:
                chain = next(c for c in self.chains if c.dir == reservation.dir)
                chain.dir, chain.key = final, key
        for step in self.steps.values():
            if step.incomplete:
                Path(step.source_file).parent.mkdir(parents=True, exist_ok=True)
                write_atomic(Path(step.source_file), canonical_json(step.source()))
            for b in step.incomplete:
                spec = step.job_spec(b, self.storage, snakemake_version)
                write_atomic(Path(step.marker(b) + ".json"), canonical_json(spec))
        for chain in self.chains:
            manifest = {"storage": str(self.storage), "dir": chain.dir, **chain.manifest()}
            Path(chain.spec_file).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(Path(chain.spec_file), canonical_json(manifest))

    def add_chain(self, chain: ChainSpec) -> ChainPlan:
        datasets = find_datasets(self.storage, chain.input_path, chain.path)
        self._check_size(chain.path, chain.steps, len(datasets), chain.runs, "runs")
        key = self._chain_key(chain)
        chain_dir = self._directory("chains", key, CHAINS_DIR, {"origin": chain.origin})
        runs = [
            self._steps(chain.steps, datasets, run, chain_dir, chain.name)
            for run in range(chain.runs)
        ]
        plan = ChainPlan(chain, key, chain_dir, runs)
        self.chains.append(plan)
        return plan

    def add_operation(self, operation: OperationSpec, input_path: str) -> list[Step]:
        datasets = find_datasets(self.storage, input_path, operation.path)
        runs = operation.runs if operation.operation.random else 1
        self._check_size(operation.path, (operation,), len(datasets), runs, "runs")
        for run in range(runs):
            self.operation_steps += self._steps(
                (operation,), datasets, run, OPERATIONS_DIR, "operation"
            )
        return self.operation_steps

    def _check_size(
        self, where: Path, operations: tuple[OperationSpec, ...], inputs: int, runs: int, key: str
    ) -> None:
        """Refuse a plan too large to build before building it (a typo like runs: 1000000000)."""
        grids = [len(op.settings) for op in operations]
        total = runs * inputs * sum(math.prod(grids[: n + 1]) for n in range(len(grids)))
        if total > self.max_datasets:
            raise SpecError(
                f"{where}: the plan has {total:,} result datasets ({key}: {runs}, {inputs} input "
                f"datasets, grids of {' x '.join(map(str, grids))} settings), more than "
                f"max_datasets: {self.max_datasets:,} (raise it in the config if you mean it)"
            )

    def _steps(
        self,
        operations: tuple[OperationSpec, ...],
        datasets: list[str],
        run: int,
        parent: str,
        chain: str,
    ) -> list[Step]:
        steps: list[Step] = []
        for position, operation in enumerate(operations, 1):
            # The seed that shaped a result: its own if random, else its nearest random ancestor's.
            seed = run if operation.operation.random else (steps[-1].seed if steps else None)
            upstream = steps[-1] if steps else None
            step = self._step(operation, datasets, upstream, seed, parent, f"{chain}/{position}")
            steps.append(step)
        return steps

    def _step(
        self,
        operation: OperationSpec,
        inputs: list[str],
        upstream: Step | None,
        seed: int | None,
        parent: str,
        position: str,
    ) -> Step:
        op = operation.operation
        sources = [] if upstream else inputs
        input_fingerprints = [self._input_fingerprint(d) for d in sources]
        components = {
            "operation": op.name,
            "version": op.version,
            "code": op.code_hash,
            "settings": list(operation.settings),
            "upstream": upstream.fingerprint if upstream else input_key(input_fingerprints),
            "seed": seed if op.random else None,
            "format": self.dataset_format,
            "results": parent.split("/", 1)[0],
        }
        key = fingerprint(components)
        if key in self.steps:  # a deterministic step shared by several runs or chains
            return self.steps[key]
        step_dir = self._directory("steps", key, parent, {"components": components})
        step = Step(
            step_dir,
            key,
            components,
            operation,
            seed,
            sources,
            upstream,
            input_fingerprints,
            f"{position}_{key[:12]}",
            batch_size(
                (upstream.size if upstream else len(sources)) * len(operation.settings),
                operation.batch or self.batch,
            ),
            existing_datasets(self.storage / step_dir),
        )
        self.steps[key] = self.labels[step.label] = step
        return step

    def _input_fingerprint(self, dataset: str) -> str:
        if dataset not in self._input_fingerprints:
            self._input_fingerprints[dataset] = dataset_files_fingerprint(self.storage, dataset)
        return self._input_fingerprints[dataset]

    def _chain_key(self, chain: ChainSpec) -> str:
        """The chain's name, unless another project's live chain file uses that name: then both
        keep their own chain directory (and chain.yaml). A moved project keeps its directory."""
        found = self.index.lookup("chains", chain.name)
        if found is None or found.get("origin") in (None, chain.origin):
            return chain.name
        if not Path(found["origin"]).is_file():
            return chain.name
        return f"{chain.name}@{fingerprint({'origin': chain.origin})[:8]}"

    def _directory(self, kind: str, key: str, parent: str, entry: dict[str, Any]) -> str:
        found = self.index.lookup(kind, key)
        if found is not None:
            return found["dir"]
        return self.index.propose(kind, key, parent, entry)


def existing_datasets(step_dir: Path) -> frozenset[str]:
    """The finished datasets of a step: one directory listing (hidden temporaries excluded)."""
    try:
        return frozenset(n for n in os.listdir(step_dir) if n.startswith("dataset_"))
    except FileNotFoundError:
        return frozenset()


def input_key(input_fingerprints: list[str]) -> str:
    return "input:" + fingerprint({"datasets": input_fingerprints})


def inside_storage(storage: Path, relative: str, where: Path) -> Path:
    """``storage/relative``, refusing anything (.., absolute paths, symlinks) that leaves the root."""
    if "\0" in relative:
        raise SpecError(f"{where}: path {relative!r} contains a NUL character")
    root = storage.resolve()
    path = (root / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(root):
        raise SpecError(f"{where}: '{relative}' leaves the storage root {storage}")
    return path


def find_datasets(storage: Path, summary: str, where: Path) -> list[str]:
    """The datasets of a summary (at any depth), as sorted paths relative to the storage root."""
    top = inside_storage(storage, summary, where)
    if not top.is_dir():
        raise SpecError(
            f"{where}: input_path '{summary}' is not a folder under the storage root {storage}"
        )
    root = storage.resolve()
    found: list[str] = []
    skipped: list[str] = []
    for folder, subfolders, files in os.walk(top):
        for name in subfolders + files:  # os.walk does not follow links: say which were skipped
            entry = Path(folder) / name
            if entry.is_symlink() and not entry.resolve().is_relative_to(root):
                skipped.append(f"{entry.relative_to(root)} (a symlink leaving the storage root)")
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        if "__daf__.yaml" in files or "data.h5" in files:
            found.append(Path(folder).relative_to(root).as_posix())
            subfolders.clear()
            continue
        found += [
            (Path(folder) / f).relative_to(root).as_posix()
            for f in files
            if f.endswith((".h5", ".hdf5")) and not f.startswith(".")
        ]
    if not found:
        why = f"; skipped {', '.join(skipped)}" if skipped else ""
        raise SpecError(
            f"{where}: input_path '{summary}' holds no datasets (daf folders or .h5 files){why}"
        )
    return sorted(found)


def dataset_files_fingerprint(storage: Path, dataset: str) -> str:
    """Hash of a dataset's files' paths, sizes and mtimes: touching or editing one reruns it."""
    path = storage / dataset
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    entries = []
    for file in files:
        stat = file.stat()
        entries.append([file.relative_to(storage).as_posix(), stat.st_size, stat.st_mtime_ns])
    return "input:" + fingerprint({"files": entries})


def storage_root(config: dict[str, Any]) -> Path:
    """The storage root: $OPCHAIN_STORAGE, else the config's ``storage``."""
    return Path(os.environ.get("OPCHAIN_STORAGE") or config.get("storage", "storage"))


def plan_from_config(config: dict[str, Any]) -> Plan:
    """The plan for a Snakemake config: its chains, or the single ``operation`` it names.

    Relative paths (storage root, spec files) are relative to the working directory, Snakemake's
    workdir, so the plan and the results' metadata do not change when the project folder moves.
    """
    storage = storage_root(config)
    set_durable(config.get("durable", True))
    set_project_folder(Path(config.get("operations_code", PROJECT_OPERATIONS)))
    dataset_format = config.get("dataset_format", "files")
    if dataset_format not in FORMATS:
        raise SpecError(
            f"config: dataset_format must be one of {', '.join(FORMATS)}, not {dataset_format!r}"
        )
    plan = Plan(
        storage,
        Index(storage),
        dataset_format,
        config.get("batch", "auto"),
        config.get("max_datasets", DEFAULT_MAX_DATASETS),
    )
    if config.get("operation"):
        if not config.get("input_path"):
            raise SpecError(
                "config: 'operation' needs 'input_path' (a summary under the storage root)"
            )
        plan.add_operation(load_operation(Path(config["operation"])), str(config["input_path"]))
        return plan
    operations_dir = Path(config.get("operations_dir", "config/operations"))
    for chain_file in config.get("chains", []):
        plan.add_chain(load_chain(Path(chain_file), operations_dir))
    return plan
