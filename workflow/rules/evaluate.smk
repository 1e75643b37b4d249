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
    log:
        f"{RES}/logs/eval/{{protocol}}/{{model}}/{{dataset}}{{ratio}}.log",
    params:
        # the job's train ratio is part of its params: editing a dataset's train_ratios reruns only the
        # evaluations of the ratios that changed (the others keep their file name and their params)
        cfg=lambda wc: rule_params(config, "evaluate", protocol=wc.protocol, model=wc.model, dataset=wc.dataset,
                                   train_ratio=eval_ratio(wc)),
        ratio=eval_train_ratio,
    resources:
        runtime=config["evaluate"].get("runtime_min", 60),
        site_env="",
    shell:
        SITE_ENV + "geofm evaluate --config {CFG} --protocol {wildcards.protocol} --model {wildcards.model} "
        "--dataset {wildcards.dataset} {params.ratio} --out {output.json} > {log} 2>&1"
