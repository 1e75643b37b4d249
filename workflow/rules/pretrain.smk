# MAE pretraining, one job per model size. Nodes and tasks come from the config (pretrain.nodes ×
# pretrain.procs_per_node); locally the CLI starts its own ranks, under Slurm `resources.mpi` (srun)
# starts one task per GPU and each derives its rank from Slurm.
rule pretrain:
    input:
        tiles_of(PRETRAIN_DS),
    output:
        encoder=f"{RES}/pretrain/{{model}}/encoder.pt",
        metrics=f"{RES}/pretrain/{{model}}/metrics.jsonl",
        summary=f"{RES}/pretrain/{{model}}/summary.json",
    log:
        f"{RES}/logs/pretrain/{{model}}.log",
    threads: lambda wc: min(pretrain_tasks(), workflow.cores) if workflow.cores else 1
    resources:
        nodes=config["pretrain"].get("nodes", 1),
        tasks=pretrain_tasks(),
        tasks_per_node=config["pretrain"].get("procs_per_node", 1),
        runtime=config["pretrain"].get("runtime_min", 60),
        mpi="",
    shell:
        "{resources.mpi} {GEOFM} pretrain --config {CFG} --model {wildcards.model} > {log} 2>&1"
