# GeoFM-Scale site environment for OLCF Frontier (MI250X, Slingshot-11). bash only.
#   - on a login node, once per shell, before `snakemake --profile profiles/frontier ...`:
#       source envs/frontier/env.sh
#   - in the jobs: pretrain/profile/evaluate source it first (profiles/frontier sets the resource
#     site_env=envs/frontier/env.sh; local runs source nothing).
# Knobs (export before sourcing): GEOFM_VENV (default <repo>/.venv-frontier, made by setup-venv.sh),
# GEOFM_ORION (where results/ and resources/ live; profiles/frontier points the config there).
# Sources: OLCF "Frontier User Guide" (RCCL; Data and Storage) and "PyTorch on Frontier" (RCCL Network
# Plugin, Alternative Rendezvous Protocol, RCCL Environment Variables).
_geofm_env_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
_geofm_repo=$(cd "$_geofm_env_dir/../.." && pwd)
_geofm_u=$(set +o | grep nounset); set +u     # module/Lmod scripts use unset variables

# --- modules (rocm, then rccl-net-plugin: the aws-ofi-nccl plugin and OLCF's Slingshot settings)
if command -v module >/dev/null 2>&1; then
    while read -r _m; do
        case "$_m" in '' | '#'*) continue ;; esac
        module load "$_m" >/dev/null 2>&1 || echo "envs/frontier/env.sh: module load $_m failed" >&2
    done <"$_geofm_env_dir/modules.txt"
    export LD_LIBRARY_PATH=${CRAY_LD_LIBRARY_PATH:-}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}   # non-default CPE
fi

# --- Python: the venv with the ROCm build of torch (envs/frontier/setup-venv.sh)
export GEOFM_VENV=${GEOFM_VENV:-$_geofm_repo/.venv-frontier}
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f "$GEOFM_VENV/bin/activate" ]; then . "$GEOFM_VENV/bin/activate"; fi

# --- results and resources on Orion (Lustre), not the 50 GB NFS home; purged after 90 days unaccessed
if [ -z "${GEOFM_ORION:-}" ] && [ -n "${SBATCH_ACCOUNT:-}" ]; then
    export GEOFM_ORION=/lustre/orion/${SBATCH_ACCOUNT}/scratch/${USER:-$(id -un)}/geofm
fi

# --- RCCL over Slingshot. The rccl-net-plugin module sets all of these; the same values are the
# defaults here where it did not (OLCF's list for RCCL with the libfabric plugin).
export NCCL_CROSS_NIC=${NCCL_CROSS_NIC:-1}
export NCCL_NET_GDR_LEVEL=${NCCL_NET_GDR_LEVEL:-PHB}
export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-hsn0,hsn1,hsn2,hsn3}   # OLCF: try hsn0 alone if it hangs
export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-hsn0}
export HSA_FORCE_FINE_GRAIN_PCIE=${HSA_FORCE_FINE_GRAIN_PCIE:-1}
export FI_MR_CACHE_MONITOR=${FI_MR_CACHE_MONITOR:-kdreg2}             # never memhooks (deadlocks)
export FI_CXI_DISABLE_HOST_REGISTER=${FI_CXI_DISABLE_HOST_REGISTER:-1}
export FI_CXI_DEFAULT_CQ_SIZE=${FI_CXI_DEFAULT_CQ_SIZE:-131072}
export FI_CXI_DEFAULT_TX_SIZE=${FI_CXI_DEFAULT_TX_SIZE:-2048}
export FI_CXI_RX_MATCH_MODE=${FI_CXI_RX_MATCH_MODE:-hybrid}
# alternative rendezvous protocol: needs `sbatch --network=disable_rdzv_get` too (profiles/frontier)
export FI_CXI_RDZV_PROTO=${FI_CXI_RDZV_PROTO:-alt_read}
export FI_CXI_RDZV_EAGER_SIZE=${FI_CXI_RDZV_EAGER_SIZE:-0}
export FI_CXI_RDZV_THRESHOLD=${FI_CXI_RDZV_THRESHOLD:-0}
export FI_CXI_RDZV_GET_MIN=${FI_CXI_RDZV_GET_MIN:-0}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1

# --- no silent TCP: in a job on more than one node, the network plugin must be there, and RCCL is told
# to use it (NCCL_NET=OFI: RCCL stops instead of falling back to sockets); on one node the network is not
# configured for the plugin, so NCCL_NET=Socket there (OLCF, "PyTorch on Frontier").
geofm_job_nodes() {
    local n=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-}}
    if [ -z "$n" ] && [ -n "${SLURM_JOB_ID:-}" ] && command -v squeue >/dev/null 2>&1; then
        n=$(squeue -h -j "$SLURM_JOB_ID" -o %D 2>/dev/null | head -n 1) || n=""   # the job step drops SLURM_*
    fi
    case "$n" in '' | *[!0-9]*) echo 1 ;; *) echo "$n" ;; esac
}
geofm_net_plugin_path() {
    # NCCL_NET_PLUGIN is a path (.../librccl-net.so) or a name (librccl-net-<name>.so on LD_LIBRARY_PATH)
    local p=${NCCL_NET_PLUGIN:-} d
    [ -n "$p" ] || return 1
    case "$p" in */*) [ -f "$p" ] && echo "$p" && return 0; return 1 ;; esac
    local IFS=:
    for d in ${LD_LIBRARY_PATH:-}; do
        for f in "$d/librccl-net-$p.so" "$d/$p"; do [ -f "$f" ] && echo "$f" && return 0; done
    done
    return 1
}
if [ -n "${SLURM_JOB_ID:-}" ]; then
    if [ "$(geofm_job_nodes)" -gt 1 ]; then
        if ! geofm_net_plugin_path >/dev/null; then
            echo "envs/frontier/env.sh: job $SLURM_JOB_ID spans $(geofm_job_nodes) nodes but the RCCL network plugin is" \
                 "missing (NCCL_NET_PLUGIN='${NCCL_NET_PLUGIN:-}'): 'module load rccl-net-plugin' (after rocm) failed?" \
                 "Stopping instead of running RCCL over TCP sockets." >&2
            eval "$_geofm_u"
            return 1 2>/dev/null || exit 1
        fi
        export NCCL_NET=OFI
    else
        export NCCL_NET=${NCCL_NET:-Socket}
    fi
elif [ -z "${NCCL_NET_PLUGIN:-}" ]; then
    echo "envs/frontier/env.sh: NCCL_NET_PLUGIN is not set (module rccl-net-plugin); multi-node jobs will stop" >&2
fi

# --- MIOpen kernel caches in node-local /tmp (the default ~/.cache on NFS locks up at scale);
# created on every node of the job (envs/lib/node-dirs.sh)
. "$_geofm_repo/envs/lib/node-dirs.sh"
export MIOPEN_USER_DB_PATH=/tmp/${USER:-$(id -un)}-miopen-${SLURM_JOB_ID:-login}
export MIOPEN_CUSTOM_CACHE_DIR=$MIOPEN_USER_DB_PATH
[ -z "${SLURM_JOB_ID:-}" ] || geofm_node_dirs "$MIOPEN_USER_DB_PATH"

export GEOFM_SITE=frontier
eval "$_geofm_u"
unset _geofm_env_dir _geofm_repo _geofm_u _m
