"""Step batches: the random numbers of a sample depend on (seed, step, row) only, and a rank's per-step work
outside the model is O(local batch) -- the same at world size 1 and at a simulated 1,024 ranks."""
import json
import statistics
import time

import numpy as np
import pandas as pd
import pytest
import torch

from geofm.data.loader import StepBatches
from geofm.data.sampler import mask_noise, permute, uniform


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 1000, 4097])
def test_permute_is_a_permutation_per_epoch(n):
    pos = np.arange(n)
    a = permute((0, 11), n, pos, np.zeros(n, dtype=np.int64))
    b = permute((0, 11), n, pos, np.ones(n, dtype=np.int64))
    assert sorted(a.tolist()) == list(range(n)) and sorted(b.tolist()) == list(range(n))
    if n >= 7:
        assert not np.array_equal(a, b) and not np.array_equal(a, pos)
        assert not np.array_equal(a, permute((1, 11), n, pos, np.zeros(n, dtype=np.int64)))
    # pointwise: any subset of positions gives the same values
    sub = pos[::3]
    np.testing.assert_array_equal(permute((0, 11), n, sub, np.zeros(len(sub), dtype=np.int64)), a[::3])


def test_uniform_is_per_row_and_uniform():
    rows = np.arange(512)
    u = uniform((3, 17, 5), rows, 196)
    assert u.dtype == torch.float32 and u.shape == (512, 196)
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    # column and row correlations near zero
    assert abs(float(torch.corrcoef(u[:, :2].T)[0, 1])) < 0.1
    assert torch.equal(uniform((3, 17, 5), rows[7::64], 196), u[7::64])
    assert not torch.equal(uniform((3, 17, 6), rows, 196), u)


def test_mask_noise_slices_of_the_global_batch():
    full = mask_noise(0, 4, 0, 64, 49, 0, 1)
    parts = [mask_noise(0, 4, 0, 64, 49, r, 8) for r in range(8)]
    for r in range(8):
        assert torch.equal(parts[r], full[r::8])
    assert not torch.equal(mask_noise(0, 5, 0, 64, 49, 0, 1), full)


def _tiles(tmp, n, size=16, bands=3):
    rng = np.random.default_rng(0)
    np.save(tmp / "shard-00000.npy", rng.integers(0, 256, (n, bands, size, size), dtype=np.uint8))
    pd.DataFrame({"tile_id": [f"t{i}" for i in range(n)], "split": "train", "shard": 0, "index": np.arange(n),
                  "label": np.zeros(n, dtype=np.int64)}).to_parquet(tmp / "manifest.parquet")
    (tmp / "stats.json").write_text(json.dumps({"mean": [0.5] * bands, "std": [0.25] * bands, "bands": bands,
                                                "tile_size": size}))
    return tmp


def test_an_epoch_visits_every_tile_once_at_any_world_size(tmp_path):
    tiles = _tiles(tmp_path, 96)
    for world in (1, 4):
        ranks = [StepBatches(tiles, 16, 16, rank=r, world=world, seed=2, split="train", steps=12)
                 for r in range(world)]
        for epoch in (0, 1):
            seen = np.concatenate([d.indices(s) for s in range(6 * epoch, 6 * epoch + 6) for d in ranks])
            assert sorted(seen.tolist()) == list(range(96)), (world, epoch)
        np.testing.assert_array_equal(np.sort(np.concatenate([d.indices(7) for d in ranks])),
                                      np.sort(ranks[0].global_indices(7)))


def test_non_model_step_time_does_not_grow_with_world_size(tmp_path):
    """Batch assembly (indices, tile gather, crop/flip/resize, normalisation) + mask noise of one rank's step:
    world size 1 vs 1,024 simulated ranks (rank 517), same local batch. CPU time of this process on one
    thread (other processes on a loaded machine do not count), interleaved pairs, median of the ratios."""
    local, n_patch = 8, 196
    tiles = _tiles(tmp_path, 1024 * local)
    small = StepBatches(tiles, local, 16, rank=0, world=1, seed=0, split="train", steps=10**6)
    big = StepBatches(tiles, local * 1024, 16, rank=517, world=1024, seed=0, split="train", steps=10**6)

    def step_cost(d, step, reps=20):
        t = time.process_time()
        for k in range(reps):
            d.batch(step + k)
            mask_noise(0, step + k, 0, d.global_batch, n_patch, d.rank, d.world)
        return time.process_time() - t

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        step_cost(small, 0), step_cost(big, 0)  # warm up
        ratios = []
        for rep in range(21):
            if rep % 2:
                ts, tb = step_cost(small, 100 * rep), step_cost(big, 100 * rep)
            else:
                tb, ts = step_cost(big, 100 * rep), step_cost(small, 100 * rep)
            ratios.append(tb / ts)
    finally:
        torch.set_num_threads(threads)
    med = statistics.median(ratios)
    assert 0.9 <= med <= 1.1, (med, ratios)
