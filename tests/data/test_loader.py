"""The one loader (StepBatches over the step-indexed sampler): shapes/normalisation, workers, device stages,
world-size independence; the batched MAE augmentations it shares with evaluation."""

from __future__ import annotations

import pytest
import torch

from geofm.data.augment import resized_crop, sample_augment, sample_crop_boxes
from geofm.data.loader import StepBatches
from geofm.data.sampler import StepSampler


def _mae_augment(x, size, gen, scale=(0.2, 1.0)):
    boxes, flips = sample_augment(x.shape[0], x.shape[-2], x.shape[-1], gen, scale=scale)
    return resized_crop(x, boxes, size, flips).float()


def test_batches_shapes_normalisation_and_reproducibility(scene_tiles):
    ld = StepBatches(scene_tiles, 8, 24, seed=1, split="train", steps=4)
    b1, b2 = [ld[i] for i in range(len(ld))], [ld[i] for i in range(len(ld))]
    assert len(b1) == 4 and b1[0].dtype == torch.float32 and b1[0].shape == (8, 3, 24, 24)
    assert all(torch.equal(a, b) for a, b in zip(b1, b2)) and not torch.equal(b1[0], b1[1])
    assert not torch.equal(StepBatches(scene_tiles, 8, 24, seed=2, split="train", steps=1)[0], b1[0])
    # without augmentation, one epoch of the train split normalises to ~zero mean / unit std per band
    n = len(ld.ds)
    plain = StepBatches(scene_tiles, n, 32, split="train", augment=False, steps=1)
    allx = plain[0]
    assert sorted(plain.indices(0).tolist()) == list(range(n))
    torch.testing.assert_close(allx.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(allx.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        StepBatches(scene_tiles, 10_000, 32, split="val")


def test_workers_give_identical_batches(scene_tiles):
    data = StepBatches(scene_tiles, 16, 32, seed=3, split="train", start=2, steps=6)
    a = list(torch.utils.data.DataLoader(data, batch_size=None, num_workers=0))
    b = list(torch.utils.data.DataLoader(data, batch_size=None, num_workers=2))
    assert len(a) == len(b) == 4 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(a[0], data.batch(2))


def test_sampler_crops_follow_the_scale_and_are_per_row():
    one = StepSampler(100, 8, seed=4)
    half = StepSampler(100, 8, seed=4, rank=1, world=2)
    boxes, flips = one.crops(3, 40, 30, scale=(0.5, 0.6))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (40 * 30)
    assert (area >= 0.5 - 1e-4).all() and (area <= 0.6 + 1e-4).all()
    hb, hf = half.crops(3, 40, 30, scale=(0.5, 0.6))
    assert torch.equal(hb, boxes[1::2]) and torch.equal(hf, flips[1::2])
    assert not torch.equal(one.crops(4, 40, 30)[0], one.crops(3, 40, 30)[0])
    with pytest.raises(ValueError, match="not divisible"):
        StepSampler(100, 9, seed=0, world=2)


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
    out = _mae_augment(x, 16, torch.Generator().manual_seed(1), scale=(1.0, 1.0))
    for i in range(4):
        ok = torch.allclose(out[i], x[i], atol=0.35) or torch.allclose(out[i], x[i].flip(-1), atol=0.35)
        assert out[i].shape == (3, 16, 16) and ok
    c = torch.full((2, 3, 40, 40), 0.25)
    torch.testing.assert_close(_mae_augment(c, 8, torch.Generator().manual_seed(2)), torch.full((2, 3, 8, 8), 0.25))


def test_augment_on_device_stages_agree(scene_tiles):
    """"normalize"/"all" yield DeviceBatch objects whose .to(device) equals the CPU pipeline's batch."""
    from geofm.data.augment import DeviceBatch

    ref = StepBatches(scene_tiles, 8, 24, seed=5, split="train", steps=2)
    for stage in ("normalize", "all", True):
        ld = StepBatches(scene_tiles, 8, 24, seed=5, split="train", steps=2, augment_on_device=stage)
        for s in range(2):
            xb = ld[s]
            assert isinstance(xb, DeviceBatch) and xb.shape == ref[s].shape and torch.equal(xb.to("cpu"), ref[s])
    with pytest.raises(ValueError, match="augment_on_device"):
        StepBatches(scene_tiles, 8, 24, split="train", augment_on_device="gpu")


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
    one = StepBatches(scene_tiles, 8, 24, seed=3, split="train", steps=3)
    halves = [StepBatches(scene_tiles, 8, 24, rank=r, world=2, seed=3, split="train", steps=3) for r in (0, 1)]
    dev = StepBatches(scene_tiles, 8, 24, rank=1, world=2, seed=3, split="train", steps=3, augment_on_device="all")
    for s in range(3):
        full = one.batch(s)
        assert full.shape == (8, 3, 24, 24) and full.dtype == torch.float32
        assert torch.equal(full[1::2], halves[1].batch(s)) and torch.equal(full[0::2], halves[0].batch(s))
        assert torch.equal(dev.batch(s).to("cpu"), halves[1].batch(s))
    assert not torch.equal(one.batch(0), one.batch(1))


def test_rot90_turns_each_view_after_the_same_crop_and_flip(scene_tiles):
    """pretrain.augment_rot90: each view is the one MAE's crop + flip gives, turned by its own drawn quarter turn,
    on every device stage; the turns come from their own stream (a run without them keeps its crops and flips),
    and with the flip all 8 symmetries of the square come up about equally often."""
    plain = StepBatches(scene_tiles, 16, 24, seed=5, split="train", steps=3)
    turned = StepBatches(scene_tiles, 16, 24, seed=5, split="train", steps=3, rot90=True)
    for step in range(3):
        k = turned.sampler.turns(step)
        a, b = plain.batch(step), turned.batch(step)
        assert not torch.equal(a, b)
        for i in range(16):
            torch.testing.assert_close(b[i], torch.rot90(a[i], int(k[i]), dims=(-2, -1)), rtol=0, atol=0)
        for stage in ("normalize", "all"):
            dev = StepBatches(scene_tiles, 16, 24, seed=5, split="train", steps=3, rot90=True,
                              augment_on_device=stage).batch(step).finish()
            assert torch.equal(dev, b)
    # turns never apply without augmentation (the evaluation's and the profile's plain batches)
    assert torch.equal(StepBatches(scene_tiles, 16, 24, seed=5, split="train", steps=1, augment=False).batch(0),
                       StepBatches(scene_tiles, 16, 24, seed=5, split="train", steps=1, augment=False,
                                   rot90=True).batch(0))
    s = StepSampler(1000, 256, seed=5)
    flips = torch.cat([s.crops(t, 32, 32)[1] for t in range(40)]).long()
    turns = torch.cat([s.turns(t) for t in range(40)])
    counts = torch.bincount(turns * 2 + flips, minlength=8)  # 10,240 views over the 8 symmetries
    assert counts.numel() == 8 and (counts > 1280 * 0.9).all() and (counts < 1280 * 1.1).all(), counts


def test_crop_scale_reaches_the_views(scene_tiles):
    """pretrain.crop_scale: the loader's views are the sampler's crops of that area range (MAE's (0.2, 1.0) by
    default), the same boxes on every device stage; a range outside (0, 1] or reversed is refused."""
    from geofm.data.augment import normalize

    plain = StepBatches(scene_tiles, 16, 24, seed=5, split="train", steps=2)
    mild = StepBatches(scene_tiles, 16, 24, seed=5, split="train", steps=2, crop_scale=(0.6, 0.7))
    for step in range(2):
        x = mild.ds.get_batch(mild.indices(step))
        boxes, flips = mild.sampler.crops(step, x.shape[-2], x.shape[-1], (0.6, 0.7))
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (x.shape[-2] * x.shape[-1])
        assert (area >= 0.6 - 1e-4).all() and (area <= 0.7 + 1e-4).all()
        want = normalize(resized_crop(x, boxes, 24, flips), mild.mean255, mild.inv_std255)
        assert torch.equal(mild.batch(step), want) and not torch.equal(plain.batch(step), want)
        dev = StepBatches(scene_tiles, 16, 24, seed=5, split="train", steps=2, crop_scale=(0.6, 0.7),
                          augment_on_device="all").batch(step).finish()
        assert torch.equal(dev, want)
    with pytest.raises(ValueError, match="crop scale"):
        StepBatches(scene_tiles, 16, 24, seed=5, split="train", steps=2, crop_scale=(0.7, 0.6))


def test_pretraining_sees_the_turned_views(scene_tiles, tmp_path):
    """augment_rot90 in a TrainConfig reaches the trainer's loader: the same seed trains on other views (other
    losses from the first step); false is the default."""
    import json

    from geofm.train.pretrain import TrainConfig, train

    def first_losses(name, **kw):
        tc = TrainConfig(model="test_micro", image_size=16, data=str(scene_tiles), steps=2, batch_size=8,
                         decoder_dim=32, decoder_depth=1, decoder_heads=2, precision="fp32", device="cpu",
                         log_every=1, **kw)
        train(tc, tmp_path / name)
        return [json.loads(ln)["loss"] for ln in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                if '"loss"' in ln]

    plain, again, turned = first_losses("plain"), first_losses("again", augment_rot90=False), \
        first_losses("turned", augment_rot90=True)
    assert plain == again and len(turned) == len(plain) == 2
    assert turned[0] != plain[0]
    # pretrain.crop_scale reaches the trainer's loader too (MAE's range is the default)
    assert first_losses("mae_range", crop_scale=[0.2, 1.0]) == plain != first_losses("milder", crop_scale=[0.9, 1.0])
