# Scene classification with the frozen (linprobe, knn) or fine-tuned encoder, against the same
# architecture at random initialisation. One batch job per model runs every protocol x dataset (x train ratio),
# each as its own launch (srun step) on all of the job's ranks (evaluate.per_model.<model>.nodes x
# procs_per_node over evaluate.nodes x procs_per_node: features split over the ranks, fine-tuning under FSDP2);
# a failing cell writes its own `status: failed` record and the others still run (geofm.bundle). A dataset's
# evaluation is `{dataset}.json` (the tiles' own split) or `{dataset}.tr<percent>.json` per `train_ratios`
# (the labelled tiles re-split at that ratio). The confusion matrices ({stem}.confusion.csv/.png) are
# written beside each JSON.
rule evaluate:
    input:
        encoder=f"{RES}/pretrain/{{model}}/encoder.pt",
        tiles=[t for ds in EVAL_DS for t in tiles_of(ds)],
    output:
        [f"{RES}/eval/{p}/{{model}}/{stem}.json" for p in PROTOCOLS for d in EVAL_DS for stem in eval_stems(d)],
    log:
        f"{RES}/logs/eval/{{model}}.log",
    params:
        # the rule_params of every protocol x dataset (x train ratio) job of the bundle: a change to any of
        # them reruns it
        cfg=lambda wc: {f"{p}/{stem}": rule_params(config, "evaluate", protocol=p, model=wc.model, dataset=d,
                                                   train_ratio=stem_ratio(d, stem))
                        for p in PROTOCOLS for d in EVAL_DS for stem in eval_stems(d)},
    threads: lambda wc: rank_threads(math.prod(evaluate_geometry(wc.model)))
    resources:
        nodes=lambda wc: evaluate_geometry(wc.model)[0],
        ranks=lambda wc: math.prod(evaluate_geometry(wc.model)),
        ranks_per_node=lambda wc: evaluate_geometry(wc.model)[1],
        tasks=lambda wc: srun_tasks(*evaluate_geometry(wc.model)),
        tasks_per_node=lambda wc: srun_tasks_per_node(evaluate_geometry(wc.model)[1]),
        runtime=lambda wc: evaluate_settings(config, wc.model)["runtime_min"],
        mpi="",
        site_env="",
    shell:
        SITE_ENV + LAUNCH_PREFIX + "geofm evaluate-bundle --config {CFG} --model {wildcards.model} "
        '--launch "$GEOFM_LAUNCH" > {log} 2>&1'
