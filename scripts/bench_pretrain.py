#!/usr/bin/env python
"""Benchmark (not a test): this project's pretraining step vs a plain timm-block MAE, in one run.

Both sides train the same MAE (timm ``Block`` s, same shapes, same data) with fused AdamW where the
device has it and bf16 autocast; "plain" is that, eager. "geofm" is the engine's configuration:
per-block ``torch.compile`` and, optionally, activation checkpointing. Prints images/s, achieved
TFLOP/s, MFU (against the device's peak table, or a measured matmul roof on CPUs) and the ratio.

    python scripts/bench_pretrain.py                       # CPU: demo sizes
    python scripts/bench_pretrain.py --models vit_base vit_huge vit_1b vit_3b --batch 256 --image-size 224
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from geofm.distributed.parallelize import apply_activation_checkpointing, apply_compile
from geofm.models.mae import build_mae, materialize
from geofm.models.registry import count_params, num_patches
from geofm.train import flops, metrics


def bench(model_name: str, variant: str, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    dd, ddep = args.decoder_dim, args.decoder_depth
    m = build_mae(model_name, args.image_size, 3, device="meta", decoder_dim=dd, decoder_depth=ddep,
                  decoder_heads=max(1, dd // 32))
    if variant == "geofm":
        apply_activation_checkpointing(m, args.ac)
        apply_compile(m)
    materialize(m, device)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    n = num_patches(model_name, args.image_size)
    noise = torch.rand(args.batch, n, device=device)
    times = []
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = m(x, 0.75, noise)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t)
    ips = args.batch / statistics.median(times)
    fl = flops.mae_train_flops_per_image(model_name, args.image_size, 3, 0.75, dd, ddep)
    peak, src = metrics.peak_tflops(device, args.precision)
    out = {"model": model_name, "variant": variant, "params_m": count_params(model_name, args.image_size) / 1e6,
           "images_per_s": ips, "tflops": ips * fl / 1e12, "mfu": metrics.mfu(ips * fl, peak), "peak": src,
           **metrics.peak_memory_gb(device)}
    del m, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["demo_tiny", "demo_small", "demo_base"])
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--decoder-dim", type=int, default=None)
    ap.add_argument("--decoder-depth", type=int, default=None)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default=None)
    ap.add_argument("--ac", type=int, default=0, help="activation checkpointing every n-th block (geofm side)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.precision is None:
        args.precision = "bf16" if device.type == "cuda" else "fp32"
    small = args.image_size <= 64
    args.decoder_dim = args.decoder_dim or (64 if small else 512)
    args.decoder_depth = args.decoder_depth or (2 if small else 8)
    rows = []
    print(f"device {metrics.device_name(device)}  precision {args.precision}  batch {args.batch}  image {args.image_size}")
    print(f"{'model':>12} {'params':>9} {'plain img/s':>12} {'geofm img/s':>12} {'ratio':>6} {'TFLOP/s':>8} {'MFU':>6}")
    for name in args.models:
        try:
            a = bench(name, "plain", args, device)
            b = bench(name, "geofm", args, device)
        except torch.OutOfMemoryError:
            print(f"{name:>12}  does not fit at batch {args.batch}")
            continue
        rows += [a, b]
        print(f"{name:>12} {a['params_m']:8.1f}M {a['images_per_s']:12.1f} {b['images_per_s']:12.1f} "
              f"{b['images_per_s'] / a['images_per_s']:6.2f} {b['tflops']:8.2f} {100 * b['mfu']:5.1f}%")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
