"""Training / evaluation batches from tile shards, with batched MAE augmentations in torch.

:func:`make_loader` returns a :class:`ShardLoader`: iterate it once per epoch (call ``set_epoch(e)`` first,
like ``DistributedSampler``) to get ``(images, labels)`` with ``images`` float32 ``B x C x image_size x
image_size`` normalised with the tiles' ``stats.json`` mean/std and ``labels`` int64 ``B``.

- Rank split: a seeded permutation per epoch (``seed + epoch``), truncated (``drop_last``) or padded to a
  multiple of ``world_size``, then ``perm[rank::world_size]`` -- disjoint across ranks, identical on every rank.
- MAE augmentations (``augment=True``): RandomResizedCrop(scale=(0.2, 1.0), ratio=(3/4, 4/3)) + random
  horizontal flip, parameters drawn for the whole batch, crop + antialiased bicubic resize done on uint8
  (:mod:`geofm.data.augment`, shared with :mod:`geofm.train.batches`), then one float conversion/normalisation.
  The RNG is seeded per (seed, epoch, rank, batch), so batches are reproducible regardless of ``num_workers``.
- ``augment_on_device="normalize" | "all"``: images come as a :class:`~geofm.data.augment.DeviceBatch` (uint8)
  whose ``.to(device)`` finishes normalisation (or crop/resize/flip + normalisation) on the device; with
  ``device=`` set, the loader does that itself and yields device tensors.
- ``num_workers > 0`` runs whole batches in ``torch.utils.data.DataLoader`` worker processes.

:func:`infinite_batches` yields batches forever, advancing the epoch each time the loader is exhausted.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from . import DataError
from .augment import (DeviceBatch, norm_params, normalize, parse_device_stage, resized_crop, sample_augment,
                      sample_crop_boxes)
from .shards import TileDataset

__all__ = ["ShardLoader", "make_loader", "infinite_batches", "mae_augment", "sample_crop_boxes", "resize_batch"]


def _seed_for(*keys) -> int:
    h = hashlib.sha256(repr(tuple(int(k) for k in keys)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def mae_augment(x: torch.Tensor, image_size: int, gen: torch.Generator, scale=(0.2, 1.0),
                hflip: bool = True) -> torch.Tensor:
    """Batched random-resized-crop + horizontal flip of images ``B x C x H x W`` (uint8 or float).

    Returns float32 ``B x C x image_size x image_size`` in the input's value range (see
    :func:`geofm.data.augment.resized_crop`; uint8 inputs are resized in uint8, then converted).
    """
    boxes, flips = sample_augment(x.shape[0], x.shape[-2], x.shape[-1], gen, scale=scale, hflip=hflip)
    return resized_crop(x, boxes, image_size, flips).float()


def resize_batch(x: torch.Tensor, image_size: int) -> torch.Tensor:
    return resized_crop(x, None, image_size)


class _EpochBatches(torch.utils.data.Dataset):
    """One epoch's batches as a map-style dataset (one item = one transformed batch), for worker processes."""

    def __init__(self, loader: "ShardLoader", epoch: int, batches: list[np.ndarray]):
        self.loader, self.epoch, self.batches = loader, epoch, batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.loader._make_batch(self.batches[i], self.epoch, i)


