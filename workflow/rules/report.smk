# The report of each chain (`snakemake --report report.html`): its results table and figures, made
# from its results.csv. Category = the chain's name, subcategory = the operation.


def report_targets():
    """What `rule all` asks for besides the chains: each chain's report files."""
    return [
        f"{STORAGE}/{chain.dir}/report/{name}"
        for chain in PLAN.chains
        for name in ("results.html", "figures")
    ]


def chain_name(wildcards):
    return chain_of(wildcards).spec.name


rule chain_report:
    """The results table and the figures of one chain, for Snakemake's report."""
    input:
        f"{STORAGE}/operation_chain_results/{{chain}}/results.csv",
    output:
        table=report(
            f"{STORAGE}/operation_chain_results/{{chain}}/report/results.html",
            category=chain_name,
            subcategory="results table",
            caption="../report/table.rst",
            labels={"figure": "results table"},
        ),
        figures=report(
            directory(f"{STORAGE}/operation_chain_results/{{chain}}/report/figures"),
            patterns=["{operation}/{figure}.png"],
            category=chain_name,
            subcategory="{operation}",
            caption="../report/figure.rst",
            labels={"figure": "{figure}"},
        ),
    params:
        chain=chain_name,
        runs=lambda wildcards: chain_of(wildcards).spec.runs,
    log:
        "logs/{chain}/chain_report.log",
    localrule: True
    script:
        "../../scripts/chain_report.py"
