#!/usr/bin/env bash
# Create the GeoFM-Scale venv on OLCF Frontier: cray-python + a ROCm build of torch + this package
# (editable), and optionally build the aws-ofi-rccl plugin. Run once, on a login node, from the repo:
#   bash envs/frontier/setup-venv.sh                 # venv in $GEOFM_VENV (default ./.venv-frontier)
#   BUILD_AWS_OFI_RCCL=1 bash envs/frontier/setup-venv.sh
# Knobs: GEOFM_VENV, TORCH_INDEX (default https://download.pytorch.org/whl/rocm6.2, must match the
# rocm module in modules.txt), TORCH_VERSION (optional pin, e.g. 2.5.1), AWS_OFI_RCCL_DIR.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
GEOFM_VENV=${GEOFM_VENV:-$repo/.venv-frontier}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/rocm6.2}
AWS_OFI_RCCL_DIR=${AWS_OFI_RCCL_DIR:-$repo/.aws-ofi-rccl}

set +u
while read -r m; do
    case "$m" in '' | '#'*) continue ;; esac
    module load "$m"
done <"$here/modules.txt"
set -u

if [ ! -x "$GEOFM_VENV/bin/python" ]; then
    python3 -m venv "$GEOFM_VENV"
fi
. "$GEOFM_VENV/bin/activate"
python -m pip install --upgrade pip wheel
python -m pip install --index-url "$TORCH_INDEX" "torch${TORCH_VERSION:+==$TORCH_VERSION}" torchvision
python -m pip install -e "$repo" snakemake==9.27.1 snakemake-executor-plugin-slurm==2.8.0
python - <<'PY'
import torch
print("torch", torch.__version__, "HIP", torch.version.hip)
assert torch.version.hip, "not a ROCm build of torch: check TORCH_INDEX"
PY

if [ "${BUILD_AWS_OFI_RCCL:-0}" = 1 ] && [ ! -d "$AWS_OFI_RCCL_DIR/lib" ]; then
    # https://github.com/ROCm/aws-ofi-rccl against the system libfabric (cxi) and the module's ROCm
    src=$(mktemp -d)
    git clone --depth 1 https://github.com/ROCm/aws-ofi-rccl "$src/aws-ofi-rccl"
    cd "$src/aws-ofi-rccl"
    ./autogen.sh
    CC=hipcc CFLAGS=-I"$ROCM_PATH/include/rccl" ./configure --prefix="$AWS_OFI_RCCL_DIR" \
        --with-libfabric=/opt/cray/libfabric/"$(ls /opt/cray/libfabric | sort -V | tail -n1)" \
        --with-hip="$ROCM_PATH" --with-rccl="$ROCM_PATH" --disable-tests
    make -j 16 install
    cd "$repo" && rm -rf "$src"
fi
echo "venv ready: source envs/frontier/env.sh (GEOFM_VENV=$GEOFM_VENV)"
