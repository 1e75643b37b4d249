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


def test_augment_on_device_stages_agree(scene_tiles):
    """"normalize"/"all" yield DeviceBatch objects whose .to(device) equals the CPU pipeline's batch."""
    from geofm.data.augment import DeviceBatch

    ref = make_loader(scene_tiles, "train", 8, 24, seed=5)
    ref.set_epoch(1)
    for stage in ("normalize", "all", True):
        ld = make_loader(scene_tiles, "train", 8, 24, seed=5, augment_on_device=stage)
        ld.set_epoch(1)
        for (xa, ya), (xb, yb) in zip(ref, ld):
            assert isinstance(xb, DeviceBatch) and xb.shape == xa.shape
            assert torch.equal(xb.to("cpu"), xa) and torch.equal(ya, yb)
        dev = make_loader(scene_tiles, "train", 8, 24, seed=5, augment_on_device=stage, device="cpu")
        dev.set_epoch(1)
        assert torch.equal(next(iter(dev))[0], next(iter(ref))[0])
    with pytest.raises(ValueError, match="augment_on_device"):
        make_loader(scene_tiles, "train", 8, 24, augment_on_device="gpu")


def test_uint8_resized_crop_matches_float_reference():
    """The uint8 fast path equals the float resize of the same integer crop up to rounding; flips mirror."""
    from geofm.data.augment import integer_boxes, resized_crop, sample_augment

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 40, 36), dtype=torch.uint8, generator=g)
    boxes, flips = sample_augment(6, 40, 36, g)
    flips[:3] = torch.tensor([True, False, True])
    out8 = resized_crop(x, boxes, 24, flips, mode="bilinear")
    outf = resized_crop(x.float(), boxes, 24, flips, mode="bilinear")
    assert out8.dtype == torch.uint8 and outf.dtype == torch.float32 and out8.shape == (6, 3, 24, 24)
    assert (out8.float() - outf).abs().max() <= 1.01  # fixed-point weights + rounding
    # bicubic (the default, MAE's): the uint8 kernel clamps between its two passes, as PIL does
    cub8, cubf = resized_crop(x, boxes, 24, flips), resized_crop(x.float(), boxes, 24, flips)
    assert (cub8.float() - cubf.clamp(0, 255)).abs().mean() <= 0.5
    outf = cubf
    ib = integer_boxes(boxes, 40, 36)
    assert (ib[:, 2:] >= 1).all() and (ib[:, 0] + ib[:, 2] <= 36).all() and (ib[:, 1] + ib[:, 3] <= 40).all()
    x0, y0, w, h = ib[0].tolist()
    crop = torch.nn.functional.interpolate(x[:1, :, y0:y0 + h, x0:x0 + w].float(), size=(24, 24), mode="bicubic",
                                           antialias=True)
    torch.testing.assert_close(outf[:1], crop.flip(-1))
    # 13 bands (more than the 4 of the vectorised kernel) work too
    x13 = torch.randint(0, 256, (2, 13, 32, 32), dtype=torch.uint8, generator=g)
    assert resized_crop(x13, sample_augment(2, 32, 32, g)[0], 16).shape == (2, 13, 16, 16)


def test_step_batches_share_the_augmentation(scene_tiles):
    """The trainer's StepBatches: same uint8 augmentation, world-size independent, DeviceBatch equivalent."""
    from geofm.train.batches import StepBatches

    one = StepBatches(scene_tiles, 8, 24, seed=3, split="train", steps=3)
    halves = [StepBatches(scene_tiles, 8, 24, rank=r, world=2, seed=3, split="train", steps=3) for r in (0, 1)]
    dev = StepBatches(scene_tiles, 8, 24, rank=1, world=2, seed=3, split="train", steps=3, augment_on_device="all")
    for s in range(3):
        full = one.batch(s)
        assert full.shape == (8, 3, 24, 24) and full.dtype == torch.float32
        assert torch.equal(full[1::2], halves[1].batch(s)) and torch.equal(full[0::2], halves[0].batch(s))
        assert torch.equal(dev.batch(s).to("cpu"), halves[1].batch(s))
    assert not torch.equal(one.batch(0), one.batch(1))
