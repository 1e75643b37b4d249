# GeoFM-Scale site environment for a generic Slurm + NVIDIA cluster. bash only.
#   - on the login node, before `snakemake --profile profiles/slurm-cuda ...`: source envs/slurm-cuda/env.sh
#   - in the jobs: pretrain/profile/evaluate source it first (resource site_env in profiles/slurm-cuda).
# Knobs: GEOFM_MODULES (space-separated modules to load, e.g. "cuda/12.4 nccl"), GEOFM_VENV (a venv
# with a CUDA build of torch + `pip install -e .`; default <repo>/.venv-cuda if present),
# GEOFM_NCCL_IFNAME (the high-speed interface for NCCL/gloo bootstrap, e.g. ib0; default: NCCL picks).
_geofm_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
_geofm_u=$(set +o | grep nounset); set +u
if [ -n "${GEOFM_MODULES:-}" ] && command -v module >/dev/null 2>&1; then
    for _m in $GEOFM_MODULES; do module load "$_m" || echo "envs/slurm-cuda/env.sh: module load $_m failed" >&2; done
fi
export GEOFM_VENV=${GEOFM_VENV:-$_geofm_repo/.venv-cuda}
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f "$GEOFM_VENV/bin/activate" ]; then . "$GEOFM_VENV/bin/activate"; fi
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
[ -z "${GEOFM_NCCL_IFNAME:-}" ] || export NCCL_SOCKET_IFNAME=$GEOFM_NCCL_IFNAME GLOO_SOCKET_IFNAME=$GEOFM_NCCL_IFNAME
# compile caches (pretrain.compile: true) in node-local /tmp on every node of the job
. "$_geofm_repo/envs/lib/node-dirs.sh"
export TORCHINDUCTOR_CACHE_DIR=/tmp/${USER:-$(id -un)}-inductor-${SLURM_JOB_ID:-login}
export TRITON_CACHE_DIR=$TORCHINDUCTOR_CACHE_DIR/triton
[ -z "${SLURM_JOB_ID:-}" ] || geofm_node_dirs "$TORCHINDUCTOR_CACHE_DIR"
export GEOFM_SITE=slurm-cuda
eval "$_geofm_u"
unset _geofm_repo _geofm_u _m
