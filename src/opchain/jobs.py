"""The Snakemake side of a plan: every batch of every step is one job of its operation's rule,
finished or not, so Snakemake's DAG, ``--summary``, report and controls see the whole workflow.

A batch's output is a small marker in the working directory,
``.opchain/jobs/<rule>/<chain>/<position>[_s<seed>]/batch_<b>``: its path names where the step stands
in its chain, not what it computes, and its params carry the step's fingerprint and the batch's
datasets. So editing a parameter (or the operation's code, or the input files) changes the params
of exactly that step's batches and those after it, and Snakemake reruns them for that reason
(``--list-changes params``, ``--summary`` and ``-n`` say so); setting it back reruns them again,
which finds the old results and computes nothing. A deleted dataset makes its batch incomplete: the
main process removes that batch's marker when it plans, and Snakemake makes it again.

A job's inputs are the markers of the upstream batches it reads (for a combination step's batch,
those holding the members of its combinations: the fan-in ``--dag`` shows). A chain's tables wait
for the batches no batch of the chain reads, and through them for all. A job that waits for many
batches (a chain's tables, a single operation's target) waits for them through ``gather`` jobs of
at most :data:`LINE_BUDGET` characters of inputs each, so no line Snakemake prints grows with the
sweep.

Each step's spec (where it lives, its settings, inputs, which (input, setting) pairs its upstream
constraints keep, and the datasets' fingerprints) is written to
``step.json`` beside its markers when a real run starts (:meth:`Jobs.write_specs`); a job reads it
and its batch number from its marker's path.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opchain.atomic import durable, write_atomic
from opchain.errors import PlanError
from opchain.operations.sources import project_folder
from opchain.plan import ChainPlan, Plan, Step, canonical_json, fingerprint

__all__ = [
    "GATHER_DIR",
    "JOBS_DIR",
    "LINE_BUDGET",
    "TABLES_DIR",
    "Jobs",
    "refused_flags",
    "rule_name",
    "stop_rescheduling",
]

JOBS_DIR = ".opchain/jobs"  # in the working directory: markers and step specs
TABLES_DIR = ".opchain/chains"  # in the working directory: Snakemake's copies of chain tables
GATHER_DIR = ".opchain/gather"  # in the working directory: outputs of the gather jobs
LINE_BUDGET = 700  # characters of input paths a job may list (Snakemake prints them on one line)
INCOMPLETE = "incomplete"  # gather jobs of the batches with a dataset missing, per run
OWN_RULES = ("all", "chain_manifest", "chain_report", "chain_statistics", "gather")


def rule_name(operation: str) -> str:
    """A Snakemake rule name for an operation: a Python identifier, clear of opchain's own rules."""
    name = re.sub(r"\W", "_", operation)
    return f"op_{name}" if name in OWN_RULES or name[0].isdigit() else name


