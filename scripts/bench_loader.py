#!/usr/bin/env python
"""Benchmark: shard loader vs per-sample PIL decoding, both with MAE augmentations, images/s per worker.

Every pipeline runs in this one process with ``torch.set_num_threads(1)`` (what one DataLoader worker gets),
interleaved batch by batch so that load from other processes hits all of them alike.  Per case (dataset,
tile size -> output size):

- ``shards``: ``geofm.data.loader.StepBatches`` (the trainer's loader) over tiles made by ``tile_dataset``
  (memmapped uint8 shards): per-sample
  RandomResizedCrop(0.2-1) cut + antialiased bilinear resize *on uint8* (torch's vectorised uint8 kernel),
  flip, then one float conversion + normalisation -> float32 batch.  This is the whole CPU pipeline.
- ``shards, augment_on_device=normalize``: the CPU part only (crop/resize/flip in uint8; the uint8 batch
  would go to the GPU, where float conversion + normalisation run).
- ``shards, augment_on_device=all``: the CPU part only (memmap gather + drawing the crop/flip parameters).
- ``pil``: decode each original TIFF/JPEG with PIL, torchvision.transforms.v2 RandomResizedCrop(0.2-1,
  antialias) + RandomHorizontalFlip on the uint8 image, then ToDtype(float) + Normalize, per sample, then
  stack into a batch (the usual torchvision recipe; the ratio is against this one).
- ``pil (float first)``: the same with ToDtype before the crop (what a careless pipeline does), for reference.

Usage: ``python scripts/bench_loader.py [--ucmerced shared/data/ucmerced_subset.zip]
[--eurosat shared/data/eurosat_rgb_subset.zip] [--batches 8]``.  Cases whose archive is missing are skipped.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def _shared(name: str) -> Path:
    for c in (REPO / "shared/data" / name, REPO.parent / "shared/data" / name):
        if c.exists():
            return c
    return REPO / "shared/data" / name


def run_case(archive: Path, fmt: str, tile_size: int, image_size: int, batch_size: int, n_batches: int) -> dict:
    import torch
    from PIL import Image
    from torchvision.transforms import v2

    from geofm.data.loader import StepBatches
    from geofm.data.tiling import IMAGE_SUFFIXES, safe_extract, tile_dataset

    n_images = n_batches * batch_size
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        raw = td / "raw"
        raw.mkdir()
        shutil.copy(archive, raw / archive.name)
        t0 = time.perf_counter()
        stats = tile_dataset("bench", {"format": fmt, "tile_size": tile_size}, raw, td / "tiles")
        t_tile = time.perf_counter() - t0
        files = sorted(p for p in safe_extract(archive, td / "x").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)

        loaders = {stage: StepBatches(td / "tiles", batch_size, image_size, seed=0, augment=True, split=None,
                                      steps=10**9, augment_on_device=stage) for stage in ("none", "normalize", "all")}

        def batches(loader):  # the worker side: one step's batch after the other
            step = 0
            while True:
                yield loader.batch(step)
                step += 1

        rrc = dict(scale=(0.2, 1.0), antialias=True)
        tf = v2.Compose([v2.ToImage(), v2.RandomResizedCrop(image_size, **rrc), v2.RandomHorizontalFlip(),
                         v2.ToDtype(torch.float32, scale=True), v2.Normalize(stats["mean"], stats["std"])])
        tf_float = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                               v2.RandomResizedCrop(image_size, **rrc), v2.RandomHorizontalFlip(),
                               v2.Normalize(stats["mean"], stats["std"])])

        def pil_batch(t, k):
            out = []
            for j in range(batch_size):
                with Image.open(files[(k * batch_size + j) % len(files)]) as im:
                    out.append(t(im.convert("RGB")))
            return torch.stack(out)

        pipes = {f"shards, CPU augment+normalise ({tile_size}->{image_size} px)": (lambda it: lambda k: next(it))(
                     batches(loaders["none"])),
                 "shards, augment_on_device=normalize (CPU part)": (lambda it: lambda k: next(it))(
                     batches(loaders["normalize"])),
                 "shards, augment_on_device=all (CPU part)": (lambda it: lambda k: next(it))(batches(loaders["all"])),
                 "PIL decode per sample + v2 RRC/flip uint8, then float+normalise": lambda k: pil_batch(tf, k),
                 "PIL decode per sample, float first (reference)": lambda k: pil_batch(tf_float, k)}
        for fn in pipes.values():  # warm-up (page cache, kernels)
            fn(0)
        times = dict.fromkeys(pipes, 0.0)
        for k in range(n_batches):
            for name, fn in pipes.items():
                t0 = time.perf_counter()
                fn(k + 1)
                times[name] += time.perf_counter() - t0
        # same result whether finished on the CPU or on "the device" (here: the CPU again)
        same = torch.equal(loaders["none"].batch(0), loaders["all"].batch(0).to("cpu"))
    return {"archive": archive.name, "n_files": len(files), "fmt": fmt, "t_tile": t_tile, "n_images": n_images,
            "rates": {name: n_images / t for name, t in times.items()}, "same": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ucmerced", type=Path, default=_shared("ucmerced_subset.zip"))
    ap.add_argument("--eurosat", type=Path, default=_shared("eurosat_rgb_subset.zip"))
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = one loader worker)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    cases = [(args.ucmerced, "ucmerced_zip", 256, args.image_size),
             (args.eurosat, "eurosat_zip", 64, args.image_size),
             (args.eurosat, "eurosat_zip", 64, 64)]
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"torch threads {args.threads}, batch {args.batch_size} x {args.batches} batches per pipeline")
    for archive, fmt, tile, out in cases:
        if not archive.exists():
            print(f"\n[{fmt}] {archive} not found: skipped")
            continue
        r = run_case(archive, fmt, tile, out, args.batch_size, args.batches)
        rates = list(r["rates"].items())
        base = rates[3][1]
        print(f"\n[{r['archive']}: {r['n_files']} images, {fmt}, tile {tile} px -> {out} px; tiling took "
              f"{r['t_tile']:.1f}s]")
        for name, ips in rates:
            print(f"  {name:<66s} {ips:9.0f} images/s per worker  ({ips / base:5.2f}x PIL)")
        print(f"  CPU-finished and device-finished (augment_on_device=all) batches identical: {r['same']}")
        need = 8200 / 16
        print(f"  goal 8,200 images/s on 16 cores = {need:.0f} per core: full CPU path "
              f"{'meets' if rates[0][1] >= need else 'misses'} it ({rates[0][1]:.0f}/core)")


if __name__ == "__main__":
    main()
