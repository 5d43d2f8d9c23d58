# One rule per operation the plan uses (job lines, --dag and the report name the operation), all
# alike: a job computes one batch of result datasets of one step. Every batch of every step is a
# job in the DAG, finished or not; paths and params come from the plan's jobs (see common.smk).


wildcard_constraints:
    chain=r"[^/]+",
    position=r"[^/]+/[^/]+",
    b=r"\d+",


def operation_rule(operation, resources, code, threads):
    # A function, not the loop's body: shell commands are evaluated when a job runs, and a
    # loop's variables would by then hold the last operation's values.
    rule:
        name:
            operation
        input:
            batch_inputs,
        output:
            f"{JOBS_DIR}/{operation}/{{position}}/batch_{{b}}",
        log:
            f"logs/{operation}/{{position}}/batch_{{b}}.log",
        conda:
            "../../environment.yml"
        threads: threads  # datasets a job computes at once (--set-threads OP=N, SLURM's CPUs)
        resources:
            **resources,
        params:
            computes=batch_params,
            describe=batch_message,
        message:
            "{params.describe}"
        shell:
            # The operation's code hash is part of the command: --list-changes code names the
            # batches of an operation whose code changed, and the job refuses to run other code.
            f"{PYTHON} -m opchain.run --code {code} --workers {{threads}} {{output:q}} {{log:q}}"


for operation, (resources, code, threads) in JOBS.rules.items():
    operation_rule(operation, resources, code, threads)


rule gather:
    """Waits for a share of the batches a chain's tables (or a single operation) wait for, so
    that no job lists more than a line of inputs whatever the size of the sweep."""
    input:
        gather_inputs,
    output:
        f"{GATHER_DIR}/{{name}}",
    localrule: True
    shell:
        "touch {output:q}"


rule chain_manifest:
    """chain.yaml (the compiled chain with every step directory) and results.csv (one row per
    result dataset) in the chain's directory, rewritten when the chain's steps or any of its
    results change; the outputs are their copies in the working directory."""
    input:
        chain_inputs,
    output:
        chain=f"{TABLES_DIR}/{{chain}}/chain.yaml",
        table=f"{TABLES_DIR}/{{chain}}/results.csv",
    log:
        "logs/chains/{chain}.log",
    localrule: True
    conda:
        "../../environment.yml"
    params:
        key=chain_key,
        spec=chain_spec_file,
    script:
        "../../scripts/write_chain.py"
