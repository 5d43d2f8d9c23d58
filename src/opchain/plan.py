"""The plan of what to compute: every step gets a fingerprint and a directory, every result dataset
a fingerprint of its own, and every step its batches.

A step is one operation of a chain applied to every dataset of its input summary, once per parameter
setting: ``dataset_<k>`` of a step reads upstream dataset ``i`` with setting ``j``
(``k = i * settings + j + 1``). An operation's ``upstream_constraints`` drop the settings that make
no sense after an upstream dataset's lineage (``components >= pca.components``): each upstream
dataset gets only the settings they admit, and the step's datasets are numbered through the
(``i``, ``j``) pairs that remain, in the same order (:attr:`Step.pairs`). The step's fingerprint
hashes the operation, its code hash and version, the whole grid of settings, the upstream step (for
the first step: the input files' paths, sizes and mtimes), the result format, the upstream
constraints if any and, for random operations only, the seed: it names the step directory, so a
changed parameter gives a new directory and setting it back finds the old one. A dataset's own
fingerprint hashes the same but for one setting and one upstream *dataset* (and no constraints): a
grid point computed once is reused (hard-linked) by any later grid that contains it.

A *combination* step (an operation declared with ``combine=``, e.g. shuffle) reads combinations of
upstream datasets instead: its *units* are the combinations (every ordered pair, every one left out,
or all) of each group of upstream datasets made with the same upstream settings (their *setting
path*: the setting index of every step of their lineage; ``combine_across_settings`` makes one
group). Its dataset ``k`` is unit ``u`` with setting ``j`` (``k = u * settings + j + 1``, or
through the pairs upstream constraints leave), and its
fingerprint hashes the combination's name and its members' fingerprints by role, so a new member
of the summary computes only the new combinations and an edited one only those containing it.
Every dataset carries a *name* down the chain (its input dataset's, then its combination's), which
names the members of a combination.

The flow reads one way: specs (:mod:`opchain.spec`) give steps and their fingerprints (pure, from
the specs and the inputs' fingerprints); the index (:mod:`opchain.index`) and the storage root
(:mod:`opchain.storage`) say where each step lives and which of its datasets exist; the Snakemake
jobs (:mod:`opchain.jobs`) are made from that. Directory names are proposed here and reserved only
when a real run starts (:meth:`Plan.reserve`): a dry run writes nothing to the storage root.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from opchain.atomic import set_durable
from opchain.errors import SpecError
from opchain.index import Index
from opchain.operations.sources import set_project_folder
from opchain.spec import ChainSpec, OperationSpec, load_chain, load_operation, upstream_values
from opchain.storage import (
    CHAINS_DIR,
    OPERATIONS_DIR,
    dataset_files,
    existing_datasets,
    find_datasets,
    storage_root,
)
from opchain.table import read_metadata

__all__ = [
    "ChainPlan",
    "Combination",
    "Plan",
    "Step",
    "Unit",
    "batch_size",
    "canonical_json",
    "fingerprint",
    "plan_from_config",
]

FORMATS = ("files", "h5")
MAX_BATCH = 1000  # datasets per job at most: progress Snakemake shows, work a failed job redoes
JOBS_PER_SLOT = 2  # auto batches: at most this many jobs per step for each job the run runs at
# once (its cores; its --jobs on a cluster): slack for points of uneven cost
SLOTS = 8  # jobs at once where the run does not say (planning outside Snakemake)
JOB_SECONDS = 2.0  # expected work per job at least: its start-up (~0.4 s) stays under a fifth
LINK_SECONDS = 0.001  # a dataset computed before, linked in bulk by the job (run._link_known)
UNKNOWN_SECONDS = 0.05  # a dataset to compute whose operation has no recorded cost in the step
PUBLISH_SECONDS = 0.01  # a computed dataset's own costs beyond its recorded wall time: digests,
# metadata, flushes
SAMPLE = 64  # dataset fingerprints of a new step looked up in the index to estimate its work
DEFAULT_MAX_DATASETS = 1_000_000
PROJECT_OPERATIONS = "scripts/operations"  # the project's own operations, found by name
# A step's components that say which datasets it has, not what any one of them is.
GRID_COMPONENTS = ("settings", "upstream", "upstream_constraints")


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def fingerprint(components: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(components).encode()).hexdigest()[:20]


def batch_size(
    datasets: int, setting: int | str, seconds: float | None = None, slots: int = SLOTS
) -> int:
    """Datasets per job: ``setting`` if a number; else from ``seconds``, the step's expected work:
    as many jobs as hold JOB_SECONDS each (no job's start-up outweighs its work), at most
    JOBS_PER_SLOT for each of the run's ``slots`` (heavy steps fill every core or node, and no
    more jobs than that pay a start-up each) or one per MAX_BATCH datasets, whichever is more.
    ``seconds`` None: a step reserved before batch sizes were recorded, cut as it was then (~16
    jobs of at most 100 datasets), so its batches stay the same."""
    if setting != "auto":
        return int(setting)
    if seconds is None:
        return max(1, min(100, math.ceil(datasets / 16)))
    most = max(JOBS_PER_SLOT * slots, math.ceil(datasets / MAX_BATCH))
    jobs = max(1, min(most, datasets, int(seconds / JOB_SECONDS)))
    return math.ceil(datasets / jobs) if datasets else 1


@dataclass(frozen=True)
class Unit:
    """One combination a combination step reads (once per setting)."""

    members: tuple[int, ...]  # the upstream datasets (0-based; a first step: its inputs)
    names: tuple[str, ...]  # the members' names in the combination
    path: tuple[int, ...]  # the setting path of the members' group
    focus: int | None = None  # leave_one_out: the member left out


@dataclass(frozen=True)
class Combination:
    """What one dataset of a combination step reads: ``(name, upstream dataset)`` by role."""

    name: str
    train: tuple[tuple[str, int], ...]
    test: tuple[tuple[str, int], ...]

    @property
    def members(self) -> tuple[tuple[str, int], ...]:
        return self.train + self.test


def combination_units(
    operation: OperationSpec, names: list[str], paths: list[tuple[int, ...]]
) -> list[Unit]:
    """The combinations ``operation`` reads of the upstream datasets ``names`` (with their
    setting ``paths``): of each group of the same setting path (or of all, with
    combine_across_settings), every ordered pair, every one left out, or all."""
    kind, where = operation.operation.combine, operation.path
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, path in enumerate(paths):
        groups.setdefault(() if operation.across_settings else path, []).append(i)
    units = []
    for path, members in groups.items():
        labels = unique_names([names[i] for i in members], [paths[i] for i in members], where)
        n = len(members)
        if kind != "all" and n < 2:
            same = "" if operation.across_settings else " made with the same upstream settings"
            raise SpecError(
                f"{where}: {operation.operation.name} combines the datasets of a summary "
                f"({kind}) but has only 1 dataset{same} to combine ({labels[0]})"
            )
        if kind == "pairs":
            units += [
                Unit((members[x], members[y]), (labels[x], labels[y]), path)
                for x in range(n)
                for y in range(n)
                if x != y
            ]
        elif kind == "leave_one_out":
            units += [Unit(tuple(members), tuple(labels), path, x) for x in range(n)]
        else:
            units.append(Unit(tuple(members), tuple(labels), path))
    return units


def unique_names(names: list[str], paths: list[tuple[int, ...]], where: Path) -> list[str]:
    """Member names, told apart by their setting path where two are the same (``a@0.1``)."""
    if len(set(names)) == len(names):
        return names
    labels = [f"{n}@{'.'.join(map(str, p))}" for n, p in zip(names, paths, strict=True)]
    if len(set(labels)) < len(labels):
        raise SpecError(f"{where}: two datasets to combine have the same name: {names}")
    return labels


def source_names(sources: list[str]) -> list[str]:
    """Input datasets' names: their paths below the folder they share, without .h5."""
    stems = [re.sub(r"\.(h5|hdf5)$", "", s) for s in sources]
    if len(stems) == 1:
        return [PurePosixPath(stems[0]).name]
    common = posixpath.commonpath(stems)
    return [PurePosixPath(s).relative_to(common).as_posix() for s in stems]


