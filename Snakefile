# opchain: operation chains compiled to Snakemake jobs. The plan (src/opchain/plan.py) decides every
# path; the rules below are the only ones, whatever the number of chains and steps.
configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/chains.smk"


rule all:
    input:
        targets(),
    default_target: True
