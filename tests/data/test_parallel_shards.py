"""Tiling image folders in parallel processes, resumed per shard after an interrupted run."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geofm.data.parallel_shards import decode_shards, shard_size
from geofm.data.tiling import decode_image, tile_dataset


def _folder(root: Path, n_per_class=5, classes=("farm", "forest", "river")) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            f = root / c / f"{c}_{i}.png"
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(f)
            files.append(f)
    (root / "river" / "broken.png").write_bytes(b"not a png")
    return files


CFG = {"source": "local", "format": "image_folder", "tile_size": 16, "train_ratio": 0.6,
       "shard_max_mb": 3 * 16 * 16 * 4 / 2**20}  # 4 tiles per shard


@pytest.mark.parametrize("workers", [1, 3])
def test_parallel_tiling_equals_one_process(tmp_path, workers):
    raw = tmp_path / "raw"
    _folder(raw / "tree")
    ref = tile_dataset("d", {**CFG, "workers": 1}, raw, tmp_path / "ref")
    out = tile_dataset("d", {**CFG, "workers": workers}, raw, tmp_path / "par")
    assert out["n_tiles"] == ref["n_tiles"] == 15 and len(out["rejected"]) == 1
    assert "broken.png" in out["rejected"][0]["file"] and out["mean"] == ref["mean"]
    a = pd.read_parquet(tmp_path / "ref" / "manifest.parquet")
    b = pd.read_parquet(tmp_path / "par" / "manifest.parquet")
    pd.testing.assert_frame_equal(a.drop(columns="geometry"), b.drop(columns="geometry"))
    assert sorted(p.name for p in (tmp_path / "par").glob("shard-*.npy")) == [f"shard-0000{i}.npy" for i in range(4)]
    for _, r in b.iterrows():  # every row points at its own tile
        tile = np.load(tmp_path / "par" / f"shard-{r['shard']:05d}.npy")[r["index"]]
        want, _ = decode_image(str(raw / r["source"]), 16)
        assert np.array_equal(tile, want)
    assert not (tmp_path / ".par.shards").exists()  # the per-shard work is gone once the stage is done


_CALLS = []


def _counting_decode(path, stop_after=None):
    _CALLS.append(path)
    if stop_after is not None and len(_CALLS) > stop_after:
        raise KeyboardInterrupt  # the job dies (walltime, node failure) mid-shard
    return decode_image(path, 16)


def test_interrupted_run_resumes_per_shard(tmp_path):
    from functools import partial

    files = sorted(str(f) for f in _folder(tmp_path / "tree") if f.suffix == ".png")
    per = shard_size(3, 16, CFG["shard_max_mb"])
    assert per == 4
    ident = {"sources": files}
    work = tmp_path / "work"
    _CALLS.clear()
    with pytest.raises(KeyboardInterrupt):
        decode_shards(files, partial(_counting_decode, stop_after=9), per, work, 1, ident)
    assert sorted(p.name for p in work.glob("shard-*.json")) == ["shard-00000.json", "shard-00001.json"]
    _CALLS.clear()
    groups = decode_shards(files, _counting_decode, per, work, 1, ident, log=lambda m: None)
    assert _CALLS == files[8:]  # only the shards that were not finished
    assert [len(m) for _, m in groups] == [4, 4, 4, 3] and all(m["ok"] for _, ms in groups for m in ms)
    # other items: nothing is reused
    _CALLS.clear()
    decode_shards(files[:-1], _counting_decode, per, work, 1, {"sources": files[:-1]}, log=lambda m: None)
    assert _CALLS == files[:-1]
    assert json.loads((work / "plan.json").read_text())["n_items"] == 14


def _pid_decode(path):
    import os
    import time

    time.sleep(0.1)  # a shard takes 0.4 s: the pool's other workers are up before one could take them all
    tile, meta = decode_image(path, 16)

    return tile, {**meta, "pid": os.getpid()}


def test_workers_really_decode_in_other_processes(tmp_path):
    """``workers: 3`` decodes the shards in a pool of processes (not in this one, and not all in one)."""
    import os

    files = sorted(str(f) for f in _folder(tmp_path / "raw"))
    got = decode_shards(files, _pid_decode, 4, tmp_path / "work", 3, {"test": "pids"}, log=lambda *_: None)
    pids = {m["pid"] for _, metas in got for m in metas if m.get("ok")}
    assert len(got) == 4 and os.getpid() not in pids and len(pids) > 1, pids
    one = decode_shards(files, _pid_decode, 4, tmp_path / "work1", 1, {"test": "pid"}, log=lambda *_: None)
    assert {m["pid"] for _, metas in one for m in metas if m.get("ok")} == {os.getpid()}
