# Site environment of the two-node test cluster (scripts/start-test-slurm.sh); sourced by the
# compute rules (pretrain, profile, evaluate) through the `site_env` resource of profiles/test-slurm.
# Both emulated nodes share this machine's few CPUs: one thread per rank, gloo over loopback.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-lo}
export GEOFM_SITE=test-slurm
# node-local scratch on every node of the job, like MIOpen's caches on Frontier
. "$(dirname "${BASH_SOURCE[0]}")/../lib/node-dirs.sh"
export GEOFM_NODE_TMP=/tmp/geofm-${USER:-$(id -un)}-${SLURM_JOB_ID:-local}
geofm_node_dirs "$GEOFM_NODE_TMP"
