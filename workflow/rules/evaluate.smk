# Scene classification with the frozen (linprobe, knn) or fine-tuned encoder, against the same
# architecture at random initialisation, on evaluate.per_model.<model>.nodes x procs_per_node ranks (over
# evaluate.nodes x procs_per_node: features split over the ranks, fine-tuning under FSDP2). A dataset's
# evaluation is `{dataset}.json` (the tiles' own split) or `{dataset}.tr<percent>.json` per `train_ratios`
# (the labelled tiles re-split at that ratio); the confusion matrices ({stem}.confusion.csv/.png) are written
# beside each JSON. Two shapes, chosen by `evaluate.bundle`:
# - false (the default): one job per protocol x model x dataset (x ratio), whose params are that evaluation's
#   settings only, so a protocol's setting (evaluate.knn_k) reruns that protocol's jobs and nothing else;
# - true (config/config.yaml, for Frontier's 100-job queue): one batch job per model runs every protocol x
#   dataset (x ratio), each its own launch (srun step) on all of the job's ranks; a failing cell writes its own
#   `status: failed` record and the others still run (geofm.bundle). Its params hold every cell's settings,
#   so a change to any of them reruns that model's bundle.
EVAL_RESOURCES = dict(
    nodes=lambda wc: evaluate_geometry(wc.model)[0],
    ranks=lambda wc: math.prod(evaluate_geometry(wc.model)),
    ranks_per_node=lambda wc: evaluate_geometry(wc.model)[1],
    tasks=lambda wc: srun_tasks(*evaluate_geometry(wc.model)),
    tasks_per_node=lambda wc: srun_tasks_per_node(evaluate_geometry(wc.model)[1]),
    runtime=lambda wc: evaluate_settings(config, wc.model)["runtime_min"],
    mpi="",
    site_env="",
)

# Among ready evaluations the longest first (below every pretraining, rules/pretrain.smk): a fine-tuning, then a
# linear probe (its frozen encoder over evaluate.linprobe_views augmented views of the training images), then kNN
# (one pass). Snakemake otherwise orders jobs with equal inputs as it finds them, and the last job to start on a
# 2-core machine was the longest one, a linear probe of 50 s with the other core idle.
EVAL_PRIORITY = {"finetune": 3, "linprobe": 2, "knn": 1}  # a function of the wildcards below: Snakemake >= 9.17 (PR 3253)

if config["evaluate"]["bundle"]:

    rule evaluate:
        input:
            encoder=f"{RES}/pretrain/{{model}}/encoder.pt",
            tiles=[t for ds in EVAL_DS for t in tiles_of(ds)],
        output:
            [f"{RES}/eval/{p}/{{model}}/{stem}.json" for p in PROTOCOLS for d in EVAL_DS for stem in eval_stems(d)],
        log:
            f"{RES}/logs/eval/{{model}}.log",
        params:
            cfg=lambda wc: {f"{p}/{stem}": rule_params(config, "evaluate", protocol=p, model=wc.model, dataset=d,
                                                       train_ratio=stem_ratio(d, stem))
                            for p in PROTOCOLS for d in EVAL_DS for stem in eval_stems(d)},
        threads: lambda wc: rank_threads(math.prod(evaluate_geometry(wc.model)))
        resources:
            **EVAL_RESOURCES,
        shell:
            SITE_ENV + LAUNCH_PREFIX + "geofm evaluate-bundle --config {CFG} --model {wildcards.model} "
            '--launch "$GEOFM_LAUNCH" > {log} 2>&1'

else:

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
            cfg=lambda wc: rule_params(config, "evaluate", protocol=wc.protocol, model=wc.model,
                                       dataset=wc.dataset, train_ratio=eval_ratio(wc)),
            ratio=lambda wc: "" if eval_ratio(wc) is None else f"--train-ratio {eval_ratio(wc)}",
        priority: lambda wc: EVAL_PRIORITY.get(wc.protocol, 0)
        threads: lambda wc: rank_threads(math.prod(evaluate_geometry(wc.model)))
        resources:
            **EVAL_RESOURCES,
        shell:
            SITE_ENV + LAUNCH + "geofm evaluate --config {CFG} --protocol {wildcards.protocol} "
            "--model {wildcards.model} --dataset {wildcards.dataset} {params.ratio} --out {output.json} "
            "> {log} 2>&1"
