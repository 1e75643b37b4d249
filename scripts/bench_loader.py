#!/usr/bin/env python
"""Benchmark: shard loader vs per-sample PIL decoding, both with MAE augmentations, images/s per worker.

Both pipelines run in one process with ``torch.set_num_threads(1)`` (what one DataLoader worker gets):

- ``shards``: ``geofm.data.loader.make_loader`` over tiles made by ``tile_dataset`` (memmapped uint8 shards,
  batched RandomResizedCrop(0.2-1) + flip with one ``roi_align`` call, normalisation);
- ``pil``: decode each original TIFF/JPEG with PIL, torchvision.transforms.v2 RandomResizedCrop(0.2-1,
  antialias) + RandomHorizontalFlip + Normalize per sample, then stack into a batch.

Usage: ``python scripts/bench_loader.py [--archive shared/data/ucmerced_subset.zip --format ucmerced_zip]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def _default_archive() -> Path:
    for c in (REPO / "shared/data/ucmerced_subset.zip", REPO.parent / "shared/data/ucmerced_subset.zip"):
        if c.exists():
            return c
    return REPO / "shared/data/ucmerced_subset.zip"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, default=_default_archive())
    ap.add_argument("--format", default="ucmerced_zip", choices=["ucmerced_zip", "eurosat_zip"])
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = one loader worker)")
    args = ap.parse_args()

    import shutil

    import torch
    from PIL import Image
    from torchvision.transforms import v2

    from geofm.data.loader import make_loader
    from geofm.data.tiling import IMAGE_SUFFIXES, safe_extract, tile_dataset

    if not args.archive.exists():
        sys.exit(f"archive {args.archive} not found (pass --archive)")
    torch.set_num_threads(args.threads)
    n_images = args.batches * args.batch_size
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        raw = td / "raw"
        raw.mkdir()
        shutil.copy(args.archive, raw / args.archive.name)
        t0 = time.perf_counter()
        stats = tile_dataset("bench", {"format": args.format, "tile_size": args.tile_size}, raw, td / "tiles")
        t_tile = time.perf_counter() - t0
        files = sorted(p for p in safe_extract(args.archive, td / "x").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)

        # --- shard loader batches (cycling epochs)
        loader = make_loader(td / "tiles", None, args.batch_size, args.image_size, seed=0, augment=True)

        def shard_batches():
            epoch = 0
            while True:
                loader.set_epoch(epoch)
                yield from loader
                epoch += 1

        # --- per-sample PIL decode + torchvision v2 transforms
        tf = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                         v2.RandomResizedCrop(args.image_size, scale=(0.2, 1.0), antialias=True),
                         v2.RandomHorizontalFlip(), v2.Normalize(stats["mean"], stats["std"])])

        def sample(i):
            with Image.open(files[i % len(files)]) as im:
                return tf(im.convert("RGB"))

        shards_it = shard_batches()
        next(shards_it)  # warm-up (page cache, roi_align init)
        torch.stack([sample(i) for i in range(4)])
        # Interleave the two pipelines batch by batch so that load from other processes hits both alike.
        t_shard = t_pil = 0.0
        for k in range(args.batches):
            t0 = time.perf_counter()
            x, _ = next(shards_it)
            t_shard += time.perf_counter() - t0
            t0 = time.perf_counter()
            batch = torch.stack([sample(k * args.batch_size + j) for j in range(args.batch_size)])
            t_pil += time.perf_counter() - t0
            assert x.shape == batch.shape
        shard_ips = n_images / t_shard
        pil_ips = n_images / t_pil

    print(f"dataset: {args.archive.name} ({len(files)} images, format {args.format}); tiling took {t_tile:.1f}s")
    print(f"setup: tile {args.tile_size}px -> output {args.image_size}px, batch {args.batch_size}, "
          f"{n_images} images, torch threads {args.threads}")
    print(f"shard loader (memmap + batched roi_align RRC + flip): {shard_ips:8.1f} images/s per worker")
    print(f"PIL decode per sample (+ v2 RRC + flip + normalize):   {pil_ips:8.1f} images/s per worker")
    print(f"ratio shard/PIL: {shard_ips / pil_ips:.2f}x")


if __name__ == "__main__":
    main()