@dataclass
class Jobs:
    plan: Plan
    steps: dict[str, Step] = field(default_factory=dict)  # by position (the marker's folder)
    gathers: dict[str, list[str]] = field(default_factory=dict)  # gather output -> its inputs

    def __post_init__(self) -> None:
        self.steps = {s.position: s for s in self.plan.steps.values()}

    @property
    def rules(self) -> dict[str, tuple[dict[str, int], str, int]]:
        """One rule per operation the plan uses (job lines, --dag and the report name it): the
        cluster resources it declares, its code's hash (the job refuses to run other code) and
        its threads (``resources={"threads": N}``, default 1): datasets a job computes at once."""
        rules = {}
        for step in sorted(self.plan.steps.values(), key=lambda s: s.name):
            resources = dict(step.operation.operation.resources)
            threads = resources.pop("threads", 1)
            rules[rule_name(step.name)] = (resources, step.components["code"], threads)
        return rules

    def marker(self, step: Step, b: int) -> str:
        return f"{JOBS_DIR}/{rule_name(step.name)}/{step.position}/batch_{b}"

    def markers(self, steps: Iterable[Step]) -> list[str]:
        return [self.marker(s, b) for s in steps for b in range(1, s.batches + 1)]

    def spec_file(self, step: Step) -> str:
        return f"{JOBS_DIR}/{rule_name(step.name)}/{step.position}/step.json"

    def batch_inputs(self, step: Step, b: int) -> list[str]:
        """The markers of the upstream batches batch b reads from."""
        if step.upstream is None:
            return []
        wanted = [self.marker(step.upstream, u) for u in step.upstream_batches(b)]
        return self.bounded(wanted, f"{step.position}/batch_{b}")

    def chain_inputs(self, chain: ChainPlan) -> list[str]:
        """What a chain's tables wait for: the batches of its steps that no batch of it reads
        (each waits for, and reruns after, those it reads: so the tables wait for every batch)."""
        batches = [(s, b) for s in chain.steps for b in range(1, s.batches + 1)]
        return self.bounded(self.unread(batches), f"chains/{chain.spec.name}")

    def operation_targets(self) -> list[str]:
        """A single operation's run waits for every batch of it."""
        return self.bounded(self.markers(self.plan.operation_steps), "operation")

    def gather_inputs(self, node: str) -> list[str]:
        """What gather job ``node`` waits for. Gather jobs are made as the DAG asks for inputs; a
        process that meets one first (a job process) makes them all."""
        if node not in self.gathers:
            for chain in self.plan.chains:
                self.chain_inputs(chain)
            self.operation_targets()
            self.incomplete_targets()
            for step in self.plan.steps.values():
                for b in range(1, step.batches + 1):
                    self.batch_inputs(step, b)
        return self.gathers[node]

    def incomplete_targets(self) -> list[str]:
        """The batches with a dataset missing on disk, as targets of the default rule: Snakemake
        makes a missing intermediate output only for a target or for a job that has to run, and
        what follows such a batch looks done. One read by another incomplete batch is made for
        that one (a first run's targets are the last steps' batches). (Named by the set, so their
        gather jobs are new.)"""
        missing = self.unread([(s, b) for s in self.plan.steps.values() for b in s.incomplete])
        return self.bounded(missing, f"{INCOMPLETE}/{fingerprint({'markers': missing})[:12]}")

    def unread(self, batches: list[tuple[Step, int]]) -> list[str]:
        """The markers of ``batches`` (step, batch number) that no batch of them reads."""
        read = {
            self.marker(step.upstream, u)
            for step, b in batches
            if step.upstream is not None
            for u in step.upstream_batches(b)
        }
        return [m for step, b in batches if (m := self.marker(step, b)) not in read]

    def bounded(self, files: list[str], name: str) -> list[str]:
        """``files``, or gather jobs that wait for them: at most LINE_BUDGET characters each."""
        if sum(len(f) + 2 for f in files) <= LINE_BUDGET:
            return files
        chunks: list[list[str]] = [[]]
        size = 0  # characters of the last chunk
        for f in files:
            if chunks[-1] and size + len(f) + 2 > LINE_BUDGET:
                chunks.append([])
                size = 0
            chunks[-1].append(f)
            size += len(f) + 2
        nodes = [f"{GATHER_DIR}/{name}/{i}" for i in range(1, len(chunks) + 1)]
        self.gathers.update(zip(nodes, chunks, strict=True))
        return self.bounded(nodes, f"{name}/up")

    @staticmethod
    def params(step: Step, b: int) -> str:
        """What a batch computes: Snakemake reruns it when this changes (rerun-triggers: params)."""
        k = step.batch_range(b)
        return f"{step.fingerprint} datasets {k.start}-{k.stop - 1}"

    @staticmethod
    def describe(step: Step, b: int) -> str:
        """A job's line in Snakemake's output (stable: no provisional directory names)."""
        ks = step.batch_range(b)
        grid = f"{len(step.settings)} settings x " if len(step.settings) > 1 else ""
        seed = f", seed {step.seed}" if step.operation.operation.random else ""
        resources = "".join(f", {k}={v}" for k, v in step.operation.operation.resources.items())
        which = f"dataset {ks.start}" if len(ks) == 1 else f"datasets {ks.start}-{ks.stop - 1}"
        units = "combinations" if step.units is not None else "inputs"
        return (
            f"{step.name} ({step.position}{seed}): {grid}{step.n_units} "
            f"{units}, {which} of {step.size}{resources}"
        )

    def drop_stale_markers(self) -> None:
        """Remove the markers of incomplete batches (a dataset was deleted, or a run was killed),
        so Snakemake makes them again, and the gather jobs of earlier runs' incomplete batches,
        so a set that recurs (a step deleted twice) is gathered again. All of it lives in the
        working directory, never in the storage root."""
        shutil.rmtree(f"{GATHER_DIR}/{INCOMPLETE}", ignore_errors=True)
        for step in self.plan.steps.values():
            for b in step.incomplete:
                Path(self.marker(step, b)).unlink(missing_ok=True)

    def write_specs(self, snakemake_version: str) -> None:
        """Each step's spec, for its jobs (a real run's start, after the names are reserved)."""
        folder = project_folder()
        for step in self.plan.steps.values():
            spec = {
                "storage": str(self.plan.storage),
                "durable": durable(),  # the config's, for the job's process
                "operations_code": str(folder) if folder else None,
                "snakemake": snakemake_version,
                "dir": step.dir,
                "operation": step.name,
                "type": step.operation.type,
                "seed": step.seed,
                "fingerprint": step.fingerprint,
                "components": step.point,
                "format": step.components["format"],
                "forced": step.forced,
                "batch": step.batch,
                "inputs": []
                if step.units is not None
                else [step.input_of(i) for i in range(step.n_units)],
                "settings": list(step.settings),
                # Dataset k's (input or combination, setting), listed only where upstream
                # constraints drop some: every job parses the file, and a million listed pairs
                # cost each job seconds. None: every input with every setting in turn.
                "pairs": step.pairs if step.operation.upstream_constraints else None,
                "fingerprints": step.dataset_fingerprints,
                "source": step.source(),
            }
            if step.units is not None:
                spec["combinations"] = [self.combination(step, k0) for k0 in range(step.size)]
            path = Path(self.spec_file(step))
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, canonical_json(spec))

    @staticmethod
    def combination(step: Step, k0: int) -> dict[str, Any]:
        """What dataset ``k0 + 1`` of a combination step reads: its name, its members' names by
        role, and each member's dataset."""
        combination = step.combination(k0)
        return {
            "name": combination.name,
            "train": [name for name, _ in combination.train],
            "test": [name for name, _ in combination.test],
            "inputs": {name: step.input_of(i) for name, i in combination.members},
        }

    def chain_spec_file(self, chain: ChainPlan) -> str:
        return f"{JOBS_DIR}/chains/{chain.spec.name}.json"

    def write_chain_specs(self) -> None:
        for chain in self.plan.chains:
            manifest = {"storage": str(self.plan.storage), "dir": chain.dir, **chain.manifest()}
            path = Path(self.chain_spec_file(chain))
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, canonical_json(manifest))

    @staticmethod
    def tables(chain: ChainPlan) -> list[str]:
        """Snakemake's outputs for the chain: copies, in the working directory, of chain.yaml and
        results.csv, which are published in the chain's directory. Keeping storage names out of
        Snakemake's paths lets every name be reserved only when the run starts, so two runs
        sharing the storage root that plan the same names at once both go through."""
        return [f"{TABLES_DIR}/{chain.spec.name}/{n}" for n in ("chain.yaml", "results.csv")]

    def start(self, snakemake_version: str, dag_settings: Any, *, touch: bool) -> None:
        """Snakemake's onstart (real runs and --touch, main process): apply -R/-F, reserve the new
        names, then write every step's and chain's spec."""
        self.force(dag_settings.forceall, dag_settings.forcerun)
        if touch:
            self.refuse_touch()
        self.plan.reserve()
        self.write_specs(snakemake_version)
        self.write_chain_specs()

    def force(self, forceall: bool, forcerun: Iterable[str]) -> None:
        """``--forceall`` forces every step, ``-R OP`` the steps of operation OP (and Snakemake
        reruns what follows them): they compute afresh into new directories."""
        batches = sorted(f for f in forcerun if f.startswith(JOBS_DIR))
        if batches:
            raise PlanError(
                f"--forcerun {batches[0]}: force operations by name (snakemake -R pca): a step's "
                "results are recomputed together, into a new directory"
            )
        if forceall:
            self.plan.force(None)
        elif forcerun:
            self.plan.force(
                {s.name for s in self.plan.steps.values() if rule_name(s.name) in forcerun}
            )

    def refuse_touch(self) -> None:
        """--touch marks jobs done without running them: only true where their results exist."""
        missing = [s for s in self.plan.steps.values() if s.incomplete]
        if missing:
            total = sum(len(s.incomplete) for s in missing)
            raise PlanError(
                f"--touch would mark {total} batches done whose results do not exist (first: "
                f"{missing[0].name} in {missing[0].dir}); run snakemake without --touch to "
                "compute them"
            )


def refused_flags(argv: list[str]) -> None:
    """Snakemake flags with no sensible meaning here stop the run before it does anything, with
    one line saying why and what to do instead (never a silent no-op)."""
    if any(a.startswith("--delete-all") for a in argv):
        raise PlanError(
            "--delete-all-output would delete only opchain's job markers in this folder: results "
            "live in the storage root, may be shared with other chains and projects, and are "
            "never deleted by snakemake; 'opchain gc' removes the results no chain uses, and "
            "deleting a step directory (or a dataset_<k> in it) recomputes it"
        )


def stop_rescheduling() -> None:
    """Snakemake's onsuccess and onerror: the run is over. Its scheduler arms a one-second timer
    (the job rate limiter's re-evaluation) on every pass, and the process waits for the last of
    them before it exits: a second added to every run that ran jobs. Cancel them."""
    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer):
            thread.cancel()
