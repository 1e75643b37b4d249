#!/usr/bin/env python
"""Benchmark: how far one MAE training step on a CPU is from its matrix products' own speed, and what that
bounds a recipe's pretraining time to.

Measured in this one process, on ``--threads`` intra-op threads (the config's ``threads_per_rank``):

1. the step as pretraining runs it (``train_step`` with bf16 autocast, or fp32 with ``--fp32``; the fused
   AdamW of ``make_adamw``), ms per step, median over rounds;
2. the same step under ``torch.profiler`` with shapes recorded: the time its matrix products (``aten::mm``,
   ``addmm``, ``bmm``) take inside it, and the rest (element-wise kernels, casts, the optimizer, dispatch);
3. each of those products again, alone, on tensors of the same shapes (in bf16 under autocast), repeated: their sum per step
   is the step's time if everything but the matrix products were free (the roofline of this CPU for these
   shapes, as far as PyTorch's eager GEMM calls reach it).

Prints the three, the step's GFLOP (``geofm.train.flops``) and achieved GFLOP/s, and each projected to
``--recipe-steps`` steps in minutes: the lower bound on pretraining that recipe on this machine without
changing what it computes. The products' layouts (transposed or not) are not reproduced in 3, only their
shapes, so 3 is an estimate of the same kernels' speed, not the kernels themselves.

Usage: ``python scripts/bench_step_bound.py [--model demo_base] [--image-size 32] [--batch 32] [--threads 2]
[--decoder-dim 128] [--decoder-depth 4] [--decoder-heads 4] [--steps 25] [--rounds 3] [--recipe-steps 5000]
[--fp32]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo_base")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decoder-dim", type=int, default=128)
    ap.add_argument("--decoder-depth", type=int, default=4)
    ap.add_argument("--decoder-heads", type=int, default=4)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--steps", type=int, default=25, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--recipe-steps", type=int, default=5000, help="steps to project the times to")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    a = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from geofm.models.mae import build_mae, materialize
    from geofm.models.registry import num_patches
    from geofm.train.flops import mae_train_flops_per_image
    from geofm.train.pretrain import make_adamw, param_groups
    from geofm.train.step import StepOptions, train_step

    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 3, a.image_size, a.image_size, generator=gen)
    noise = torch.rand(a.batch, num_patches(a.model, a.image_size), generator=gen)
    m = build_mae(a.model, a.image_size, 3, device="meta", decoder_dim=a.decoder_dim,
                  decoder_depth=a.decoder_depth, decoder_heads=a.decoder_heads)
    materialize(m, "cpu", 0)
    opt = make_adamw(param_groups(m, 0.05), torch.device("cpu"), 1e-4, (0.9, 0.95))
    so = StepOptions(mask_ratio=a.mask_ratio, autocast=not a.fp32)

    def step():
        train_step(m, opt, x, noise, so)

    for _ in range(5):
        step()

    # 2: the products inside the step, with their shapes
    n_prof = 10
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(n_prof):
            step()
    in_step_us = 0.0
    shapes: Counter = Counter()
    for ev in prof.events():
        if ev.name in MATMULS:
            in_step_us += ev.self_cpu_time_total
            shapes[(ev.name, tuple(tuple(s) for s in ev.input_shapes if s))] += 1
    in_step_ms = in_step_us / 1e3 / n_prof

    # 3: each product alone, same shapes and dtype
    # under bf16 autocast every product of the step runs in bf16 (tests/unit/test_step.py checks the attention's)
    dt = torch.float32 if a.fp32 else torch.bfloat16

    def alone_ms(name, dims) -> float:
        if name == "aten::addmm":
            bias, a_, b_ = dims[-3:]
            args = (torch.randn(bias, dtype=dt), torch.randn(a_, dtype=dt), torch.randn(b_, dtype=dt))
            fn = lambda: torch.addmm(*args)  # noqa: E731
        elif name == "aten::mm":
            args = (torch.randn(dims[0], dtype=dt), torch.randn(dims[1], dtype=dt))
            fn = lambda: torch.mm(*args)  # noqa: E731
        else:
            args = (torch.randn(dims[0], dtype=dt), torch.randn(dims[1], dtype=dt))
            fn = lambda: torch.bmm(*args)  # noqa: E731
        for _ in range(5):
            fn()
        reps = 50
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / reps * 1e3

    bound_ms = sum(count / n_prof * alone_ms(*key) for key, count in shapes.items())

    # 1: the step as pretraining runs it, interleaved with nothing but itself
    per_round = []
    for _ in range(a.rounds):
        t = time.perf_counter()
        for _ in range(a.steps):
            step()
        per_round.append((time.perf_counter() - t) / a.steps * 1e3)
    step_ms = statistics.median(per_round)

    gflop = mae_train_flops_per_image(a.model, a.image_size, 3, a.mask_ratio, a.decoder_dim,
                                      a.decoder_depth) * a.batch / 1e9
    minutes = lambda ms: ms * a.recipe_steps / 6e4  # noqa: E731
    prec = "fp32" if a.fp32 else "bf16 autocast"
    print(f"{a.model}, {a.image_size} px, batch {a.batch}, decoder {a.decoder_depth} x {a.decoder_dim}, {prec}, "
          f"{a.threads} thread(s); {gflop:.2f} GFLOP a step; {len(shapes)} product shapes")
    print(f"  the step               {step_ms:7.1f} ms  {gflop / step_ms * 1e3:6.0f} GFLOP/s  "
          f"{minutes(step_ms):5.2f} min for {a.recipe_steps} steps  (rounds: "
          + ", ".join(f"{v:.1f}" for v in per_round) + ")")
    print(f"  its products, in step  {in_step_ms:7.1f} ms  {gflop / in_step_ms * 1e3:6.0f} GFLOP/s  "
          f"{minutes(in_step_ms):5.2f} min  ({in_step_ms / step_ms:.0%} of the step)")
    print(f"  the same products alone {bound_ms:6.1f} ms  {gflop / bound_ms * 1e3:6.0f} GFLOP/s  "
          f"{minutes(bound_ms):5.2f} min  (the step is {step_ms / bound_ms:.2f}x this bound)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
