# Throughput / memory of the training step per model x strategy x node count (the paper's grid), and per
# variant (profile.variants: prefetch, compile, activation checkpointing, data, precision): the base
# variant writes {nodes}n.json, variant V writes {nodes}n.V.json.
#
# Bundling: Frontier takes at most 100 queued jobs per user, and the paper's grid has 462 cells. The cells
# of one allocation shape (model x node count: every strategy and variant) run in ONE batch job
# (geofm.schedule.profile_bundles packs them into as few jobs as the walltime of that node count allows;
# `geofm schedule` counts them), one after another, each its own srun step, output file and log, with a time
# budget of profile.runtime_min; a cell that fails or overruns writes its own `status: failed: ...` and the
# next cell runs (geofm.bundle). So the batch job finishes with all its outputs and never fails for a cell.
#
# Why one rule instance looping over its cells, not Snakemake `group:` + --group-components: a group job
# sums the resources of the jobs it runs side by side (9 strategies x 8 nodes would ask for 72 nodes) unless
# a global --resources cap serialises them, and one cap cannot fit node counts from 1 to 128; its jobs run
# under a nested Snakemake whose failure handling is all-or-nothing for the group, and a hung cell would
# hold the whole allocation. The loop gives each cell its own budget and failure record. The cells are a
# list (PROFILE_OUT: only the cells the memory model finds feasible, common.smk feasible_cells); each bundle becomes one rule whose outputs are
# exactly its cells. The rules are named profile_<model>_<nodes>n[_<k>] and take the profile's
# `set-resources: profile:` (slurm_extra, mpi, site_env) as their own.
_PROFILE_SET = workflow.resource_settings._parsed_overwrite_resources.get("profile", {})

for _b in PROFILE_BUNDLES:
    _name = "profile_" + _b.name.replace("-", "_")

    rule:
        name:
            _name
        input:
            tiles_of(PRETRAIN_DS) if any(profile_setting_of(c.variant, "data") == "real"
                                           for c in _b.cells) else [],
        output:
            [c.path for c in _b.cells],
        log:
            f"{RES}/logs/profile/{_b.name}.log",
        params:
            # the rule_params of each of its cells (keyed by cell, not by path): a change to a cell's settings
            # reruns the bundle that holds it (Snakemake's params trigger)
            cfg={f"{c.model}/{c.strategy}/{c.nodes}n{c.variant}":
                 rule_params(config, "profile", model=c.model, variant=c.variant.lstrip(".") or "base")
                 for c in _b.cells},
        threads: rank_threads(_b.nodes * PROF["procs_per_node"])
        resources:
            nodes=_b.nodes,
            ranks=_b.nodes * PROF["procs_per_node"],
            ranks_per_node=PROF["procs_per_node"],
            tasks=srun_tasks(_b.nodes, PROF["procs_per_node"]),
            tasks_per_node=srun_tasks_per_node(PROF["procs_per_node"]),
            runtime=_b.runtime_min,
            mpi="",
            site_env="",
        shell:
            SITE_ENV + LAUNCH_PREFIX + "geofm profile-bundle --config {CFG} --cells {output} "
            '--launch "$GEOFM_LAUNCH" > {log} 2>&1'

    # as Snakemake applies set-resources to a rule by name: the `profile` entries, then any of its own
    workflow.get_rule(_name).resources.update(_PROFILE_SET)
    workflow.get_rule(_name).resources.update(workflow.resource_settings._parsed_overwrite_resources.get(_name, {}))
