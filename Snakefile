# opchain: operation chains compiled to Snakemake jobs. The plan (src/opchain/plan.py) decides every
# path; the rules are one per operation the chains use, plus the chains' tables.
configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/chains.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/statistics.smk"


rule all:
    default_target: True
    input:
        targets(),
        report_targets(),
        STATISTICS_TARGETS,