@dataclass(eq=False)
class Step:
    fingerprint: str
    components: dict[str, Any]
    operation: OperationSpec
    seed: int | None
    sources: list[str]  # a first step's input datasets (a later step reads its upstream's)
    upstream: Step | None
    input_fingerprints: list[str]  # for a first step: each input dataset's files fingerprint
    position: str  # <chain>/<position in the chain>, plus _s<seed> once a seed shaped it
    batch: int  # datasets per job
    dir: str = ""  # where it lives (relative to the storage root), from the index
    existing: frozenset[str] = frozenset()  # dataset_<k> names found in its directory
    forced: bool = False  # recomputed into a new directory (snakemake --forcerun / --forceall)
    units: list[Unit] | None = None  # a combination step's combinations (None: one per input)
    # Fingerprints of the datasets planning sampled (each asks its upstream's: computed once).
    _sampled: dict[int, str] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        """The operation's name (its Snakemake rule's, see :func:`opchain.jobs.rule_name`)."""
        return self.operation.operation.name

    @property
    def settings(self) -> tuple[dict[str, Any], ...]:
        return self.operation.settings

    def input_of(self, i: int) -> str:
        """The dataset it reads for inputs i (the upstream's by its final name, once reserved)."""
        return f"{self.upstream.dir}/dataset_{i + 1}" if self.upstream else self.sources[i]

    @property
    def n_units(self) -> int:
        """What it reads once per setting: its combinations, or its upstream (or input) datasets."""
        if self.units is not None:
            return len(self.units)
        return self.upstream.size if self.upstream else len(self.sources)

    @cached_property
    def ahead(self) -> list[tuple[int, ...]]:
        """The setting path of what each unit (or upstream or input dataset) reads."""
        if self.units is not None:
            return [u.path for u in self.units]
        return self.upstream.paths if self.upstream else [()] * len(self.sources)

    @cached_property
    def pairs(self) -> list[tuple[int, int]]:
        """What each dataset k (at k - 1) is: ``(u, j)``, unit (or upstream dataset) u with
        setting j. Every unit in turn gets every setting its lineage admits, so without upstream
        constraints k = u * settings + j + 1. A step they leave with no dataset is refused."""
        if not self.operation.upstream_constraints:
            return [(u, j) for u in range(self.n_units) for j in range(len(self.settings))]
        admitted = {path: self.operation.admitted(self.lineage(path)) for path in set(self.ahead)}
        pairs = [(u, j) for u, path in enumerate(self.ahead) for j in admitted[path]]
        if not pairs:
            raise self.operation.none_admitted(self.lineage(self.ahead[0]))
        return pairs

    @property
    def upstream_excluded(self) -> int:
        """The (setting, unit) pairs its upstream constraints dropped."""
        return self.n_units * len(self.settings) - self.size

    def lineage(self, path: tuple[int, ...]) -> dict[str, Any]:
        """The earlier steps' parameters (``pca.components``) of the datasets of setting path
        ``path``. A path starts after the last combination across settings (its members mix
        the settings before it), so it names the settings of the last ``len(path)`` steps."""
        ancestors = []
        step = self.upstream
        while step is not None:
            ancestors.insert(0, step)
            step = step.upstream
        steps = ancestors[len(ancestors) - len(path) :]
        mixed = {s.name for s in ancestors} - {s.name for s in steps}
        for placed in self.operation.upstream_constraints:
            names = [n for n in placed.constraint.names if n.rpartition(".")[0] in mixed]
            if names:
                raise placed.error(
                    f"'{names[0]}' has no one value on the datasets it reads: a combination "
                    "across settings (combine_across_settings) mixes them"
                )
        return upstream_values((s.name, s.settings[j]) for s, j in zip(steps, path, strict=True))

    @property
    def size(self) -> int:
        return len(self.pairs)

    def combination(self, k0: int) -> Combination:
        """What dataset ``k0 + 1`` of a combination step reads, and its name."""
        assert self.units is not None
        u, j = self.pairs[k0]
        unit, setting = self.units[u], self.settings[j]
        members = tuple(zip(unit.names, unit.members, strict=True))
        kind = self.operation.operation.combine
        if kind == "pairs":
            return Combination(f"{unit.names[0]}_vs_{unit.names[1]}", members[:1], members[1:])
        if kind == "all":
            return Combination("All", members, ())
        assert unit.focus is not None
        one, rest = (
            members[unit.focus : unit.focus + 1],
            members[: unit.focus] + members[unit.focus + 1 :],
        )
        if setting.get("reverse"):
            return Combination(f"{one[0][0]}_vs_Rest", one, rest)
        return Combination(f"Rest_vs_{one[0][0]}", rest, one)

    @cached_property
    def names(self) -> list[str]:
        """Each dataset's name (at k - 1): its input dataset's, or its nearest combination's."""
        if self.units is not None:
            return [self.combination(k0).name for k0 in range(self.size)]
        upstream = self.upstream.names if self.upstream else source_names(self.sources)
        return [upstream[u] for u, _ in self.pairs]

    @cached_property
    def paths(self) -> list[tuple[int, ...]]:
        """Each dataset's setting path (at k - 1): its setting's index at every step so far."""
        return [(*self.ahead[u], j) for u, j in self.pairs]

    @property
    def batches(self) -> int:
        return math.ceil(self.size / self.batch)

    def batch_range(self, b: int) -> range:
        """The dataset numbers k of batch b (both 1-based)."""
        return range((b - 1) * self.batch + 1, min(b * self.batch, self.size) + 1)

    @cached_property
    def incomplete(self) -> list[int]:
        """The batches with a dataset missing on disk."""
        return [
            b
            for b in range(1, self.batches + 1)
            if any(f"dataset_{k}" not in self.existing for k in self.batch_range(b))
        ]

    def upstream_batches(self, b: int) -> list[int]:
        """The upstream batches that batch b reads from (none for a first step)."""
        up = self.upstream
        if up is None:
            return []
        k = self.batch_range(b)
        first, last = self.pairs[k.start - 1][0], self.pairs[k.stop - 2][0]  # units in order
        if self.units is None:
            return list(range(first // up.batch + 1, last // up.batch + 2))
        read = {i for unit in self.units[first : last + 1] for i in unit.members}
        return sorted({i // up.batch + 1 for i in read})

    @cached_property
    def point(self) -> dict[str, Any]:
        """What every dataset's fingerprint shares: the step's components but its grid, its
        upstream and which pairs it keeps (a point is the same whichever grid computes it)."""
        return {k: v for k, v in self.components.items() if k not in GRID_COMPONENTS}

    @cached_property
    def dataset_fingerprints(self) -> list[str]:
        """What each dataset k (at k - 1) is a pure function of: one setting applied to one
        upstream dataset."""
        if self.upstream is not None:
            _ = self.upstream.dataset_fingerprints  # all of them once, looked up below
        found = [self._sampled.get(k0) or self._dataset_fingerprint(k0) for k0 in range(self.size)]
        self._sampled.clear()
        return found

    def dataset_fingerprint(self, k0: int) -> str:
        """Dataset ``k0 + 1``'s fingerprint alone (planning samples a few of a large step's)."""
        if "dataset_fingerprints" in self.__dict__:
            return self.dataset_fingerprints[k0]
        if k0 not in self._sampled:
            self._sampled[k0] = self._dataset_fingerprint(k0)
        return self._sampled[k0]

    def _dataset_fingerprint(self, k0: int) -> str:
        u, j = self.pairs[k0]
        setting = self.settings[j]
        if self.units is None:
            source = self._upstream_fingerprint(u)
            return fingerprint({**self.point, "setting": setting, "upstream": source})
        combination = self.combination(k0)
        roles = {
            role: [[name, self._upstream_fingerprint(i)] for name, i in getattr(combination, role)]
            for role in ("train", "test")
        }
        return fingerprint({**self.point, "setting": setting, combination.name: roles})

    def _upstream_fingerprint(self, i: int) -> str:
        return self.upstream.dataset_fingerprint(i) if self.upstream else self.input_fingerprints[i]

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
                            "operation": s.name,
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
    def content_key(self) -> str:
        """Changes exactly when chain.yaml's content would (its steps' fingerprints)."""
        return fingerprint({"runs": [[s.fingerprint for s in run] for run in self.runs]})


@dataclass
class Plan:
    storage: Path
    index: Index
    dataset_format: str
    batch: int | str = "auto"
    max_datasets: int = DEFAULT_MAX_DATASETS
    slots: int = SLOTS  # jobs the run runs at once: auto batches fill them (see batch_size)
    steps: dict[str, Step] = field(default_factory=dict)  # by fingerprint, upstream first
    chains: list[ChainPlan] = field(default_factory=list)
    operation_steps: list[Step] = field(default_factory=list)  # a single operation's runs
    _input_fingerprints: dict[str, str] = field(default_factory=dict)

    def force(self, forced: set[str] | None) -> None:
        """``snakemake --forcerun OPS`` (``forced``: the operations' names) or ``--forceall``
        (``None``): those steps and every step after them compute afresh into new directories;
        the index points their fingerprints there once the run starts, and the old directories
        stay until ``opchain gc``. Results are never rewritten in place."""
        for step in self.steps.values():  # upstream first: a forced step forces what follows
            if forced is None or step.name in forced or (step.upstream and step.upstream.forced):
                step.forced = True
                if self.index.lookup("steps", step.fingerprint) is None:
                    continue  # a new step: its proposed directory is new already
                parent = step.dir.rpartition("/")[0]
                # Its batches stay as planned: the DAG of this run is cut already.
                entry = {"components": step.components, "batch": step.batch}
                step.dir = self.index.propose(
                    "steps", step.fingerprint, parent, entry, replace=True
                )
                step.existing = frozenset()
                step.__dict__.pop("incomplete", None)

    def reserve(self) -> None:
        """Reserve the proposed names (a real run's start, main process only), adopting those
        another run reserved for the same fingerprint meanwhile."""
        for reservation, final, key in self.index.commit():
            if reservation.kind == "steps":
                self.steps[reservation.key].dir = final
            else:
                chain = next(c for c in self.chains if c.dir == reservation.dir)
                chain.dir, chain.key = final, key

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
        """Refuse a plan too large to build before building it (a typo like runs: 1000000000).
        The count is an upper bound: upstream constraints, which drop (setting, upstream dataset)
        pairs, are applied only as the steps are built."""
        grids = [len(op.settings) for op in operations]
        total, groups, per_group = 0, 1, inputs  # datasets of each step, by setting path
        for op in operations:
            if op.operation.combine:
                groups, per_group = (
                    (1, groups * per_group) if op.across_settings else (groups, per_group)
                )
                per_group = {"pairs": per_group * (per_group - 1), "all": 1}.get(
                    op.operation.combine, per_group
                )
            groups *= len(op.settings)
            total += runs * groups * per_group
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
            where = f"{chain}/{position}" + ("" if seed is None else f"_s{seed}")
            steps.append(self._step(operation, datasets, upstream, seed, parent, where))
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
        if operation.across_settings:
            components["across_settings"] = True
        if operation.upstream_constraints:  # only then: other steps keep their fingerprints
            components["upstream_constraints"] = [
                c.constraint.text for c in operation.upstream_constraints
            ]
        key = fingerprint(components)
        if key in self.steps:  # a deterministic step shared by several runs or chains
            return self.steps[key]
        step = Step(key, components, operation, seed, sources, upstream, input_fingerprints,
                    position, 0)  # fmt: skip
        if op.combine:
            names = upstream.names if upstream else source_names(sources)
            paths = upstream.paths if upstream else [()] * len(sources)
            step.units = combination_units(operation, names, paths)
            if upstream is None and op.check_members:
                self._check_inputs(step)
        found = self.index.lookup("steps", key)
        step.batch = self._batch(step, found)
        step.dir = (
            found["dir"]
            if found is not None
            else self.index.propose(
                "steps", key, parent, {"components": components, "batch": step.batch}
            )
        )
        step.existing = existing_datasets(self.storage / step.dir)
        self.steps[key] = step
        return step

    def _batch(self, step: Step, found: dict[str, Any] | None) -> int:
        """The step's datasets per job. An auto batch is decided once, when the step is first
        planned, and recorded in its index entry: every later run, and every cluster job's
        parse, cuts the same batches (same markers, same params), though its datasets, once
        computed, would cost far less now."""
        setting = step.operation.batch or self.batch
        if setting != "auto" or found is None:
            seconds = None if setting != "auto" else self._expected_seconds(step)
            return batch_size(step.size, setting, seconds, self.slots)
        return found.get("batch") or batch_size(step.size, setting)

    def _expected_seconds(self, step: Step) -> float:
        """The work of a new step's jobs, from a sample of its datasets: one computed before
        (its fingerprint is in the index) is only linked; one to compute costs what the known
        points of the step cost when they were computed (their metadata's ``cost``), else
        UNKNOWN_SECONDS."""
        size = step.size
        if size == 0:
            return 0.0
        picks = (
            sorted({i * size // SAMPLE for i in range(SAMPLE)}) if size > SAMPLE else range(size)
        )
        known = [
            found
            for k0 in picks
            if (found := self.index.computed_at(step.dataset_fingerprint(k0))) is not None
        ]
        costs = [c for c in map(self._recorded_seconds, known[:3]) if c is not None]
        compute = sum(costs) / len(costs) + PUBLISH_SECONDS if costs else UNKNOWN_SECONDS
        share = len(known) / len(picks)
        return size * (share * LINK_SECONDS + (1 - share) * compute)

    def _recorded_seconds(self, dataset: str) -> float | None:
        """What computing ``dataset`` took (its metadata's cost), if it says."""
        try:
            return float(read_metadata(self.storage, dataset)["cost"]["wall_seconds"])
        except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
            return None

    def _check_inputs(self, step: Step) -> None:
        """A first step's combination operation looks at its input datasets before anything
        runs (can they be combined?): a mistake is one line naming the operation file."""
        from opchain.daf import open_reader
        from opchain.errors import OpchainError

        assert step.units is not None and step.operation.operation.check_members is not None
        members = {
            n: i for unit in step.units for n, i in zip(unit.names, unit.members, strict=True)
        }
        readers = {name: open_reader(self.storage / step.sources[i]) for name, i in members.items()}
        for setting in step.settings:
            try:
                step.operation.operation.check_members(readers, setting)
            except OpchainError as error:
                raise SpecError(f"{step.operation.path}: {error}") from None

    def _input_fingerprint(self, dataset: str) -> str:
        if dataset not in self._input_fingerprints:
            files = dataset_files(self.storage, dataset)
            self._input_fingerprints[dataset] = "input:" + fingerprint({"files": files})
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


def input_key(input_fingerprints: list[str]) -> str:
    return "input:" + fingerprint({"datasets": input_fingerprints})


def plan_from_config(config: dict[str, Any], slots: int = SLOTS) -> Plan:
    """The plan for a Snakemake config: its chains, or the single ``operation`` it names;
    ``slots``: the jobs the run runs at once (auto batches are cut to fill them).

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
        slots,
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