class ShardLoader:
    """Rank-split, seeded, augmenting batch iterator over a :class:`TileDataset` (see module docs)."""

    def __init__(self, dataset: TileDataset, batch_size: int, image_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, augment: bool = True, num_workers: int = 0, drop_last: bool = True,
                 shuffle: bool | None = None, scale=(0.2, 1.0), hflip: bool = True, augment_on_device="none",
                 device=None):
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} outside world_size {world_size}")
        self.dataset = dataset
        self.batch_size, self.image_size = int(batch_size), int(image_size)
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.augment, self.num_workers, self.drop_last = bool(augment), int(num_workers), bool(drop_last)
        self.shuffle = self.augment if shuffle is None else bool(shuffle)
        self.scale, self.hflip = tuple(scale), bool(hflip)
        self.stats = dataset.stats
        self.mean255, self.inv_std255 = norm_params(self.stats["mean"], self.stats["std"])
        self.device_stage = parse_device_stage(augment_on_device)
        self.device = None if device is None else torch.device(device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rank_indices(self, epoch: int | None = None) -> np.ndarray:
        """Dataset positions this rank visits in ``epoch`` (DistributedSampler semantics)."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(_seed_for(self.seed, epoch))
            perm = torch.randperm(n, generator=g).numpy()
        else:
            perm = np.arange(n)
        if self.drop_last:
            perm = perm[: (n // self.world_size) * self.world_size]
        else:
            total = math.ceil(n / self.world_size) * self.world_size if n else 0
            if total > n:
                perm = np.concatenate([perm, np.resize(perm, total - n)])
        return perm[self.rank::self.world_size]

    def batches(self, epoch: int | None = None) -> list[np.ndarray]:
        idx = self.rank_indices(epoch)
        out = [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        if self.drop_last and out and len(out[-1]) < self.batch_size:
            out.pop()
        return out

    def __len__(self) -> int:
        n = len(self.dataset)
        per_rank = n // self.world_size if self.drop_last else math.ceil(n / self.world_size)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def _make_batch(self, idx: np.ndarray, epoch: int, batch_i: int):
        x = self.dataset.get_batch(idx)  # uint8 B x C x S x S
        boxes = flips = None
        if self.augment:
            gen = torch.Generator().manual_seed(_seed_for(self.seed, epoch, self.rank, batch_i))
            boxes, flips = sample_augment(x.shape[0], x.shape[-2], x.shape[-1], gen, scale=self.scale,
                                          hflip=self.hflip)
        labels = torch.from_numpy(self.dataset.labels[idx].copy())
        if self.device_stage == "all":
            return DeviceBatch(x, self.image_size, self.mean255, self.inv_std255, boxes, flips), labels
        x = resized_crop(x, boxes, self.image_size, flips)  # still uint8
        if self.device_stage == "normalize":
            return DeviceBatch(x, self.image_size, self.mean255, self.inv_std255), labels
        return normalize(x, self.mean255, self.inv_std255), labels

    def _finish(self, batch):
        if self.device is None:
            return batch
        x, y = batch
        nb = self.device.type == "cuda"
        return x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb)

    def __iter__(self):
        epoch = self.epoch
        batches = self.batches(epoch)
        if self.num_workers <= 0:
            for i, idx in enumerate(batches):
                yield self._finish(self._make_batch(idx, epoch, i))
            return
        dl = torch.utils.data.DataLoader(_EpochBatches(self, epoch, batches), batch_size=None, shuffle=False,
                                         num_workers=self.num_workers, persistent_workers=False,
                                         pin_memory=self.device is not None and self.device.type == "cuda")
        for batch in dl:
            yield self._finish(batch)


def make_loader(tiles_dir, split, batch_size: int, image_size: int, rank: int = 0, world_size: int = 1,
                seed: int = 0, augment: bool = True, num_workers: int = 0, drop_last: bool = True,
                shuffle: bool | None = None, augment_on_device="none", device=None) -> ShardLoader:
    """Loader over ``split`` (train/val/test or None = all) of a tiles directory; see :class:`ShardLoader`."""
    ds = TileDataset(tiles_dir, split=split)
    loader = ShardLoader(ds, batch_size, image_size, rank=rank, world_size=world_size, seed=seed, augment=augment,
                         num_workers=num_workers, drop_last=drop_last, shuffle=shuffle,
                         augment_on_device=augment_on_device, device=device)
    if len(loader) == 0:
        raise DataError(f"{tiles_dir} split {split!r} has {len(ds)} tiles: not one batch of {batch_size} per rank "
                        f"with world_size={world_size} (lower batch_size or produce more tiles)")
    return loader


def infinite_batches(loader: ShardLoader):
    """Yield batches forever, calling ``loader.set_epoch`` with increasing epochs."""
    epoch = loader.epoch
    while True:
        loader.set_epoch(epoch)
        n = 0
        for batch in loader:
            n += 1
            yield batch
        if n == 0:
            raise DataError("loader produced no batch in a whole epoch")
        epoch += 1
