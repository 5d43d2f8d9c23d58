# Validate the config, build the plan (cheap: index reads and one listing per step directory) and
# its jobs, expose them to the rules.
import gc
import importlib
import shlex
import sys
import threading
from pathlib import Path

from snakemake import __version__ as SNAKEMAKE_VERSION
from snakemake.common import get_function_params, overwrite_function_params
from snakemake.exceptions import WorkflowError

from opchain.errors import OpchainError
from opchain.jobs import (
    GATHER_DIR,
    JOBS_DIR,
    TABLES_DIR,
    Jobs,
    refused_flags,
    stop_rescheduling,
)
from opchain.plan import plan_from_config
from opchain.report import build_report
from opchain.spec import check_config
from opchain.table import write_chain_files

# Snakemake 9's `--list-changes params` lists every output with recorded params, changed or not: a
# ParamsChange iterates its files even when it holds no change. List only the changed ones.
from snakemake.persistence import ParamsChange, PersistenceBase

ParamsChange.__iter__ = lambda change: iter(change.files if change else ())
# Snakemake compares a finished job's params through pandas (in case one is a DataFrame) whenever
# pandas is installed: importing it costs every rerun ~0.35 s. opchain's params are strings and
# numbers, which both ways serialize alike, so the comparison goes without it (where this
# Snakemake has the two ways).
if hasattr(PersistenceBase, "_serialize_param_builtin"):
    PersistenceBase._serialize_param = property(
        lambda persistence: persistence._serialize_param_builtin
    )
# A `run:` job (the chains' tables and reports: see in_process) runs in Snakemake's own threads,
# as under any remote executor (SLURM), not in a new `snakemake` process that starts and plans the
# workflow again (~1 s each): --force-use-threads for local runs. Every other job is a shell command.
from snakemake.executors.local import Executor as LocalExecutor


def _use_threads(executor, post_init=LocalExecutor.__post_init__):
    post_init(executor)
    executor.use_threads = True


LocalExecutor.__post_init__ = _use_threads

try:
    # Against workflow/schemas/config.schema.yaml, as Snakemake's validate() would, but one line
    # naming the key, and not again for a config found valid before (see opchain.spec).
    check_config(config, workflow.configfiles)
    if workflow.is_main_process:
        refused_flags(sys.argv[1:])
    # Jobs at once: --jobs on a cluster, else the cores (a dry run without --cores: 1).
    PLAN = plan_from_config(
        config,
        workflow.resource_settings.nodes or workflow.resource_settings.cores or 1,
    )
except OpchainError as error:
    # A user error: one line, no traceback (Snakemake would print one for an exception).
    sys.exit(f"opchain: {error}")

JOBS = Jobs(PLAN)
STORAGE = str(PLAN.storage)
if workflow.is_main_process:
    JOBS.drop_stale_markers()
# An operation job is a plain `python -m opchain.run` process, with this process's interpreter
# (the one that has opchain); its spec is the step.json beside its marker, written by onstart.
PYTHON = shlex.quote(sys.executable)
# What was imported and planned so far lives as long as the process: out of the cyclic garbage
# collector's sight, so that its later passes, and the one at exit (~0.3 s of every `snakemake`
# start), go through only what the DAG adds. (Reference counting still frees what is dropped.)
gc.freeze()


onstart:
    # Real runs and --touch, main process only (Snakemake skips onstart for -n): dry runs write
    # nothing. Snakemake's DAG settings (-R, -F) are known from here on, not while parsing.
    try:
        JOBS.start(SNAKEMAKE_VERSION, workflow.dag_settings, touch=workflow.touch)
    except OpchainError as error:
        sys.exit(f"opchain: {error}")
    # A chain's report reads its table with pandas (~0.3 s to import), in this process (see
    # in_process): imported while the first jobs run, not after them.
    if not workflow.touch and any(
        job.rule.name == "chain_report" for job in workflow.dag.needrun_jobs()
    ):
        threading.Thread(
            target=importlib.import_module, args=["pandas"], daemon=True
        ).start()


# The run is over: Snakemake would wait up to a second for its scheduler's timers before exiting,
# and the interpreter's exit would search what the jobs and reports made for cycles.
onsuccess:
    stop_rescheduling()
    gc.freeze()


onerror:
    stop_rescheduling()
    gc.freeze()


# One at a time: matplotlib and pandas are not thread-safe.
IN_PROCESS = threading.Lock()


def in_process(work, *paths):
    """A bookkeeping rule's work, ``work(*paths)``, done in Snakemake's own process (a `run:` of a
    local rule): every run that changes a result runs these, and a new interpreter would import
    opchain again for each. An opchain error fails the job with one line."""
    try:
        with IN_PROCESS:
            work(*map(Path, paths))
    except OpchainError as error:
        raise WorkflowError(f"opchain: {error}") from None


def targets():
    """The targets of the default rule: each chain's tables (or every batch of a single
    operation), and the batches with a dataset missing."""
    if PLAN.operation_steps:
        return JOBS.operation_targets() + JOBS.incomplete_targets()
    tables = [table for chain in PLAN.chains for table in JOBS.tables(chain)]
    return tables + JOBS.incomplete_targets()


def step_of(wildcards):
    return JOBS.steps[wildcards.position]


def batch_inputs(wildcards):
    """The markers of the upstream batches this batch reads from."""
    return JOBS.batch_inputs(step_of(wildcards), int(wildcards.b))


def batch_params(wildcards):
    return JOBS.params(step_of(wildcards), int(wildcards.b))


def batch_message(wildcards):
    return JOBS.describe(step_of(wildcards), int(wildcards.b))


def gather_inputs(wildcards):
    return JOBS.gather_inputs(f"{GATHER_DIR}/{wildcards.name}")


# Snakemake looks up an input or params function's signature each time it calls it (three times
# a job, ~20 µs each); told once, as its own wrappers tell it (snakemake.ioutils), it does not.
for _function in (batch_inputs, batch_params, batch_message, gather_inputs):
    overwrite_function_params(_function, get_function_params(_function))


def chain_of(wildcards):
    return next(c for c in PLAN.chains if c.spec.name == wildcards.chain)


def chain_inputs(wildcards):
    return JOBS.chain_inputs(chain_of(wildcards))


def chain_key(wildcards):
    return chain_of(wildcards).content_key


def chain_spec_file(wildcards):
    return JOBS.chain_spec_file(chain_of(wildcards))


def report_targets():
    """Each chain's report files (targets of the default rule too)."""
    return [
        f"reports/{chain.spec.name}/{name}"
        for chain in PLAN.chains
        for name in ("results.html", "figures")
    ]


def chain_name(wildcards):
    return chain_of(wildcards).spec.name
