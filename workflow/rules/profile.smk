# Throughput / memory of the training step per model × strategy × node count (the paper's grid), and per
# variant (profile.variants: prefetch, compile, activation checkpointing, data, precision): the base
# variant writes {nodes}n.json, variant V writes {nodes}n.V.json (the `variant` wildcard is "" or ".V").
rule profile:
    input:
        lambda wc: tiles_of(PRETRAIN_DS) if profile_setting(wc, "data", "synthetic") == "real" else [],
    output:
        f"{RES}/profile/{{model}}/{{strategy}}/{{nodes}}n{{variant}}.json",
    log:
        f"{RES}/logs/profile/{{model}}/{{strategy}}/{{nodes}}n{{variant}}.log",
    params:
        variant=profile_variant,
        cfg=lambda wc: rule_params(config, "profile", model=wc.model, variant=profile_variant(wc)),
    threads: lambda wc: rank_threads(int(wc.nodes) * PROF.get("procs_per_node", 1))
    resources:
        nodes=lambda wc: int(wc.nodes),
        ranks=lambda wc: int(wc.nodes) * PROF.get("procs_per_node", 1),
        ranks_per_node=PROF.get("procs_per_node", 1),
        tasks=lambda wc: srun_tasks(int(wc.nodes), PROF.get("procs_per_node", 1)),
        tasks_per_node=srun_tasks_per_node(PROF.get("procs_per_node", 1)),
        runtime=PROF.get("runtime_min", 30),
        mpi="",
        site_env="",
    shell:
        SITE_ENV + LAUNCH + "geofm profile --config {CFG} --model {wildcards.model} "
        "--strategy {wildcards.strategy} --nodes {wildcards.nodes} --variant {params.variant} --out {output} "
        "> {log} 2>&1"
