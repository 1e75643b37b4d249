# Scene classification with the frozen (linprobe, knn) or fine-tuned encoder, against the same
# architecture at random initialisation. One batch job per model runs every protocol x dataset, each as its
# own launch (srun step) on all of the job's ranks (evaluate.per_model.<model>.nodes x procs_per_node over
# evaluate.nodes x procs_per_node: features split over the ranks, fine-tuning under FSDP2); a failing
# cell writes its own `status: failed` record and the others still run (geofm.bundle). The confusion
# matrices ({dataset}.confusion.csv/.png) are written beside each JSON.
rule evaluate:
    input:
        encoder=f"{RES}/pretrain/{{model}}/encoder.pt",
        tiles=[t for ds in EVAL_DS for t in tiles_of(ds)],
    output:
        expand(f"{RES}/eval/{{protocol}}/{{{{model}}}}/{{dataset}}.json", protocol=PROTOCOLS, dataset=EVAL_DS),
    log:
        f"{RES}/logs/eval/{{model}}.log",
    params:
        # the rule_params of every protocol x dataset job of the bundle: a change to any of them reruns it
        cfg=lambda wc: {f"{p}/{ds}": rule_params(config, "evaluate", protocol=p, model=wc.model, dataset=ds)
                        for p in PROTOCOLS for ds in EVAL_DS},
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
