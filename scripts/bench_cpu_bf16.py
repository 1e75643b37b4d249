#!/usr/bin/env python
"""Benchmark: one MAE training step on a CPU core, fp32 against bf16 autocast with PyTorch's attention kernels and
with the explicit attention products that ``geofm.common.precision.bf16_autocast`` runs on CPUs.

Cases (same model, batch, masks and optimizer; interleaved round by round in this one process with
``torch.set_num_threads(1)``, so that other load hits all of them alike):

- ``fp32``: no autocast (PyTorch's default attention kernel);
- ``bf16, default attention``: ``torch.autocast(cpu, bfloat16)`` alone -- PyTorch picks its fused CPU
  attention kernel, whose bf16 backward is the slow part;
- ``bf16, math attention``: autocast with ``sdpa_kernel([SDPBackend.MATH])`` (the project's path until stop 32):
  PyTorch's math path upcasts the attention's products to fp32 and adds its ``_safe_softmax`` checks;
- ``bf16, bf16_autocast``: the project's path (``train_step(..., StepOptions(autocast=True))``): attention as
  explicit bf16 products and a softmax.

Prints ms per step, the ratio to fp32, and the milliseconds per step spent in the fused attention kernel
(forward + backward, from ``torch.profiler``). The matrix products' bf16 speed depends on the CPU: a CPU
without native bf16 dot products (no ``avx512_bf16`` / AMX) may show bf16 slower than fp32.

Usage: ``python scripts/bench_cpu_bf16.py [--model demo_base] [--image-size 32] [--batch 32] [--steps 20]
[--rounds 3] [--decoder-dim 128] [--decoder-depth 4]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo_base")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per case and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--decoder-dim", type=int, default=128)
    ap.add_argument("--decoder-depth", type=int, default=4)
    ap.add_argument("--decoder-heads", type=int, default=4)
    a = ap.parse_args()

    import torch

    from geofm.models.mae import build_mae, materialize
    from geofm.train.pretrain import param_groups
    from geofm.train.step import StepOptions, train_step

    torch.set_num_threads(1)
    x = torch.randn(a.batch, 3, a.image_size, a.image_size, generator=torch.Generator().manual_seed(0))

    def setup():
        m = build_mae(a.model, a.image_size, 3, device="meta", decoder_dim=a.decoder_dim,
                      decoder_depth=a.decoder_depth, decoder_heads=a.decoder_heads)
        materialize(m, "cpu", 0)
        return m, torch.optim.AdamW(param_groups(m, 0.05), lr=1e-4, betas=(0.9, 0.95))

    def plain_bf16_step(m, opt, noise):  # autocast without the backend choice: PyTorch's default kernel
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(x, 0.75, noise)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def math_bf16_step(m, opt, noise):  # stop 31's path: the math backend (fp32 attention products)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with torch.autocast("cpu", dtype=torch.bfloat16), sdpa_kernel([SDPBackend.MATH]):
            loss = m(x, 0.75, noise)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    cases = {
        "fp32": lambda m, o, n: train_step(m, o, x, n, StepOptions(autocast=False)),
        "bf16, default attention": plain_bf16_step,
        "bf16, math attention": math_bf16_step,
        "bf16, bf16_autocast": lambda m, o, n: train_step(m, o, x, n, StepOptions(autocast=True)),
    }
    state = {k: setup() for k in cases}
    n_patch = (a.image_size // __import__("geofm.models.registry", fromlist=["get_spec"]).get_spec(a.model).patch) ** 2
    noise = torch.rand(a.batch, n_patch, generator=torch.Generator().manual_seed(1))
    times = {k: [] for k in cases}
    for k, fn in cases.items():  # warm-up
        for _ in range(3):
            fn(*state[k], noise)
    for _ in range(a.rounds):
        for k, fn in cases.items():
            t = time.perf_counter()
            for _ in range(a.steps):
                fn(*state[k], noise)
            times[k].append((time.perf_counter() - t) / a.steps)
    fused = {}
    from torch.profiler import ProfilerActivity, profile

    for k, fn in cases.items():
        with profile(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(3):
                fn(*state[k], noise)
        fused[k] = sum(e.self_cpu_time_total for e in p.key_averages()
                       if "flash_attention_for_cpu" in e.key) / 3 / 1000
    base = min(times["fp32"])
    print(f"{a.model}, {a.image_size} px, batch {a.batch}, one thread; best of {a.rounds} rounds of {a.steps} steps")
    print(f"{'case':26s} {'ms/step':>8s} {'fp32/case':>10s} {'fused attention ms/step':>24s}")
    for k in cases:
        best = min(times[k])
        print(f"{k:26s} {best * 1000:8.1f} {base / best:10.2f} {fused[k]:24.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
