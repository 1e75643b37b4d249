"""stages.run_download / run_tile with a full config dict (synthetic scenes + derived land cover)."""

from __future__ import annotations

import json

import pytest

from geofm.data import DataError
from geofm.data.stages import run_download, run_tile


def test_download_and_tile_synthetic_and_derived(tmp_path):
    cfg = {
        "resources": str(tmp_path / "resources"), "results": str(tmp_path / "results"), "seed": 0, "image_size": 32,
        "datasets": {
            "demo_scenes": {"kind": "scenes", "source": "synthetic", "format": "geotiff_scenes", "n_scenes": 1,
                            "size": 128, "tile_size": 32, "split_block": 64},
            "demo_landcover": {"kind": "classification", "source": "derived", "from": "demo_scenes",
                               "format": "derived_landcover", "stride": 16, "min_purity": 0.8, "train_ratio": 0.5},
        },
    }
    with pytest.raises(DataError, match="run the download stage"):
        run_tile(cfg, "demo_landcover")
    p = run_download(cfg, "demo_scenes")
    assert p == tmp_path / "resources" / "raw" / "demo_scenes" / "download.json" and p.exists()
    out = run_tile(cfg, "demo_scenes")
    assert out == tmp_path / "results" / "tiles" / "demo_scenes"
    assert json.loads((out / "stats.json").read_text())["n_tiles"] == 16
    run_download(cfg, "demo_landcover")
    out = run_tile(cfg, "demo_landcover")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["tile_size"] == 32 and len(stats["classes"]) == 5 and stats["n_tiles"] > 0
    assert (out / "manifest.parquet").exists()
    with pytest.raises(DataError, match="not in the config"):
        run_tile(cfg, "nope")
