# Validate the config, build the plan (cheap: index reads and stats), expose it to the rules.
import sys

from snakemake.utils import validate

from opchain.errors import OpchainError
from opchain.plan import canonical_json, plan_from_config


validate(config, "../schemas/config.schema.yaml")

try:
    PLAN = plan_from_config(config, job_process=not workflow.is_main_process)
except OpchainError as error:
    # A user error: one line, no traceback (Snakemake would print one for an exception).
    sys.exit(f"opchain: {error}")

STORAGE = str(PLAN.storage)


onstart:
    # Real runs only, main process only (Snakemake skips onstart for -n): dry runs write nothing.
    try:
        PLAN.reserve()
    except OpchainError as error:
        sys.exit(f"opchain: {error}")


def targets():
    """What `rule all` asks for: each chain's chain.yaml, or the single operation's datasets."""
    if PLAN.operation_steps:
        return [f"{STORAGE}/{out}" for step in PLAN.operation_steps for out in step.outputs]
    return [f"{STORAGE}/{chain.dir}/chain.yaml" for chain in PLAN.chains]


def job_of(wildcards):
    return PLAN.jobs[f"{wildcards.step_dir}/dataset_{wildcards.k}"]


def step_input(wildcards):
    return f"{STORAGE}/{job_of(wildcards).input}"


def step_spec(wildcards):
    return job_of(wildcards).spec_json


def step_resources():
    """Resources that some planned operation declares (mem_mb, runtime, cpus_per_task, ...): its
    value for its jobs, the --default-resources value (a plain number) for the others. Resources no
    operation declares are left to --default-resources alone."""
    defaults = workflow.resource_settings.default_resources
    # Sized resources must be numbers for every job: without a --default-resources value, the jobs
    # of other operations get Snakemake's own floor for memory and disk, and an hour.
    fallback = {"mem_mb": 1000, "disk_mb": 1000, "runtime": 60}
    if defaults:
        fallback |= {name: r.value for name, r in defaults.items() if not r.is_evaluable()}
    declared = {name for step in PLAN.steps.values() for name in step.operation.operation.resources}

    def resource(name):
        return lambda wildcards: job_of(wildcards).spec["resources"].get(name, fallback.get(name))

    return {name: resource(name) for name in sorted(declared)}


def chain_of(wildcards):
    return next(c for c in PLAN.chains if c.dir == f"operation_chain_results/{wildcards.chain}")


def chain_outputs(wildcards):
    return [f"{STORAGE}/{out}" for out in chain_of(wildcards).outputs]
