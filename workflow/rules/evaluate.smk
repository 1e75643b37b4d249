# Scene classification with the frozen (linprobe, knn) or fine-tuned encoder, against the same
# architecture at random initialisation.
rule evaluate:
    input:
        encoder=f"{RES}/pretrain/{{model}}/encoder.pt",
        tiles=lambda wc: tiles_of(wc.dataset),
    output:
        json=f"{RES}/eval/{{protocol}}/{{model}}/{{dataset}}.json",
        confusion_csv=f"{RES}/eval/{{protocol}}/{{model}}/{{dataset}}.confusion.csv",
        confusion_png=report(f"{RES}/eval/{{protocol}}/{{model}}/{{dataset}}.confusion.png",
                             caption="../report/confusion.rst", category="Confusion matrices"),
    log:
        f"{RES}/logs/eval/{{protocol}}/{{model}}/{{dataset}}.log",
    params:
        cfg=lambda wc: rule_params(config, "evaluate", protocol=wc.protocol, model=wc.model, dataset=wc.dataset),
    resources:
        runtime=config["evaluate"].get("runtime_min", 60),
        site_env="",
    shell:
        SITE_ENV + "geofm evaluate --config {CFG} --protocol {wildcards.protocol} --model {wildcards.model} "
        "--dataset {wildcards.dataset} --out {output.json} > {log} 2>&1"
