# GeoFM-Scale site environment for OLCF Frontier (MI250X, Slingshot-11). bash only.
#   - on a login node, once per shell, before `snakemake --profile profiles/frontier ...`:
#       source envs/frontier/env.sh
#   - in the jobs: pretrain/profile/evaluate source it first (profiles/frontier sets the resource
#     site_env=envs/frontier/env.sh; local runs source nothing).
# Knobs (export before sourcing): GEOFM_VENV (default <repo>/.venv-frontier, made by setup-venv.sh),
# AWS_OFI_RCCL_DIR (the aws-ofi-rccl plugin install prefix; default <repo>/.aws-ofi-rccl if present).
_geofm_env_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
_geofm_repo=$(cd "$_geofm_env_dir/../.." && pwd)
_geofm_u=$(set +o | grep nounset); set +u     # module/Lmod scripts use unset variables

# --- modules
if command -v module >/dev/null 2>&1; then
    while read -r _m; do
        case "$_m" in '' | '#'*) continue ;; esac
        module load "$_m" >/dev/null 2>&1 || echo "envs/frontier/env.sh: module load $_m failed" >&2
    done <"$_geofm_env_dir/modules.txt"
fi

# --- Python: the venv with the ROCm build of torch (envs/frontier/setup-venv.sh)
export GEOFM_VENV=${GEOFM_VENV:-$_geofm_repo/.venv-frontier}
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f "$GEOFM_VENV/bin/activate" ]; then . "$GEOFM_VENV/bin/activate"; fi

# --- RCCL over Slingshot: libfabric cxi provider through the aws-ofi-rccl plugin
export AWS_OFI_RCCL_DIR=${AWS_OFI_RCCL_DIR:-$_geofm_repo/.aws-ofi-rccl}
if [ -d "$AWS_OFI_RCCL_DIR/lib" ]; then
    case ":${LD_LIBRARY_PATH:-}:" in *":$AWS_OFI_RCCL_DIR/lib:"*) ;;
        *) export LD_LIBRARY_PATH=$AWS_OFI_RCCL_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} ;; esac
else
    echo "envs/frontier/env.sh: no aws-ofi-rccl plugin in $AWS_OFI_RCCL_DIR/lib; RCCL will fall back to TCP sockets (slow)" >&2
fi
export NCCL_SOCKET_IFNAME=hsn0          # RCCL bootstrap on the high-speed network
export GLOO_SOCKET_IFNAME=hsn0
export FI_PROVIDER=cxi
export NCCL_NET_GDR_LEVEL=3             # GPU-direct RDMA between GCDs and NICs (PHB)
export NCCL_CROSS_NIC=1
export FI_CXI_ATS=0
export FI_MR_CACHE_MONITOR=${FI_MR_CACHE_MONITOR:-kdreg2}
export FI_CXI_DEFAULT_CQ_SIZE=131072
export FI_CXI_DEFAULT_TX_SIZE=2048
export FI_CXI_RX_MATCH_MODE=hybrid
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export HSA_FORCE_FINE_GRAIN_PCIE=1

# --- MIOpen kernel caches in node-local /tmp (the default ~/.cache on NFS locks up at scale);
# created on every node of the job (envs/lib/node-dirs.sh)
. "$_geofm_repo/envs/lib/node-dirs.sh"
export MIOPEN_USER_DB_PATH=/tmp/${USER:-$(id -un)}-miopen-${SLURM_JOB_ID:-login}
export MIOPEN_CUSTOM_CACHE_DIR=$MIOPEN_USER_DB_PATH
[ -z "${SLURM_JOB_ID:-}" ] || geofm_node_dirs "$MIOPEN_USER_DB_PATH"

export GEOFM_SITE=frontier
eval "$_geofm_u"
unset _geofm_env_dir _geofm_repo _geofm_u _m
