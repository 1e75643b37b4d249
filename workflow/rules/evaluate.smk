# Scene classification with the frozen (linprobe, knn) or fine-tuned encoder, against the same
# architecture at random initialisation.
rule evaluate:
    input:
        encoder=f"{RES}/pretrain/{{model}}/encoder.pt",
        tiles=lambda wc: tiles_of(wc.dataset),
    output:
        f"{RES}/eval/{{protocol}}/{{model}}/{{dataset}}.json",
    log:
        f"{RES}/logs/eval/{{protocol}}/{{model}}/{{dataset}}.log",
    resources:
        runtime=config["evaluate"].get("runtime_min", 60),
    shell:
        "{GEOFM} evaluate --config {CFG} --protocol {wildcards.protocol} --model {wildcards.model} "
        "--dataset {wildcards.dataset} --out {output} > {log} 2>&1"
