"""The one step-indexed sampler: which samples make the global batch of step ``s`` and their augmentation
draws, as functions of (seed, s, the sample's row in the global batch) only -- never of the world size.

The global batch of step ``s`` is positions ``s * B .. s * B + B - 1`` of an endless stream of seeded
per-epoch permutations of the dataset (epochs advance every ``len(dataset)`` samples); rank ``r`` of ``W``
takes rows ``r::W``. Every random number of a sample -- its place in the permutation, its augmentation
(MAE's random resized crop and a horizontal flip), its masking noise, a synthetic image -- is computed by a
counter-based generator (:func:`uniform`) and a keyed permutation evaluated pointwise (:func:`permute`). So:

* one process and N processes see exactly the same samples per step, and a resumed run continues with
  exactly the batches an uninterrupted run would have used;
* a rank computes only its own rows: the per-step cost is O(local batch), the same at 1 rank and at 1,024
  (no global-batch draw to slice, no per-epoch shuffle of the whole dataset).

Used by pretraining (:class:`geofm.data.loader.StepBatches`, the masking noise in :mod:`geofm.train.pretrain`)
and by fine-tuning (:mod:`geofm.eval.finetune`).
"""
from __future__ import annotations

import numpy as np
import torch

from .augment import CROP_UNIFORMS, crop_boxes_from_uniform

# stream ids under the seed: one per kind of draw, so no two kinds share random numbers
PERMUTATION, CROPS, MASK, SYNTHETIC, TURNS = 11, 13, 17, 7, 19

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


class StepSampler:
    """Rank ``rank`` of ``world``'s share of the global batch of ``global_batch`` samples of step ``s`` over
    a dataset of ``n`` samples: which samples (:meth:`indices`) and their MAE crop + flip (:meth:`crops`)."""

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world: int = 1):
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by the world size {world}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        self.n, self.global_batch, self.seed, self.rank, self.world = int(n), int(global_batch), int(seed), rank, world
        self.rows = global_rows(global_batch, rank, world)

    def _positions(self, step: int, rows: np.ndarray) -> np.ndarray:
        pos = step * self.global_batch + rows
        return permute((self.seed, PERMUTATION), self.n, pos % self.n, pos // self.n)

    def indices(self, step: int) -> np.ndarray:
        """Dataset positions of this rank's samples at ``step`` (global-batch rows ``rank::world``)."""
        return self._positions(step, self.rows)

    def global_indices(self, step: int) -> np.ndarray:
        """The whole global batch's dataset positions (every rank's; for tests and tools, not the step)."""
        return self._positions(step, np.arange(self.global_batch))

    def crops(self, step: int, height: int, width: int, scale=(0.2, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
        """MAE's RandomResizedCrop boxes (``scale``) and horizontal flips of this rank's samples at ``step``."""
        u = uniform((self.seed, CROPS, step), self.rows, CROP_UNIFORMS + 1)
        boxes = crop_boxes_from_uniform(u[:, :CROP_UNIFORMS], height, width, scale=tuple(scale))
        return boxes, u[:, CROP_UNIFORMS] < 0.5

    def turns(self, step: int) -> torch.Tensor:
        """Quarter turns (0-3, int64) of this rank's samples at ``step``, each equally likely: with the
        horizontal flip of :meth:`crops`, each of the 8 symmetries of the square has probability 1/8. Drawn from
        their own stream, so a run without turns keeps the crops and flips it always had."""
        u = uniform((self.seed, TURNS, step), self.rows, 1)[:, 0]
        return (u * 4).to(torch.int64).clamp_(0, 3)


def mask_noise(seed: int, step: int, micro: int, global_batch: int, n_patches: int, rank: int, world: int) -> torch.Tensor:
    """MAE masking noise of this rank's rows of the global batch (``rank::world``), O(local batch)."""
    return uniform((seed, MASK, step, micro), global_rows(global_batch, rank, world), n_patches)
