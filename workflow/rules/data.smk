# Download (or synthesize / copy) each dataset into resources/raw/{dataset}/, checksums verified.
# Local rule: on clusters it runs on the login node, which has internet.
localrules: download


rule download:
    input:
        download_inputs,
    output:
        f"{RAW}/raw/{{dataset}}/download.json",
    log:
        f"{RES}/logs/download/{{dataset}}.log",
    params:
        cfg=lambda wc: rule_params(config, "download", dataset=wc.dataset),
    shell:
        "geofm download --config {CFG} --dataset {wildcards.dataset} > {log} 2>&1"
