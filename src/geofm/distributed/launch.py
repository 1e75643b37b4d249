"""Rank discovery and process-group setup that works under torchrun, under Slurm's srun, and alone.

Order of precedence: torchrun's ``RANK/LOCAL_RANK/WORLD_SIZE``; else Slurm's ``SLURM_PROCID/SLURM_LOCALID/
SLURM_NTASKS`` (the master address is the first host of ``SLURM_JOB_NODELIST``, expanded with
``scontrol show hostnames`` or a built-in parser); else a single process. The backend is nccl on GPUs
(which is RCCL on ROCm builds of torch) and gloo on CPU.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import socket
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

# torch is imported where a device or process group is made, not here: the CLI reads the launch environment
# (detect) before it re-launches itself as ranks, and that process has no use for torch
if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm hostlist such as ``frontier[00001-00003,00007],login1`` without Slurm tools."""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?", nodelist):
        part = part.strip(",")
        m = re.match(r"^(.*)\[(.*)\]$", part)
        if not m:
            if part:
                hosts.append(part)
            continue
        prefix, ranges = m.groups()
        for r in ranges.split(","):
            if "-" in r:
                lo, hi = r.split("-")
                hosts.extend(f"{prefix}{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1))
            else:
                hosts.append(prefix + r)
    return hosts


def first_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return expand_nodelist(nodelist)[0]


def detect(env: dict | None = None) -> DistEnv:
    env = dict(os.environ if env is None else env)
    port = int(env.get("MASTER_PORT", 29500))
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]),
                       env.get("MASTER_ADDR", "127.0.0.1"), port, "torchrun")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or socket.gethostname()
        addr = env.get("MASTER_ADDR") or first_host(nodelist)
        if "MASTER_PORT" not in env and "SLURM_JOB_ID" in env:
            port = 20000 + int(env["SLURM_JOB_ID"]) % 20000  # distinct per job on shared nodes
        return DistEnv(int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), int(env["SLURM_NTASKS"]),
                       addr, port, "slurm")
    return DistEnv()


def device_for(local_rank: int, want: str = "auto") -> "torch.device":
    """CUDA and ROCm builds both expose ``torch.cuda``; one device per local rank."""
    import torch

    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    n = torch.cuda.device_count()
    if n == 0:
        raise RuntimeError("device 'cuda' requested but no GPU is visible (CUDA_VISIBLE_DEVICES/ROCR_VISIBLE_DEVICES?)")
    # with Slurm's --gpus-per-task each task may see one device only
    dev = torch.device("cuda", local_rank % n)
    torch.cuda.set_device(dev)
    return dev


def init(device: str = "auto", timeout_s: int = 600) -> tuple[DistEnv, "torch.device"]:
    """Initialise the default process group if there is more than one rank; return (env, device)."""
    import torch.distributed as dist

    de = detect()
    dev = device_for(de.local_rank, device)
    if de.world_size > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", de.master_addr)
        os.environ.setdefault("MASTER_PORT", str(de.master_port))
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=de.rank, world_size=de.world_size,
                                timeout=_dt.timedelta(seconds=timeout_s),
                                init_method=f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}")
    return de, dev


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()



def release() -> None:
    """Free a finished run's FSDP2 modules while the interpreter is whole (the CLI calls this when a command
    returns). They hold their parameters' shards, the pending collectives' work and, through their device mesh,
    the process group, in reference cycles that only the garbage collector frees: left to interpreter
    finalisation, tensors with Python references are destroyed while it is torn down, the SIGABRT that
    pytorch/pytorch PR 179291 describes for gloo ("terminate called without an active exception", exit -6; a
    rank of a 2-rank profile cell aborted so once in a CI suite after its record was written). The device mesh
    itself stays in DTensor's private caches (sharding propagation) until exit; the group it names was shut
    down by destroy_process_group."""
    import gc

    gc.collect()
