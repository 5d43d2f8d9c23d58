# One rule per operation the plan uses (job lines, --dag and the report name the operation), all
# alike: a job computes one batch of result datasets of one step. Every batch of every step is a
# job in the DAG, finished or not; paths and params come from the plan's jobs (see common.smk).


wildcard_constraints:
    chain=r"[^/]+",
    position=r"[^/]+/[^/]+",
    b=r"\d+",


for operation, (resources, code, threads) in JOBS.rules.items():

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
            # The job refuses to run other code than the plan's. (Params, not the command:
            # a shell command is evaluated when the job runs, after the loop has moved on.)
            code=code,
        message:
            "{params.describe}"
        shell:
            f"{PYTHON} -m opchain.run --code {{params.code}} --workers {{threads}} "
            "{output:q} {log:q}"


rule gather:
    """Waits for a share of the batches a chain's tables (or a single operation) wait for, so
    that no job lists more than a line of inputs whatever the size of the sweep."""
    input:
        gather_inputs,
    output:
        f"{GATHER_DIR}/{{name}}",
    log:
        f"logs/gather/{{name}}.log",
    localrule: True
    conda:
        "../../environment.yml"
    shell:
        "touch {output:q} 2> {log:q}"


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
    params:
        key=chain_key,
        spec=chain_spec_file,
    run:
        in_process(write_chain_files, params.spec, output.chain, output.table)
