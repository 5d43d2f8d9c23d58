# Statistics over each chain's results (the chain file's `statistics:` entries): paired tests of a
# score between the values of a parameter, rewritten whenever the chain's results.csv changes.
import dataclasses

# The statistics folder of each chain that has statistics entries: targets of rule all.
STATISTICS_TARGETS = [
    f"reports/{chain.spec.name}/statistics"
    for chain in PLAN.chains
    if chain.spec.statistics
]


rule chain_statistics:
    """<chain dir>/statistics/<name>.csv for each statistics entry of a chain, from its
    results.csv; the output folder holds their copies, shown in the report."""
    input:
        f"{TABLES_DIR}/{{chain}}/results.csv",
    output:
        report(
            directory("reports/{chain}/statistics"),
            patterns=["{name}.csv"],
            category=chain_name,
            subcategory="statistics",
            caption="../report/statistics.rst",
            labels={"figure": "{name}"},
        ),
    log:
        "logs/{chain}/chain_statistics.log",
    localrule: True
    conda:
        "../../environment.yml"
    params:
        entries=lambda wildcards: [
            dataclasses.asdict(s) for s in chain_of(wildcards).spec.statistics
        ],
        chain_dir=lambda wildcards: str(PLAN.storage / chain_of(wildcards).dir),
    script:
        "../../scripts/chain_statistics.py"
