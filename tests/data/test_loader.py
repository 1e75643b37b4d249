"""make_loader: rank split (disjoint, deterministic), shapes/normalisation, batched MAE augmentations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from geofm.data import DataError
from geofm.data.loader import infinite_batches, make_loader, mae_augment, sample_crop_boxes


def test_rank_split_disjoint_and_deterministic(scene_tiles):
    ws = 3
    loaders = [make_loader(scene_tiles, None, 4, 32, rank=r, world_size=ws, seed=7) for r in range(ws)]
    n = len(loaders[0].dataset)
    for epoch in (0, 1):
        for ld in loaders:
            ld.set_epoch(epoch)
        parts = [ld.rank_indices() for ld in loaders]
        assert len({len(p) for p in parts}) == 1 and len(parts[0]) == n // ws
        flat = np.concatenate(parts)
        assert len(set(flat.tolist())) == len(flat)  # disjoint
        assert set(flat.tolist()) <= set(range(n))
    again = make_loader(scene_tiles, None, 4, 32, rank=1, world_size=ws, seed=7)
    again.set_epoch(1)
    np.testing.assert_array_equal(again.rank_indices(), loaders[1].rank_indices())
    assert not np.array_equal(again.rank_indices(0), again.rank_indices(1))  # reshuffled per epoch
    other_seed = make_loader(scene_tiles, None, 4, 32, rank=1, world_size=ws, seed=8)
    assert not np.array_equal(other_seed.rank_indices(1), again.rank_indices(1))
    # no drop_last: padded like DistributedSampler, every sample covered
    pad = [make_loader(scene_tiles, None, 4, 32, rank=r, world_size=ws, drop_last=False) for r in range(ws)]
    cover = np.concatenate([p.rank_indices() for p in pad])
    assert set(cover.tolist()) == set(range(n)) and len(cover) == -(-n // ws) * ws


def test_batches_shapes_normalisation_and_reproducibility(scene_tiles):
    ld = make_loader(scene_tiles, "train", 8, 24, seed=1)
    ld.set_epoch(2)
    b1 = list(ld)
    b2 = list(ld)
    assert len(b1) == len(ld) == len(ld.dataset) // 8
    x, y = b1[0]
    assert x.dtype == torch.float32 and x.shape == (8, 3, 24, 24) and y.dtype == torch.int64 and y.shape == (8,)
    for (xa, ya), (xb, yb) in zip(b1, b2):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    ld.set_epoch(3)
    assert not torch.equal(next(iter(ld))[0], b1[0][0])
    # without augmentation, the train split normalises to ~zero mean / unit std per band
    plain = make_loader(scene_tiles, "train", 16, 32, augment=False, drop_last=False)
    allx = torch.cat([b[0] for b in plain])
    assert allx.shape[0] == len(plain.dataset)
    torch.testing.assert_close(allx.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(allx.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-2, rtol=0)


def test_workers_give_identical_batches(scene_tiles):
    a = make_loader(scene_tiles, "train", 16, 32, seed=3)
    b = make_loader(scene_tiles, "train", 16, 32, seed=3, num_workers=1)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_crop_boxes_and_flip():
    g = torch.Generator().manual_seed(0)
    boxes = sample_crop_boxes(2000, 64, 48, g)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 48 + 1e-4).all() and (boxes[:, 3] <= 64 + 1e-4).all()
    frac = w * h / (64 * 48)
    assert frac.min() >= 0.2 - 1e-4 and frac.max() <= 1 + 1e-4 and frac.std() > 0.1
    ratio = w / h
    assert ratio.min() >= 3 / 4 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4
    # a full-image "crop" with flip reproduces the mirrored input; a constant image stays constant
    x = torch.rand(4, 3, 16, 16)
    out = mae_augment(x, 16, torch.Generator().manual_seed(1), scale=(1.0, 1.0))
    for i in range(4):
        ok = torch.allclose(out[i], x[i], atol=0.35) or torch.allclose(out[i], x[i].flip(-1), atol=0.35)
        assert out[i].shape == (3, 16, 16) and ok
    c = torch.full((2, 3, 40, 40), 0.25)
    torch.testing.assert_close(mae_augment(c, 8, torch.Generator().manual_seed(2)), torch.full((2, 3, 8, 8), 0.25))


def test_infinite_batches_and_too_small(scene_tiles):
    ld = make_loader(scene_tiles, "train", 32, 32, seed=0)
    per_epoch = len(ld)
    it = infinite_batches(ld)
    batches = list(itertools.islice(it, per_epoch * 2 + 1))
    assert len(batches) == per_epoch * 2 + 1 and ld.epoch == 2
    with pytest.raises(DataError, match="not one batch"):
        make_loader(scene_tiles, "val", 10_000, 32)
