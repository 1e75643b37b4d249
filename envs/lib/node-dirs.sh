# geofm_node_dirs DIR... : create node-local directories (e.g. under /tmp) on EVERY node of the current
# Slurm job, or just here outside Slurm. Sourced by the site environment scripts (envs/*/env.sh), which
# a multi-rank rule sources once, on the job's first node, before srun starts the ranks on all nodes.
# Each node also gets a marker DIR/.node-<slurmd node name> (the tests check it).
geofm_node_dirs() {
    mkdir -p "$@"
    [ -n "${SLURM_JOB_ID:-}" ] && command -v srun >/dev/null 2>&1 && command -v squeue >/dev/null 2>&1 || return 0
    local n
    n=$(squeue -h -j "$SLURM_JOB_ID" -o %D 2>/dev/null | head -n 1)
    case "$n" in '' | *[!0-9]*) return 0 ;; esac
    [ "$n" -gt 1 ] || return 0
    # the rule's shell runs in the batch step with the SLURM_* variables removed: give srun all of it
    srun --overlap --nodes="$n" --ntasks="$n" --ntasks-per-node=1 --cpus-per-task=1 \
        bash -c 'mkdir -p "$@" && touch "$1/.node-${SLURMD_NODENAME:-$(hostname -s)}"' geofm_node_dirs "$@"
}
