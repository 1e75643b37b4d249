"""Training / evaluation batches from tile shards, with batched MAE augmentations in torch.

:func:`make_loader` returns a :class:`ShardLoader`: iterate it once per epoch (call ``set_epoch(e)`` first,
like ``DistributedSampler``) to get ``(images, labels)`` with ``images`` float32 ``B x C x image_size x
image_size`` normalised with the tiles' ``stats.json`` mean/std and ``labels`` int64 ``B``.

- Rank split: a seeded permutation per epoch (``seed + epoch``), truncated (``drop_last``) or padded to a
  multiple of ``world_size``, then ``perm[rank::world_size]`` -- disjoint across ranks, identical on every rank.
- MAE augmentations (``augment=True``), on the whole batch at once: RandomResizedCrop(scale=(0.2, 1.0),
  ratio=(3/4, 4/3)) as one ``torchvision.ops.roi_align`` call (per-sample boxes, adaptive sampling so large
  crops are area-averaged rather than aliased) and a random horizontal flip.  The RNG is seeded per
  (seed, epoch, rank, batch), so batches are reproducible regardless of ``num_workers``.
- ``num_workers > 0`` runs whole batches in ``torch.utils.data.DataLoader`` worker processes.

:func:`infinite_batches` yields batches forever, advancing the epoch each time the loader is exhausted.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from . import DataError
from .shards import TileDataset


def _seed_for(*keys) -> int:
    h = hashlib.sha256(repr(tuple(int(k) for k in keys)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def sample_crop_boxes(n: int, height: int, width: int, gen: torch.Generator, scale=(0.2, 1.0),
                      ratio=(3 / 4, 4 / 3), tries: int = 10) -> torch.Tensor:
    """RandomResizedCrop boxes (n x 4: x0, y0, x1, y1, pixel units) sampled for a whole batch at once."""
    area = float(height * width)
    s = torch.empty(n, tries).uniform_(scale[0], scale[1], generator=gen) * area
    logr = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    r = torch.exp(logr)
    w = torch.sqrt(s * r)
    h = torch.sqrt(s / r)
    ok = (w <= width) & (h <= height)
    first = torch.argmax(ok.int(), dim=1)
    rows = torch.arange(n)
    w, h = w[rows, first], h[rows, first]
    # Fallback (no try fitted): centre crop with the ratio clamped into range, as torchvision does.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), width / ratio[0]
    elif in_ratio > ratio[1]:
        fw, fh = height * ratio[1], float(height)
    else:
        fw, fh = float(width), float(height)
    any_ok = ok.any(dim=1)
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    u = torch.rand(n, 2, generator=gen)
    x0 = torch.where(any_ok, u[:, 0] * (width - w), (width - w) / 2)
    y0 = torch.where(any_ok, u[:, 1] * (height - h), (height - h) / 2)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def mae_augment(x: torch.Tensor, image_size: int, gen: torch.Generator, scale=(0.2, 1.0),
                hflip: bool = True) -> torch.Tensor:
    """Batched random-resized-crop + horizontal flip of images ``B x C x H x W`` (uint8 or float).

    Returns float32 ``B x C x image_size x image_size`` in the input's value range.  The flip is applied to
    the (cheap, uint8) input with a mirrored crop box, which equals flipping the crop.
    """
    from torchvision.ops import roi_align

    b, _, h, w = x.shape
    boxes = sample_crop_boxes(b, h, w, gen, scale=scale)
    if hflip:
        flip = torch.rand(b, generator=gen) < 0.5
        if bool(flip.any()):
            x = x.clone()
            x[flip] = x[flip].flip(-1)
            x0 = torch.where(flip, w - boxes[:, 2], boxes[:, 0])
            x1 = torch.where(flip, w - boxes[:, 0], boxes[:, 2])
            boxes = torch.stack([x0, boxes[:, 1], x1, boxes[:, 3]], dim=1)
    rois = torch.cat([torch.arange(b, dtype=torch.float32)[:, None], boxes], dim=1)
    return roi_align(x.float(), rois, output_size=(image_size, image_size), spatial_scale=1.0, sampling_ratio=-1,
                     aligned=True)


def resize_batch(x: torch.Tensor, image_size: int) -> torch.Tensor:
    if x.shape[-1] == image_size and x.shape[-2] == image_size:
        return x
    return F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)


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
                 shuffle: bool | None = None, scale=(0.2, 1.0), hflip: bool = True):
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} outside world_size {world_size}")
        self.dataset = dataset
        self.batch_size, self.image_size = int(batch_size), int(image_size)
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.augment, self.num_workers, self.drop_last = bool(augment), int(num_workers), bool(drop_last)
        self.shuffle = self.augment if shuffle is None else bool(shuffle)
        self.scale, self.hflip = tuple(scale), bool(hflip)
        self.stats = dataset.stats
        self.mean = torch.tensor(self.stats["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(self.stats["std"], dtype=torch.float32).view(1, -1, 1, 1)
        self._scale = 1.0 / (255.0 * self.std)
        self._shift = self.mean / self.std
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
        x = self.dataset.get_batch(idx)  # uint8
        if self.augment:
            gen = torch.Generator().manual_seed(_seed_for(self.seed, epoch, self.rank, batch_i))
            x = mae_augment(x, self.image_size, gen, scale=self.scale, hflip=self.hflip)
        else:
            x = resize_batch(x.float(), self.image_size)
        # (x / 255 - mean) / std, in place
        x.mul_(self._scale).sub_(self._shift)
        return x, torch.from_numpy(self.dataset.labels[idx].copy())

    def __iter__(self):
        epoch = self.epoch
        batches = self.batches(epoch)
        if self.num_workers <= 0:
            for i, idx in enumerate(batches):
                yield self._make_batch(idx, epoch, i)
            return
        dl = torch.utils.data.DataLoader(_EpochBatches(self, epoch, batches), batch_size=None, shuffle=False,
                                         num_workers=self.num_workers, persistent_workers=False)
        yield from dl


def make_loader(tiles_dir, split, batch_size: int, image_size: int, rank: int = 0, world_size: int = 1,
                seed: int = 0, augment: bool = True, num_workers: int = 0, drop_last: bool = True,
                shuffle: bool | None = None) -> ShardLoader:
    """Loader over ``split`` (train/val/test or None = all) of a tiles directory; see :class:`ShardLoader`."""
    ds = TileDataset(tiles_dir, split=split)
    loader = ShardLoader(ds, batch_size, image_size, rank=rank, world_size=world_size, seed=seed, augment=augment,
                         num_workers=num_workers, drop_last=drop_last, shuffle=shuffle)
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
