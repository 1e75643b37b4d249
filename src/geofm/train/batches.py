"""Step-indexed training batches: the batch of step ``s`` depends only on (seed, s), never on the world size.

The global batch of a step is a slice of a seeded per-epoch permutation of the training tiles; rank ``r``
of ``W`` takes rows ``r::W``. Every random number of a sample -- its place in the permutation, its
augmentation parameters (MAE's random resized crop, scale 0.2–1, and a horizontal flip), its masking noise,
a synthetic image -- is a function of (seed, step, the sample's row in the global batch) only, computed by a
counter-based generator (:func:`uniform`) and a keyed permutation evaluated pointwise (:func:`permute`). So:

* one process and N processes see exactly the same samples per step (the loss-equality tests rely on it)
  and a resumed run continues with exactly the batches an uninterrupted run would have used;
* a rank computes only its own rows: the per-step cost outside the model is O(local batch), the same at
  1 rank and at 1,024 (no global-batch draw to slice, no per-epoch shuffle of the whole dataset).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.augment import (CROP_UNIFORMS, DeviceBatch, crop_boxes_from_uniform, norm_params, normalize,
                            parse_device_stage)
from ..data.augment import resized_crop as _resized_crop


# -- counter-based random numbers: splitmix64's output function (Steele, Lea & Flood, "Fast splittable
# pseudorandom number generators", OOPSLA 2014) over uint64 counters; numpy's uint64 arithmetic wraps mod 2**64.
_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _key(*keys: int) -> np.uint64:
    z = np.zeros(1, dtype=np.uint64)
    for k in keys:
        z = _mix64(z ^ np.uint64(int(k) & 0xFFFFFFFFFFFFFFFF))
    return z[0]


def uniform(key: tuple, rows: np.ndarray, n: int) -> torch.Tensor:
    """float32 uniforms in [0, 1), ``len(rows) x n``: entry (i, j) depends only on (``key``, ``rows[i]``, j)."""
    k = _key(*key)
    base = _mix64(np.asarray(rows, dtype=np.uint64) ^ k)
    ctr = base[:, None] + np.arange(1, n + 1, dtype=np.uint64)[None, :] * _GAMMA
    return torch.from_numpy((_mix64(ctr) >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24))


def permute(key: tuple, n: int, pos: np.ndarray, epochs: np.ndarray) -> np.ndarray:
    """Position ``pos`` of epoch ``epochs`` (elementwise) of a seeded permutation of ``range(n)``, without
    building the permutation: a 4-round Feistel network on the smallest even number of bits covering ``n``,
    walked until it lands inside ``range(n)`` (cycle walking: a bijection on the larger domain restricts to one
    on ``range(n)``; the domain is at most about 4n, so a position needs at most about 4 passes on average)."""
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    k = _key(*key)
    rk = [_mix64((np.asarray(epochs, dtype=np.uint64) * _GAMMA) ^ k ^ np.uint64(r + 1)) for r in range(4)]
    x = np.asarray(pos, dtype=np.uint64).copy()
    todo = np.ones(len(x), dtype=bool)
    while todo.any():
        left, right = x[todo] >> np.uint64(half), x[todo] & mask
        for r in range(4):
            left, right = right, left ^ (_mix64(right ^ rk[r][todo]) & mask)
        x[todo] = (left << np.uint64(half)) | right
        todo = x >= np.uint64(n)
    return x.astype(np.int64)


def global_rows(global_batch: int, rank: int, world: int) -> np.ndarray:
    """This rank's rows of the global batch."""
    return np.arange(rank, global_batch, world, dtype=np.int64)


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
        self.rows = global_rows(global_batch, rank, world)
        if self.synthetic:  # one fixed batch (the paper's synthetic mode); only this rank's rows are drawn
            u = uniform((seed, 7), self.rows, in_chans * image_size * image_size)
            img = (u * 256).to(torch.uint8).view(len(self.rows), in_chans, image_size, image_size)
            self.fixed = img.float().div_(255).sub_(0.5).div_(0.25)
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

    def indices(self, step: int) -> np.ndarray:
        """Dataset positions of this rank's samples at ``step``: global-batch rows ``rank::world`` of the
        stream of per-epoch permutations (epochs advance every ``len(dataset)`` samples)."""
        n = len(self.ds)
        pos = step * self.global_batch + self.rows
        return permute((self.seed, 11), n, pos % n, pos // n)

    def global_indices(self, step: int) -> np.ndarray:
        """The whole global batch's dataset positions (every rank's; for tests and tools, not the step)."""
        n = len(self.ds)
        pos = step * self.global_batch + np.arange(self.global_batch)
        return permute((self.seed, 11), n, pos % n, pos // n)

    def batch(self, step: int):
        """Rank ``rank``'s batch of ``step``: float32 normalised, or (``augment_on_device``) a
        :class:`~geofm.data.augment.DeviceBatch` whose ``.to(device)`` finishes it there."""
        if self.synthetic:
            return self.fixed
        idx = self.indices(step)
        x = self.ds.get_many(idx) if hasattr(self.ds, "get_many") else torch.stack([self.ds[int(i)][0] for i in idx])
        boxes = flips = None
        if self.augment:
            u = uniform((self.seed, 13, step), self.rows, CROP_UNIFORMS + 1)
            boxes = crop_boxes_from_uniform(u[:, :CROP_UNIFORMS], x.shape[-2], x.shape[-1])
            flips = u[:, CROP_UNIFORMS] < 0.5
        if self.device_stage == "all":
            return DeviceBatch(x, self.image_size, self.mean255, self.inv_std255, boxes, flips)
        x = _resized_crop(x, boxes, self.image_size, flips)  # uint8, per sample
        if self.device_stage == "normalize":
            return DeviceBatch(x, self.image_size, self.mean255, self.inv_std255)
        return normalize(x, self.mean255, self.inv_std255)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.batch(self.start + i)


def mask_noise(seed: int, step: int, micro: int, global_batch: int, n_patches: int, rank: int, world: int) -> torch.Tensor:
    """MAE masking noise of this rank's rows of the global batch (``rank::world``), O(local batch)."""
    return uniform((seed, 17, step, micro), global_rows(global_batch, rank, world), n_patches)
