# MAE pretraining, one job per model size. Nodes and tasks come from the config (pretrain.nodes ×
# pretrain.procs_per_node); locally the CLI starts its own ranks, under Slurm `resources.mpi` (srun)
# starts one task per GPU and each derives its rank from Slurm. A requeued or retried job resumes
# from the latest complete checkpoint in results/pretrain/{model}/checkpoints/ (not an output, so
# Snakemake keeps it) when that checkpoint's config fingerprint is this job's and its run is unfinished;
# otherwise (another config, or a finished run redone by --forcerun / a params change) the old checkpoints
# are moved aside and training starts at step 0. With pretrain.protect (the paper's config) encoder.pt is
# write-protected: no rerun replaces it until it is removed by hand (README: what reruns when).
rule pretrain:
    input:
        tiles_of(PRETRAIN_DS),
    output:
        encoder=PROTECT(f"{RES}/pretrain/{{model}}/encoder.pt"),
        metrics=f"{RES}/pretrain/{{model}}/metrics.jsonl",
        summary=f"{RES}/pretrain/{{model}}/summary.json",
    log:
        f"{RES}/logs/pretrain/{{model}}.log",
    params:
        cfg=lambda wc: rule_params(config, "pretrain", model=wc.model),
    threads: lambda wc: rank_threads(pretrain_tasks())
    resources:
        nodes=config["pretrain"].get("nodes", 1),
        ranks=pretrain_tasks(),
        ranks_per_node=config["pretrain"].get("procs_per_node", 1),
        tasks=srun_tasks(config["pretrain"].get("nodes", 1), config["pretrain"].get("procs_per_node", 1)),
        tasks_per_node=srun_tasks_per_node(config["pretrain"].get("procs_per_node", 1)),
        runtime=config["pretrain"].get("runtime_min", 60),
        mpi="",
        site_env="",
    shell:
        SITE_ENV + LAUNCH + "geofm pretrain --config {CFG} --model {wildcards.model} > {log} 2>&1"
