# The report of each chain (`snakemake --report report.html`): its results table and figures, made
# from its results.csv. Category = the chain's name, subcategory = the operation.


rule chain_report:
    """The results table and the figures of one chain, for Snakemake's report."""
    input:
        f"{TABLES_DIR}/{{chain}}/results.csv",
    output:
        table=report(
            "reports/{chain}/results.html",
            category=chain_name,
            subcategory="results table",
            caption="../report/table.rst",
            labels={"figure": "results table"},
        ),
        figures=report(
            directory("reports/{chain}/figures"),
            patterns=["{operation}/{figure}.png"],
            category=chain_name,
            subcategory="{operation}",
            caption="../report/figure.rst",
            labels={"figure": "{figure}"},
        ),
    log:
        "logs/{chain}/chain_report.log",
    localrule: True
    params:
        chain=chain_name,
        runs=lambda wildcards: chain_of(wildcards).spec.runs,
        storage=STORAGE,
    run:
        in_process(build_report, input[0], params.storage, output.table, output.figures)
