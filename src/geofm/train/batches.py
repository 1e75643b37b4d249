"""Step-indexed training batches: the batch of step ``s`` depends only on (seed, s), never on the world size.

The global batch of a step is a slice of a seeded per-epoch permutation of the training tiles; rank ``r``
of ``W`` takes rows ``r::W``. Augmentation parameters (MAE's random resized crop, scale 0.2–1, and a
horizontal flip) and the masking noise are drawn for the whole global batch and sliced the same way.
So one process and N processes see exactly the same samples per step (the loss-equality tests rely on
it) and a resumed run continues with exactly the batches an uninterrupted run would have used.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.augment import DeviceBatch, norm_params, normalize, parse_device_stage, sample_crop_boxes
from ..data.augment import resized_crop as _resized_crop


def _gen(*keys: int) -> torch.Generator:
    seed = 0
    for k in keys:
        seed = (seed * 1_000_003 + int(k)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def crop_boxes(n: int, size: int, gen: torch.Generator, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Random-resized-crop boxes (x1, y1, x2, y2) in pixels of a square ``size`` image (torchvision semantics,
    vectorised; see :func:`geofm.data.augment.sample_crop_boxes`)."""
    return sample_crop_boxes(n, size, size, gen, scale=scale, ratio=ratio)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor | None, out: int,
                 flips: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample crop (boxes rounded to whole pixels) + antialiased bicubic resize (+ flip); ``boxes=None``
    resizes the whole image.  uint8 stays uint8 on CPU (see :func:`geofm.data.augment.resized_crop`)."""
    return _resized_crop(images, boxes, out, flips)


class StepBatches(torch.utils.data.Dataset):
    """Item ``s`` is rank ``rank``'s batch of step ``s`` (float, normalised) — use with ``batch_size=None``.

    ``augment_on_device="normalize" | "all"`` makes items :class:`~geofm.data.augment.DeviceBatch` objects (uint8
    + augmentation parameters) that the training loop's ``x.to(device, non_blocking=True)`` turns into the same
    normalised float batch, computed on the device (``DataLoader(pin_memory=True)`` works with them).
    """

    def __init__(self, source: str | Path, global_batch: int, image_size: int, rank: int = 0, world: int = 1,
                 seed: int = 0, augment: bool = True, in_chans: int = 3, split: str | None = "train",
                 start: int = 0, steps: int = 0, augment_on_device="none"):
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by the world size {world}")
        self.global_batch, self.image_size, self.rank, self.world = global_batch, image_size, rank, world
        self.seed, self.augment, self.start, self.steps = seed, augment, start, steps
        self.device_stage = parse_device_stage(augment_on_device)
        self.synthetic = str(source) == "synthetic"
        if self.synthetic:
            g = _gen(seed, 7)
            full = torch.randint(0, 256, (global_batch, in_chans, image_size, image_size), dtype=torch.uint8, generator=g)
            self.fixed = full[rank::world].float().div_(255).sub_(0.5).div_(0.25)
            self.in_chans = in_chans
        else:
            from ..data.shards import TileDataset

            self.ds = TileDataset(source, split=split)
            if len(self.ds) < global_batch:
                raise ValueError(f"{source}: split {split!r} has {len(self.ds)} tiles, fewer than one global batch "
                                 f"({global_batch}); lower pretrain.batch_size or tile more data")
            stats = self.ds.stats
            self.in_chans = int(stats["bands"])
            self.mean255, self.inv_std255 = norm_params(stats["mean"], stats["std"])

    def __len__(self) -> int:
        return self.steps - self.start

    def global_indices(self, step: int) -> np.ndarray:
        n = len(self.ds)
        pos = step * self.global_batch
        out = []
        while len(out) < self.global_batch:
            epoch, off = divmod(pos, n)
            perm = torch.randperm(n, generator=_gen(self.seed, 11, epoch)).numpy()
            take = perm[off: off + self.global_batch - len(out)]
            out.extend(take.tolist())
            pos += len(take)
        return np.asarray(out)

    def batch(self, step: int):
        """Rank ``rank``'s batch of ``step``: float32 normalised, or (``augment_on_device``) a
        :class:`~geofm.data.augment.DeviceBatch` whose ``.to(device)`` finishes it there."""
        if self.synthetic:
            return self.fixed
        idx = self.global_indices(step)[self.rank::self.world]
        x = self.ds.get_many(idx) if hasattr(self.ds, "get_many") else torch.stack([self.ds[int(i)][0] for i in idx])
        boxes = flips = None
        if self.augment:
            g = _gen(self.seed, 13, step)
            boxes = crop_boxes(self.global_batch, x.shape[-1], g)[self.rank::self.world]
            flips = (torch.rand(self.global_batch, generator=g) < 0.5)[self.rank::self.world]
        if self.device_stage == "all":
            return DeviceBatch(x, self.image_size, self.mean255, self.inv_std255, boxes, flips)
        x = _resized_crop(x, boxes, self.image_size, flips)  # uint8, per sample
        if self.device_stage == "normalize":
            return DeviceBatch(x, self.image_size, self.mean255, self.inv_std255)
        return normalize(x, self.mean255, self.inv_std255)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.batch(self.start + i)


def mask_noise(seed: int, step: int, micro: int, global_batch: int, n_patches: int, rank: int, world: int) -> torch.Tensor:
    return torch.rand(global_batch, n_patches, generator=_gen(seed, 17, step, micro))[rank::world]
