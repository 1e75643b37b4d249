# Scene classification with the frozen (linprobe, knn) or fine-tuned encoder, against the same
# architecture at random initialisation; `{ratio}` is "" (the tiles' own split) or ".tr<percent>" (a
# dataset's `train_ratios`: the labelled tiles re-split at that ratio).
rule evaluate:
    input:
        encoder=f"{RES}/pretrain/{{model}}/encoder.pt",
        tiles=lambda wc: tiles_of(wc.dataset),
    output:
        json=f"{RES}/eval/{{protocol}}/{{model}}/{{dataset}}{{ratio}}.json",
        confusion_csv=f"{RES}/eval/{{protocol}}/{{model}}/{{dataset}}{{ratio}}.confusion.csv",
        confusion_png=report(f"{RES}/eval/{{protocol}}/{{model}}/{{dataset}}{{ratio}}.confusion.png",
                             caption="../report/confusion.rst", category="Confusion matrices"),
    params:
        ratio=eval_train_ratio,
    log:
        f"{RES}/logs/eval/{{protocol}}/{{model}}/{{dataset}}{{ratio}}.log",
    resources:
        runtime=config["evaluate"].get("runtime_min", 60),
        site_env="",
    shell:
        SITE_ENV + "{GEOFM} evaluate --config {CFG} --protocol {wildcards.protocol} --model {wildcards.model} "
        "--dataset {wildcards.dataset} {params.ratio} --out {output.json} > {log} 2>&1"
