"""From specs to Snakemake jobs: every step gets a fingerprint, every fingerprint one directory.

A step is one operation of a chain applied to every dataset of its input summary, once per parameter
setting: job ``dataset_<k>`` of a step reads upstream dataset ``i`` with setting ``j``
(``k = i * settings + j + 1``). Its fingerprint hashes the operation, its code hash and version, the
resolved settings, the upstream fingerprint (for the first step: the input files' paths, sizes and
mtimes), the result format and, for random operations only, the seed. So deterministic steps are
shared by all runs of a chain, a changed parameter gives its step and every later one new
fingerprints, and setting it back finds the old directories again.

Planning runs at Snakefile parse time, in the main process and again in every cluster job: it only
reads index entries and stats input files. New names are proposed here and reserved by
``Plan.reserve`` (Snakemake's ``onstart``), so a dry run writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from opchain.errors import PlanError, SpecError
from opchain.index import Index
from opchain.spec import ChainSpec, OperationSpec, load_chain, load_operation

__all__ = [
    "ChainPlan",
    "Job",
    "Plan",
    "Step",
    "canonical_json",
    "find_datasets",
    "inside_storage",
    "plan_from_config",
]

CHAINS_DIR = "operation_chain_results"
OPERATIONS_DIR = "operation_results"
FORMATS = ("files", "h5")


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces: equal values give equal strings (Snakemake's params trigger)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def fingerprint(components: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(components).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Job:
    """One Snakemake job: one result dataset of one step."""

    output: str  # <step dir>/dataset_<k>, relative to the storage root
    input: str  # the dataset it reads, relative to the storage root
    spec: dict[str, Any]  # everything the job needs; reaches it as canonical JSON

    @cached_property
    def spec_json(self) -> str:
        """The spec as Snakemake's params (asked for more than once per job while planning)."""
        return canonical_json(self.spec)


@dataclass
class Step:
    dir: str
    fingerprint: str
    components: dict[str, Any]
    operation: OperationSpec
    seed: int | None
    jobs: list[Job] = field(default_factory=list)

    @property
    def outputs(self) -> list[str]:
        return [job.output for job in self.jobs]


@dataclass
class ChainPlan:
    spec: ChainSpec
    dir: str
    runs: list[list[Step]]  # runs[r][i]: step i of run r (deterministic prefixes are shared)

    def manifest(self) -> dict[str, Any]:
        """chain.yaml: the compiled chain, in order, with the directory of every step of every run."""
        return {
            "chain": self.spec.name,
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
                            "datasets": len(s.jobs),
                            "components": s.components,
                        }
                        for s in steps
                    ],
                }
                for r, steps in enumerate(self.runs)
            ],
        }

    @property
    def outputs(self) -> list[str]:
        return sorted({out for steps in self.runs for step in steps for out in step.outputs})


