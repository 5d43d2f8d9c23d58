# One rule per operation the plan uses (job lines, --dag and the report name the operation), all
# alike: a job computes one batch of result datasets of one step. Paths come from the plan; see
# common.smk.


wildcard_constraints:
    chain=r"[^/]+",
    step=r"[^/]+",
    b=r"\d+",


for operation, resources in PLAN.operation_rules.items():

    rule:
        name:
            operation
        input:
            batch_inputs,
        output:
            f"{JOBS_DIR}/{operation}/{{chain}}/{{step}}/batch_{{b}}",
        log:
            f"logs/{operation}/{{chain}}/{{step}}/batch_{{b}}.log",
        conda:
            "../../environment.yml"
        resources:
            **resources,
        params:
            describe=batch_message,
        message:
            "{params.describe}"
        shell:
            RUN_BATCH


rule chain_manifest:
    """chain.yaml (the compiled chain with every step directory) and results.csv (one row per
    result dataset) in the chain's directory, rewritten when the chain's steps or any of its
    results change; the outputs are their copies in the working directory."""
    input:
        markers=chain_markers,
        folders=chain_folders,
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
