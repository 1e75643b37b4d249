#!/usr/bin/env bash
# Create the GeoFM-Scale venv on OLCF Frontier: cray-python + a ROCm build of torch + this package
# (editable). Run once, on a login node, from the repository (on Orion, see README):
#   bash envs/frontier/setup-venv.sh                 # venv in $GEOFM_VENV (default ./.venv-frontier)
# Versions (OLCF, "PyTorch on Frontier", Installing PyTorch): torch 2.10.0 + torchvision 0.25.0 from the
# ROCm 7.1 wheel index with the rocm/7.1.1 module -- inside pyproject.toml's torch range (>=2.6,<=2.14.1).
# The old default, whl/rocm6.2, carries torch <= 2.5 only: pip then took a CUDA torch from PyPI and the HIP
# check below failed. The network plugin comes from the rccl-net-plugin module (modules.txt); no hand
# build of aws-ofi-rccl any more.
# Knobs: GEOFM_VENV, TORCH_INDEX (default https://download.pytorch.org/whl/rocm7.1; must match the rocm
# module in modules.txt), TORCH_VERSION (default 2.10.0), TORCHVISION_VERSION (default 0.25.0).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
GEOFM_VENV=${GEOFM_VENV:-$repo/.venv-frontier}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/rocm7.1}
TORCH_VERSION=${TORCH_VERSION:-2.10.0}
TORCHVISION_VERSION=${TORCHVISION_VERSION:-0.25.0}

set +u
while read -r m; do
    case "$m" in '' | '#'*) continue ;; esac
    module load "$m"
done <"$here/modules.txt"
set -u
# a non-default CPE (cpe/26.03): its libraries first, as OLCF's PyTorch page does
export LD_LIBRARY_PATH=${CRAY_LD_LIBRARY_PATH:-}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

if [ ! -x "$GEOFM_VENV/bin/python" ]; then
    python3 -m venv "$GEOFM_VENV"
fi
. "$GEOFM_VENV/bin/activate"
python -m pip install --upgrade pip wheel
python -m pip install --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
# the package itself, without letting pip swap the ROCm torch for a CUDA one from PyPI
python -m pip install -e "$repo" snakemake==9.27.1 snakemake-executor-plugin-slurm==2.8.0
python - <<'PY'
import torch
print("torch", torch.__version__, "HIP", torch.version.hip)
assert torch.version.hip, "not a ROCm build of torch: check TORCH_INDEX"
PY

echo "venv ready: source envs/frontier/env.sh (GEOFM_VENV=$GEOFM_VENV)"
