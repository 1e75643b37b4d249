"""Dense matrix peak per device and dtype, TFLOP/s: the one table that MFU, the profile and `geofm plan` read.

Numbers are the vendors' dense (no structured sparsity) tensor/matrix-core peaks:

- MI250X GCD: AMD Instinct MI250X data sheet (amd.com, "AMD Instinct MI250X Accelerator"): 383 TF/s bf16/fp16
  and 95.7 TF/s fp32 *matrix* per OAM package of two GCDs; one GCD (what Frontier's user sees as a GPU) has half:
  191.5 bf16, 47.9 fp32. Not half of bf16: CDNA2 runs fp32 on its matrix cores at a quarter of bf16.
- A100 (SXM4 and PCIe alike): NVIDIA A100 Tensor Core GPU data sheet: 312 bf16, 156 tf32, 19.5 fp32.
- H100 SXM5: NVIDIA H100 Tensor Core GPU data sheet: 989.4 bf16 (1,979 with sparsity), 494.7 tf32, 66.9 fp32.
- H100 PCIe: same data sheet: 756.5 bf16, 378 tf32, 51.2 fp32 (lower clocks and 114 SMs).
- H100 NVL: same data sheet: 835.5 bf16, 417.5 tf32, 60 fp32 (per GPU of the pair).
- H200 SXM: NVIDIA H200 data sheet: 989.4 bf16, 494.7 tf32, 66.9 fp32 (H100 SXM compute, more HBM).
- H200 NVL: same data sheet: 835.5 bf16, 417.5 tf32, 60 fp32.

``precision: fp32`` here is plain fp32: PyTorch leaves ``torch.backends.cuda.matmul.allow_tf32`` off by
default, so an fp32 run on an H100 is measured against 66.9, not the tf32 494.7 (``tf32`` is in the table for
a run that turns TF32 on). On the MI250X fp32 matmuls run on the matrix cores (47.9).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MI250X_SOURCE = "AMD Instinct MI250X data sheet (per OAM: 383 bf16, 95.7 fp32 matrix; one GCD = half)"
A100_SOURCE = "NVIDIA A100 Tensor Core GPU data sheet (dense)"
H100_SOURCE = "NVIDIA H100 Tensor Core GPU data sheet (dense)"
H200_SOURCE = "NVIDIA H200 Tensor Core GPU data sheet (dense)"


@dataclass(frozen=True)
class DevicePeak:
    key: str
    bf16: float
    tf32: float | None
    fp32: float
    source: str
    hbm_gb: float
    hbm_tb_s: float  # memory bandwidth, TB/s (the optimizer step is memory-bound)

    def tflops(self, precision: str) -> float:
        if precision in ("bf16", "fp16"):
            return self.bf16
        if precision == "tf32":
            if self.tf32 is None:
                raise KeyError(f"{self.key} has no tf32 mode")
            return self.tf32
        if precision == "fp32":
            return self.fp32
        raise KeyError(f"unknown precision {precision!r} (bf16, fp16, tf32, fp32)")


DEVICES: dict[str, DevicePeak] = {
    "MI250X_GCD": DevicePeak("MI250X_GCD", 191.5, None, 47.9, MI250X_SOURCE, 64, 1.6),
    "A100_SXM": DevicePeak("A100_SXM", 312.0, 156.0, 19.5, A100_SOURCE, 80, 2.039),
    "A100_PCIE": DevicePeak("A100_PCIE", 312.0, 156.0, 19.5, A100_SOURCE, 80, 1.935),
    "H100_SXM": DevicePeak("H100_SXM", 989.4, 494.7, 66.9, H100_SOURCE, 80, 3.35),
    "H100_PCIE": DevicePeak("H100_PCIE", 756.5, 378.0, 51.2, H100_SOURCE, 80, 2.0),
    "H100_NVL": DevicePeak("H100_NVL", 835.5, 417.5, 60.0, H100_SOURCE, 94, 3.9),
    "H200_SXM": DevicePeak("H200_SXM", 989.4, 494.7, 66.9, H200_SOURCE, 141, 4.8),
    "H200_NVL": DevicePeak("H200_NVL", 835.5, 417.5, 60.0, H200_SOURCE, 141, 4.8),
}


def identify(name: str, arch: str = "") -> str | None:
    """Table key of a device from its marketing name (``torch.cuda.get_device_name``) and, on ROCm, its
    gfx architecture; ``None`` for a device without a data-sheet row (the caller measures a roof instead).

    ``NVIDIA H100 PCIe`` -> H100_PCIE, ``NVIDIA H100 NVL`` -> H100_NVL, ``NVIDIA H100 80GB HBM3`` (the SXM
    board's name) -> H100_SXM; a PCIe board never gets the SXM peak.
    """
    n = name.upper()
    for chip in ("H200", "H100", "A100"):
        if re.search(rf"\b{chip}\b", n) or chip in n:
            if "PCIE" in n:
                form = "PCIE" if f"{chip}_PCIE" in DEVICES else "SXM"
            elif "NVL" in n:
                form = "NVL" if f"{chip}_NVL" in DEVICES else "SXM"
            else:
                form = "SXM"
            return f"{chip}_{form}"
    if "MI250X" in n or "MI250" in n or "gfx90a" in arch:
        return "MI250X_GCD"
    return None


def peak(key: str, precision: str) -> tuple[float, str]:
    """(TFLOP/s, source) of a table device at ``precision`` (bf16 | fp16 | tf32 | fp32)."""
    try:
        d = DEVICES[key]
    except KeyError:
        raise KeyError(f"no peak table entry {key!r}; known: {', '.join(DEVICES)}") from None
    return d.tflops(precision), f"{key} {precision} dense: {d.source}"
