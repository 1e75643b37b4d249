# MAE pretraining, one job per model size. Nodes, ranks per node, walltime and retries per model come from
# the config (pretrain.per_model.<model> over pretrain; execution only: they are not in the rule's params
# or the checkpoint fingerprint; a model's own recipe keys there are, so changing one reruns that model); locally the CLI starts its own ranks, under Slurm `resources.mpi` (srun)
# starts one task per GPU and each derives its rank from Slurm.
# Walltime: a chunk that gets the walltime signal (profiles/frontier: sbatch --signal=USR1@300) or SIGTERM
# writes a checkpoint at the current step and exits (status 75); Snakemake resubmits it (`retries`) and it
# resumes from the latest complete checkpoint in results/pretrain/{model}/checkpoints/ (not an output, so
# Snakemake keeps it) since that checkpoint's config fingerprint is this job's and its run is unfinished.
# Otherwise (another config, or a finished run redone by --forcerun / a params change) the old checkpoints
# are moved aside and training starts at step 0. Snakemake's retries are per rule: the rule takes the
# largest of the models' (the others finish within theirs; `geofm schedule` checks each model's chunks
# against its own retries). With pretrain.protect (the paper's config) encoder.pt is write-protected: no
# rerun replaces it until it is removed by hand (README: what reruns when).
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
    retries: max(pretrain_settings(config, m)["retries"] for m in MODELS)
    # Every pretraining before any job that is ready beside it: Snakemake's schedulers rank ready jobs by
    # priority first, then (greedy) by the bytes of their inputs (snakemake 9.27 scheduling/greedy.py
    # job_reward; milp.py puts priority first in its objective), which otherwise picks the evaluations of a
    # finished encoder (the encoder among their inputs) over the next model's pretraining. Locally the 1-core
    # pretraining then runs beside those evaluations instead of alone after them; under Slurm the long jobs
    # enter the queue first.
    priority: 10
    threads: lambda wc: pretrain_threads(wc.model)
    resources:
        nodes=lambda wc: pretrain_geometry(wc.model)[0],
        ranks=lambda wc: math.prod(pretrain_geometry(wc.model)),
        ranks_per_node=lambda wc: pretrain_geometry(wc.model)[1],
        tasks=lambda wc: srun_tasks(*pretrain_geometry(wc.model)),
        tasks_per_node=lambda wc: srun_tasks_per_node(pretrain_geometry(wc.model)[1]),
        runtime=lambda wc: pretrain_settings(config, wc.model)["runtime_min"],
        mpi="",
        site_env="",
    shell:
        # >>: the log keeps every chunk of a resubmitted run
        SITE_ENV + LAUNCH + "geofm pretrain --config {CFG} --model {wildcards.model} >> {log} 2>&1"
