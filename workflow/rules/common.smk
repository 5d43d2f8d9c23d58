# Validate the config, build the plan (cheap: index reads and one listing per step directory),
# expose it to the rules.
import shlex
import sys

from snakemake import __version__ as SNAKEMAKE_VERSION
from snakemake.utils import validate

from opchain.errors import OpchainError
from opchain.plan import JOBS_DIR, TABLES_DIR, plan_from_config

validate(config, "../schemas/config.schema.yaml")

try:
    PLAN = plan_from_config(config)
except OpchainError as error:
    # A user error: one line, no traceback (Snakemake would print one for an exception).
    sys.exit(f"opchain: {error}")

STORAGE = str(PLAN.storage)
if workflow.is_main_process:
    PLAN.drop_stale_markers()
# An operation job is a plain `python -m opchain.run` process, with this process's interpreter
# (the one that has opchain); its spec is the file MARKER.json that onstart writes.
RUN_BATCH = f"{shlex.quote(sys.executable)} -m opchain.run {{output:q}} {{log:q}}"


onstart:
    # Real runs only, main process only (Snakemake skips onstart for -n): dry runs write nothing.
    try:
        PLAN.start(SNAKEMAKE_VERSION)
    except OpchainError as error:
        sys.exit(f"opchain: {error}")


def targets():
    """The targets of the default rule: each chain's tables, or the missing batches of a single
    operation."""
    if PLAN.operation_steps:
        return [s.marker(b) for s in PLAN.operation_steps for b in s.incomplete]
    return [table for chain in PLAN.chains for table in chain.tables]


def step_of(wildcards):
    return PLAN.labels[f"{wildcards.chain}/{wildcards.step}"]


def batch_inputs(wildcards):
    """The markers of the incomplete upstream batches this batch reads from."""
    return step_of(wildcards).upstream_markers(int(wildcards.b))


def batch_message(wildcards):
    return step_of(wildcards).describe(int(wildcards.b))


def chain_of(wildcards):
    return next(c for c in PLAN.chains if c.spec.name == wildcards.chain)


def chain_markers(wildcards):
    return chain_of(wildcards).markers


def chain_folders(wildcards):
    return chain_of(wildcards).changed_folders(PLAN.storage)


def chain_key(wildcards):
    return chain_of(wildcards).content_key


def chain_spec_file(wildcards):
    return chain_of(wildcards).spec_file


def report_targets():
    """Each chain's report files (targets of the default rule too)."""
    return [
        f"reports/{chain.spec.name}/{name}"
        for chain in PLAN.chains
        for name in ("results.html", "figures")
    ]


def chain_name(wildcards):
    return chain_of(wildcards).spec.name
