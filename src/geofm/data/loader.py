"""The one loader: a rank's step-indexed training batches from tile shards (or the paper's synthetic batch).

:class:`StepBatches` item ``i`` is rank ``rank``'s batch of step ``start + i``: the samples and augmentation
that :class:`~geofm.data.sampler.StepSampler` assigns to its rows of the global batch, read from the memmapped
uint8 shards (:class:`~geofm.data.shards.TileDataset`), cropped + resized + flipped in uint8 and normalised
with the tiles' ``stats.json`` mean/std through the one preprocessing path (:mod:`geofm.data.augment`). Wrap it
in ``torch.utils.data.DataLoader(..., batch_size=None)``: workers compute whole batches, and which batch a
worker makes never changes what it holds, so batches are the same at any ``num_workers`` and any world size.
Pretraining (:mod:`geofm.train.pretrain`) and the throughput profile read their batches through it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .augment import DeviceBatch, norm_params, normalize, parse_device_stage, resized_crop
from .sampler import SYNTHETIC, StepSampler, uniform

__all__ = ["StepBatches"]


class StepBatches(torch.utils.data.Dataset):
    """Item ``s`` is rank ``rank``'s batch of step ``s`` (float, normalised) — use with ``batch_size=None``.

    ``augment_on_device="normalize" | "all"`` makes items :class:`~geofm.data.augment.DeviceBatch` objects (uint8
    + augmentation parameters) that the training loop's ``x.to(device, non_blocking=True)`` turns into the same
    normalised float batch, computed on the device (``DataLoader(pin_memory=True)`` works with them).
    """

    def __init__(self, source: str | Path, global_batch: int, image_size: int, rank: int = 0, world: int = 1,
                 seed: int = 0, augment: bool = True, in_chans: int = 3, split: str | None = "train",
                 start: int = 0, steps: int = 0, augment_on_device="none", rot90: bool = False,
                 crop_scale=(0.2, 1.0)):
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by the world size {world}")
        self.global_batch, self.image_size, self.rank, self.world = global_batch, image_size, rank, world
        self.seed, self.augment, self.start, self.steps = seed, augment, start, steps
        self.rot90 = bool(rot90)  # quarter turns after MAE's crop and flip (pretrain.augment_rot90)
        self.crop_scale = tuple(float(v) for v in crop_scale)  # the crop's area fraction (pretrain.crop_scale)
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop scale {list(self.crop_scale)} must be (min, max) with 0 < min <= max <= 1")
        self.device_stage = parse_device_stage(augment_on_device)
        self.synthetic = str(source) == "synthetic"
        if self.synthetic:  # one fixed batch (the paper's synthetic mode); only this rank's rows are drawn
            rows = np.arange(rank, global_batch, world, dtype=np.int64)
            u = uniform((seed, SYNTHETIC), rows, in_chans * image_size * image_size)
            img = (u * 256).to(torch.uint8).view(len(rows), in_chans, image_size, image_size)
            self.fixed = img.float().div_(255).sub_(0.5).div_(0.25)
            self.in_chans = in_chans
        else:
            from .shards import TileDataset

            self.ds = TileDataset(source, split=split)
            if len(self.ds) < global_batch:
                raise ValueError(f"{source}: split {split!r} has {len(self.ds)} tiles, fewer than one global batch "
                                 f"({global_batch}); lower pretrain.batch_size or tile more data")
            self.sampler = StepSampler(len(self.ds), global_batch, seed, rank, world)
            stats = self.ds.stats
            self.in_chans = int(stats["bands"])
            self.mean255, self.inv_std255 = norm_params(stats["mean"], stats["std"])

    def __len__(self) -> int:
        return self.steps - self.start

    def indices(self, step: int) -> np.ndarray:
        """Dataset positions of this rank's samples at ``step`` (:meth:`StepSampler.indices`)."""
        return self.sampler.indices(step)

    def global_indices(self, step: int) -> np.ndarray:
        """The whole global batch's dataset positions (every rank's; for tests and tools, not the step)."""
        return self.sampler.global_indices(step)

    def batch(self, step: int):
        """Rank ``rank``'s batch of ``step``: float32 normalised, or (``augment_on_device``) a
        :class:`~geofm.data.augment.DeviceBatch` whose ``.to(device)`` finishes it there."""
        if self.synthetic:
            return self.fixed
        x = self.ds.get_batch(self.indices(step))  # uint8 B x C x S x S
        boxes = flips = turns = None
        if self.augment:
            boxes, flips = self.sampler.crops(step, x.shape[-2], x.shape[-1], self.crop_scale)
            if self.rot90:
                turns = self.sampler.turns(step)
        if self.device_stage == "all":
            return DeviceBatch(x, self.image_size, self.mean255, self.inv_std255, boxes, flips, turns)
        # the one preprocessing path (geofm.data.augment): antialiased bicubic crop-resize, uint8, per sample
        x = resized_crop(x, boxes, self.image_size, flips, turns=turns)
        if self.device_stage == "normalize":
            return DeviceBatch(x, self.image_size, self.mean255, self.inv_std255)
        return normalize(x, self.mean255, self.inv_std255)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.batch(self.start + i)
