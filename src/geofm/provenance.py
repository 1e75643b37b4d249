"""Where a result came from: the code's git commit, the config fingerprint and the software/device versions.

``provenance(fingerprint)`` is the ``provenance`` entry of every result JSON (pretraining ``summary.json``,
evaluation ``results/eval/...json``, profile cells). The config fingerprint is the digest of what determined the
result: the training fingerprint for pretraining (``geofm.train.fingerprint``), and for evaluation and profiling
the digest of the rule's params (``geofm.config.rule_params``), the same values Snakemake's params trigger sees.
"""
from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path


def _git(args: list[str], where: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_state() -> dict:
    """The commit of the checkout the ``geofm`` code runs from (an editable install: the repository; else the
    working directory), and whether tracked files differ from it."""
    for where in (Path(__file__).resolve().parent, Path.cwd()):
        commit = _git(["rev-parse", "HEAD"], where)
        if commit:
            dirty = _git(["status", "--porcelain", "--untracked-files=no"], where)
            return {"commit": commit, "dirty": bool(dirty)}
    return {"commit": None, "dirty": None}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def software() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": _version("timm"),
            "snakemake": _version("snakemake"), "geofm_scale": _version("geofm-scale"),
            "platform": platform.platform()}


@functools.lru_cache(maxsize=1)
def device_stack() -> dict:
    """The accelerator's runtime (CUDA / HIP, cuDNN, NCCL) and driver; ``None`` where there is none."""
    import torch

    out: dict = {"cuda_runtime": torch.version.cuda, "hip_runtime": getattr(torch.version, "hip", None),
                 "cudnn": None, "nccl": None, "driver": None, "gpu": None}
    if not torch.cuda.is_available():
        return out
    out["gpu"] = torch.cuda.get_device_name(0)
    if torch.backends.cudnn.is_available():
        out["cudnn"] = torch.backends.cudnn.version()
    try:
        out["nccl"] = ".".join(str(v) for v in torch.cuda.nccl.version())
    except Exception:  # noqa: BLE001 - a build without NCCL/RCCL
        pass
    if out["hip_runtime"]:
        amdgpu = Path("/sys/module/amdgpu/version")  # the kernel driver's version on ROCm hosts
        out["driver"] = amdgpu.read_text().strip() if amdgpu.exists() else None
    else:
        try:
            import pynvml

            pynvml.nvmlInit()
            drv = pynvml.nvmlSystemGetDriverVersion()
            out["driver"] = drv.decode() if isinstance(drv, bytes) else drv
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - no NVML on this host
            pass
    return out


def provenance(fingerprint: str | None) -> dict:
    return {"git": git_state(), "config_fingerprint": fingerprint, "software": software(),
            "device": device_stack()}
