"""Hardware metrics: peak-FLOP table, MFU, memory, a JSONL + TensorBoard writer, a Slurm-friendly progress line."""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

from ..profile.peaks import identify, peak


def device_name(device: torch.device) -> str:
    """Peak-table key of the device (``geofm.profile.peaks``: H100_SXM, H100_PCIE, MI250X_GCD, ...), its own
    name where the table has no row, ``CPU`` on the CPU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        arch = getattr(torch.cuda.get_device_properties(device), "gcnArchName", "") or ""
        return identify(name, arch) or name
    return "CPU"


_CPU_PEAK: dict[str, float] = {}


def measured_cpu_peak_tflops(dtype=torch.float32, n: int = 1024, repeats: int = 5) -> float:
    """The CPU has no data-sheet number here: measure a square-matmul roof once per process."""
    key = str(dtype)
    if key not in _CPU_PEAK:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        _CPU_PEAK[key] = 2 * n**3 / best / 1e12
    return _CPU_PEAK[key]


def peak_tflops(device: torch.device, precision: str = "bf16") -> tuple[float, str]:
    """(peak TFLOP/s, where the number comes from): the data-sheet table for known devices, a measured
    matmul roof elsewhere (the CPU). ``fp32`` is plain fp32 (TF32 stays off, PyTorch's default)."""
    name = device_name(device)
    try:
        return peak(name, precision)
    except KeyError:
        pass
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return measured_cpu_peak_tflops(dtype), f"{name} measured matmul roof ({precision})"


def mfu(flops_per_s: float, peak_tflops_value: float) -> float:
    return flops_per_s / (peak_tflops_value * 1e12) if peak_tflops_value > 0 else float("nan")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_rss_gb() -> float:
    """The peak resident set of this process over its whole life (getrusage ``ru_maxrss``, kB on Linux): the
    interpreter, libraries and data included, and it cannot be reset, so it is not the memory of a step."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def peak_memory_gb(device: torch.device) -> dict:
    """Peak memory, each figure what its name says. On a GPU ``peak_mem_gb`` is the peak allocated by tensors
    and ``peak_reserved_gb`` the peak held by PyTorch's caching allocator, since :func:`reset_peak_memory`. The
    CPU has no such counters: both are None (n/a) there. ``peak_rss_gb`` is the host process's lifetime peak
    RSS (:func:`peak_rss_gb`) on either."""
    if device.type == "cuda":
        return {"peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30,
                "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / 2**30, "peak_rss_gb": peak_rss_gb()}
    return {"peak_mem_gb": None, "peak_reserved_gb": None, "peak_rss_gb": peak_rss_gb()}


class MetricsWriter:
    """Per-step JSONL (the source of truth), the same scalars as TensorBoard events when available."""

    def __init__(self, path: Path, enabled: bool = True, tensorboard: bool = True, append: bool = False):
        self.enabled = enabled
        self.path = Path(path)
        self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a" if append else "w", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.path.parent / "tensorboard"))
            except Exception:  # tensorboard is optional  # noqa: BLE001
                self.tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record.get("step", 0))

    def close(self) -> None:
        if self.enabled:
            self.fh.close()
            if self.tb is not None:
                self.tb.close()


def progress_line(step: int, total: int, loss: float, ips: float, mfu_value: float, elapsed: float) -> str:
    """One self-contained line per report (no carriage returns): readable in a Slurm log."""
    left = elapsed / max(step, 1) * (total - step)
    return (f"step {step:>6}/{total}  loss {loss:.4f}  {ips:9.1f} img/s  MFU {100 * mfu_value:5.1f}%  "
            f"elapsed {elapsed / 60:6.1f} min  left {left / 60:6.1f} min")


def log(msg: str) -> None:
    print(msg, file=sys.stderr if os.environ.get("GEOFM_LOG_STDERR") else sys.stdout, flush=True)
