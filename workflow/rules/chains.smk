# The two rules every chain compiles to. Paths come from the plan; see common.smk.
import shlex
import sys

from snakemake import __version__ as SNAKEMAKE_VERSION

# A step is a plain `python -m opchain.run` process, with this process's interpreter (the one that
# has opchain), and records the Snakemake that ran it.
RUN_STEP = f"{shlex.quote(sys.executable)} -m opchain.run {{output:q}} {{log:q}} {SNAKEMAKE_VERSION}"


wildcard_constraints:
    step_dir=r"operation_chain_results/[^/]+/[^/]+|operation_results/[^/]+",
    k=r"\d+",
    chain=r"[^/]+",


rule step:
    """One result dataset: one operation, one parameter setting, one input dataset."""
    input:
        step_input,
    output:
        directory(f"{STORAGE}/{{step_dir}}/dataset_{{k}}"),
    params:
        spec=step_spec,
    log:
        "logs/{step_dir}/dataset_{k}.log",
    resources:
        **step_resources(),
    shell:
        RUN_STEP + " {params.spec:q}"


rule chain_manifest:
    """chain.yaml and results.csv: the compiled chain with every step directory, and its results
    table; rewritten when the step directories change."""
    input:
        chain_outputs,
    output:
        f"{STORAGE}/operation_chain_results/{{chain}}/chain.yaml",
        f"{STORAGE}/operation_chain_results/{{chain}}/results.csv",
    params:
        manifest=lambda wildcards: canonical_json(chain_of(wildcards).manifest()),
    log:
        "logs/{chain}/chain_manifest.log",
    localrule: True
    script:
        "../../scripts/write_chain.py"