@dataclass
class Plan:
    storage: Path
    index: Index
    dataset_format: str
    job_process: bool
    steps: dict[str, Step] = field(default_factory=dict)  # by fingerprint
    jobs: dict[str, Job] = field(default_factory=dict)  # by output
    chains: list[ChainPlan] = field(default_factory=list)
    operation_steps: list[Step] = field(default_factory=list)  # a single operation's runs

    def reserve(self) -> None:
        self.index.commit()

    def add_chain(self, chain: ChainSpec) -> ChainPlan:
        datasets = find_datasets(self.storage, chain.input_path, chain.path)
        chain_dir = self._directory("chains", chain.name, CHAINS_DIR, {})
        source = inputs_fingerprint(self.storage, datasets)
        runs = [
            self._steps(chain.steps, datasets, source, run, chain_dir) for run in range(chain.runs)
        ]
        plan = ChainPlan(chain, chain_dir, runs)
        self.chains.append(plan)
        return plan

    def add_operation(self, operation: OperationSpec, input_path: str) -> list[Step]:
        datasets = find_datasets(self.storage, input_path, operation.path)
        source = inputs_fingerprint(self.storage, datasets)
        for run in range(operation.runs if operation.operation.random else 1):
            self.operation_steps += self._steps((operation,), datasets, source, run, OPERATIONS_DIR)
        return self.operation_steps

    def _steps(
        self,
        operations: tuple[OperationSpec, ...],
        datasets: list[str],
        upstream: str,
        run: int,
        parent: str,
    ) -> list[Step]:
        steps: list[Step] = []
        for operation in operations:
            # The seed that shaped a result: its own if random, else its nearest random ancestor's.
            seed = run if operation.operation.random else (steps[-1].seed if steps else None)
            step = self._step(operation, datasets, upstream, seed, parent)
            steps.append(step)
            datasets, upstream = step.outputs, step.fingerprint
        return steps

    def _step(
        self,
        operation: OperationSpec,
        datasets: list[str],
        upstream: str,
        seed: int | None,
        parent: str,
    ) -> Step:
        op = operation.operation
        components = {
            "operation": op.name,
            "version": op.version,
            "code": op.code_hash,
            "settings": list(operation.settings),
            "upstream": upstream,
            "seed": seed if op.random else None,
            "format": self.dataset_format,
            "results": parent.split("/", 1)[0],
        }
        key = fingerprint(components)
        if key in self.steps:  # a deterministic step shared by several runs
            return self.steps[key]
        step_dir = self._directory("steps", key, parent, {"components": components})
        step = Step(step_dir, key, components, operation, seed)
        settings = operation.settings
        for i, dataset in enumerate(datasets):
            for j, setting in enumerate(settings):
                output = f"{step_dir}/dataset_{i * len(settings) + j + 1}"
                job = Job(
                    output,
                    dataset,
                    {
                        "operation": op.name,
                        "type": operation.type,
                        "parameters": setting,
                        "seed": seed,
                        "run": seed,
                        "fingerprint": key,
                        "components": components,
                        "input": dataset,
                        "output": output,
                        "format": self.dataset_format,
                        "resources": op.resources,
                        "source": {
                            "file": str(operation.path),
                            "overridden_params": operation.overrides,
                        },
                    },
                )
                step.jobs.append(job)
                self.jobs[output] = job
        self.steps[key] = step
        return step

    def _directory(self, kind: str, key: str, parent: str, entry: dict[str, Any]) -> str:
        found = self.index.lookup(kind, key)
        if found is not None:
            return found["dir"]
        if self.job_process:
            raise PlanError(
                f"no reserved directory for {kind[:-1]} {key} in this job process: "
                "the main snakemake process must plan and reserve it first"
            )
        return self.index.propose(kind, key, parent, entry)


def inside_storage(storage: Path, relative: str, where: Path) -> Path:
    """``storage/relative``, refusing anything (.., absolute paths, symlinks) that leaves the root."""
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
    found = []
    for folder, subfolders, files in os.walk(top):
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
        raise SpecError(
            f"{where}: input_path '{summary}' holds no datasets (daf folders or .h5 files)"
        )
    return sorted(found)


def inputs_fingerprint(storage: Path, datasets: list[str]) -> str:
    """Hash of every input file's path, size and mtime: touching or editing one reruns the chain."""
    entries = []
    for dataset in datasets:
        path = storage / dataset
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            stat = file.stat()
            entries.append([file.relative_to(storage).as_posix(), stat.st_size, stat.st_mtime_ns])
    return "input:" + fingerprint({"files": entries})


def plan_from_config(config: dict[str, Any], *, job_process: bool) -> Plan:
    """The plan for a Snakemake config: its chains, or the single ``operation`` it names.

    Relative paths (storage root, spec files) are relative to the working directory, Snakemake's
    workdir, so the plan and the results' metadata do not change when the project folder moves.
    """
    storage = Path(os.environ.get("OPCHAIN_STORAGE") or config.get("storage", "storage"))
    dataset_format = config.get("dataset_format", "files")
    if dataset_format not in FORMATS:
        raise SpecError(
            f"config: dataset_format must be one of {', '.join(FORMATS)}, not {dataset_format!r}"
        )
    plan = Plan(storage, Index(storage), dataset_format, job_process)
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
