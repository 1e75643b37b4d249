"""tile_dataset on synthetic scenes: counts, manifest, CRS, spatial split disjointness, derived labels,
rejections (no CRS, truncated), shard capping and atomic replacement of the output directory."""

from __future__ import annotations

import csv
import json
import shutil

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.ops import unary_union

from geofm.data import DataError
from geofm.data.shards import TileDataset
from geofm.data.tiling import MANIFEST_COLUMNS, tile_dataset


def test_footprint_of_a_rotated_raster_is_the_window_corners():
    """A window's footprint is its four corners mapped by the raster's full affine transform (shear and rotation
    terms included, as in a rotated GeoTIFF), checked against rasterio's own mapping."""
    from affine import Affine
    from rasterio.transform import xy

    from geofm.data.tiling.builder import footprint

    t = Affine(28.7, 8.8, 500000.0, 9.4, -19.1, 4200000.0)  # rotated and sheared: b != d
    got = list(footprint(t, 5, 7, 32, 48).exterior.coords)[:4]
    rows, cols = [5, 5, 37, 37], [7, 55, 55, 7]
    want = list(zip(*xy(t, rows, cols, offset="ul")))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_scene_tiles_manifest_and_stats(scene_tiles, scenes_dir):
    stats = json.loads((scene_tiles / "stats.json").read_text())
    assert stats["n_tiles"] == 2 * (256 // 32) ** 2
    assert stats["bands"] == 3 and stats["tile_size"] == 32 and stats["classes"] == []
    assert len(stats["mean"]) == 3 and all(0 < m < 1 for m in stats["mean"]) and all(s > 0 for s in stats["std"])
    assert stats["rejected"] == [] and set(stats["splits"]) == {"train", "val", "test"}
    assert all(stats["splits"][s] > 0 for s in ("train", "val", "test"))

    gdf = gpd.read_parquet(scene_tiles / "manifest.parquet")
    assert list(gdf.columns) == MANIFEST_COLUMNS
    assert gdf.crs.to_epsg() == 32633 and set(gdf["crs"]) == {"EPSG:32633"}
    assert (gdf["label"] == -1).all() and gdf["tile_id"].is_unique
    shard = np.load(scene_tiles / "shard-00000.npy", mmap_mode="r")
    assert shard.dtype == np.uint8 and shard.shape[1:] == (3, 32, 32)

    row = gdf.iloc[37]
    with rasterio.open(scenes_dir / row["source"]) as src:
        window = rasterio.windows.Window(row["col_off"], row["row_off"], 32, 32)
        expected = src.read(window=window)
        bounds = rasterio.windows.bounds(window, src.transform)
    np.testing.assert_allclose(row.geometry.bounds, bounds)
    ds = TileDataset(scene_tiles)
    x, y = ds[37]
    assert x.dtype.is_floating_point is False and tuple(x.shape) == (3, 32, 32) and y == -1
    np.testing.assert_array_equal(x.numpy(), expected)
    # train statistics match the train tiles
    train = TileDataset(scene_tiles, split="train").as_tensor().double() / 255
    np.testing.assert_allclose(train.mean(dim=(0, 2, 3)).numpy(), stats["mean"], rtol=1e-6)
    assert len(TileDataset(scene_tiles, "train")) + len(TileDataset(scene_tiles, "val")) + \
        len(TileDataset(scene_tiles, "test")) == len(ds)


def test_spatial_splits_are_disjoint_with_overlapping_tiles(scenes_dir, tmp_path):
    stats = tile_dataset("demo", {"format": "geotiff_scenes", "tile_size": 32, "stride": 16, "split_block": 64,
                                  "val_fraction": 0.2, "test_fraction": 0.2}, scenes_dir, tmp_path / "t", seed=5)
    gdf = gpd.read_parquet(tmp_path / "t" / "manifest.parquet")
    assert stats["dropped_straddling_tiles"] > 0
    assert stats["n_tiles"] + stats["dropped_straddling_tiles"] == 2 * 15 * 15
    for scene, g in gdf.groupby("source"):
        areas = {s: unary_union(list(g[g["split"] == s].geometry)) for s in ("train", "val", "test")}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            assert areas[a].intersection(areas[b]).area == pytest.approx(0.0, abs=1e-6), (scene, a, b)
    # seeded: same seed same splits, other seed other splits
    tile_dataset("demo", {"format": "geotiff_scenes", "tile_size": 32, "stride": 16, "split_block": 64,
                          "val_fraction": 0.2, "test_fraction": 0.2}, scenes_dir, tmp_path / "t2", seed=5)
    again = gpd.read_parquet(tmp_path / "t2" / "manifest.parquet")
    assert list(again["split"]) == list(gdf["split"])
    tile_dataset("demo", {"format": "geotiff_scenes", "tile_size": 32, "stride": 16, "split_block": 64,
                          "val_fraction": 0.2, "test_fraction": 0.2}, scenes_dir, tmp_path / "t3", seed=6)
    other = gpd.read_parquet(tmp_path / "t3" / "manifest.parquet")
    assert list(other["split"]) != list(gdf["split"])


def test_derived_landcover_labels(scenes_dir, tmp_path):
    (tmp_path / "raw_lc").mkdir()
    stats = tile_dataset("lc", {"source": "derived", "from": "demo", "tile_size": 32, "stride": 16,
                                "max_per_class": 15, "train_ratio": 0.6}, tmp_path / "raw_lc", tmp_path / "lc",
                         parent_raw_dir=scenes_dir, seed=0)
    classes = json.loads((scenes_dir / "classes.json").read_text())["classes"]
    assert stats["classes"] == classes and stats["format"] == "derived_landcover"
    gdf = gpd.read_parquet(tmp_path / "lc" / "manifest.parquet")
    counts = gdf["label"].value_counts()
    assert counts.max() <= 15 and len(counts) >= 4
    ds = TileDataset(tmp_path / "lc")
    for i in range(0, len(gdf), 7):
        row = gdf.iloc[i]
        with rasterio.open(scenes_dir / row["source"].replace(".tif", "_labels.tif")) as src:
            lab = src.read(1, window=rasterio.windows.Window(row["col_off"], row["row_off"], 32, 32))
        binc = np.bincount(lab.ravel(), minlength=len(classes))
        assert binc.argmax() == row["label"] and binc.max() / lab.size >= 0.9
        assert row["label_name"] == classes[row["label"]]
        assert ds[i][1] == row["label"]
    for k, g in gdf.groupby("label"):  # stratified: each class in train and test, ~60 % train
        n_train = (g["split"] == "train").sum()
        assert n_train == round(len(g) * 0.6) or len(g) < 2
        if len(g) >= 2:
            assert (g["split"] == "test").sum() >= 1


def _no_crs_tif(path):
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8") as dst:
        dst.write(np.full((3, 64, 64), 100, np.uint8))


def test_rejects_missing_crs_and_truncated(scenes_dir, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(scenes_dir / "scene_000.tif", raw / "good.tif")
    _no_crs_tif(raw / "nocrs.tif")
    data = (scenes_dir / "scene_001.tif").read_bytes()
    (raw / "truncated.tif").write_bytes(data[: len(data) // 3])
    shutil.copy(scenes_dir / "scene_000_labels.tif", raw / "good_labels.tif")  # ignored as a scene
    stats = tile_dataset("r", {"format": "geotiff_scenes", "tile_size": 32}, raw, tmp_path / "t")
    rej = {r["file"]: r["reason"] for r in stats["rejected"]}
    assert set(rej) == {"nocrs.tif", "truncated.tif"}
    assert "nocrs.tif" in rej["nocrs.tif"] and "CRS" in rej["nocrs.tif"]
    assert "truncated.tif" in rej["truncated.tif"]
    assert stats["n_tiles"] == 64
    with open(tmp_path / "t" / "rejected.csv") as f:
        assert {r["file"] for r in csv.DictReader(f)} == {"nocrs.tif", "truncated.tif"}
    gdf = gpd.read_parquet(tmp_path / "t" / "manifest.parquet")
    assert set(gdf["source"]) == {"good.tif"}


def test_all_rejected_raises_and_keeps_previous_output(scene_tiles, tmp_path):
    out = tmp_path / "t"
    shutil.copytree(scene_tiles, out)
    before = (out / "stats.json").read_text()
    raw = tmp_path / "raw"
    raw.mkdir()
    _no_crs_tif(raw / "a.tif")
    (raw / "b.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(DataError) as ei:
        tile_dataset("r", {"format": "geotiff_scenes", "tile_size": 32}, raw, out)
    assert "a.tif" in str(ei.value) and "b.tif" in str(ei.value)
    assert (out / "stats.json").read_text() == before  # previous result untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dirs left behind


def test_shard_cap_and_replace(scenes_dir, tmp_path):
    out = tmp_path / "t"
    tile_dataset("d", {"format": "geotiff_scenes", "tile_size": 32, "shard_max_mb": 0.1}, scenes_dir, out)
    shards = sorted(out.glob("shard-*.npy"))
    per = int(0.1 * 1024 * 1024) // (3 * 32 * 32)
    assert len(shards) == -(-128 // per) and all(np.load(s, mmap_mode="r").shape[0] <= per for s in shards)
    ds = TileDataset(out)
    whole = ds.as_tensor()
    assert whole.shape == (128, 3, 32, 32)
    idx = np.array([127, 0, 64, 5])
    np.testing.assert_array_equal(ds.get_batch(idx).numpy(), whole.numpy()[idx])
    # re-tiling replaces the directory in place (no stale shards)
    tile_dataset("d", {"format": "geotiff_scenes", "tile_size": 32}, scenes_dir, out)
    assert sorted(p.name for p in out.glob("shard-*.npy")) == ["shard-00000.npy"]


def test_unknown_format_and_missing_raw(tmp_path):
    with pytest.raises(DataError, match="unknown format"):
        tile_dataset("x", {"format": "nope", "tile_size": 8}, tmp_path, tmp_path / "o")
    with pytest.raises(DataError, match="does not exist"):
        tile_dataset("x", {"format": "geotiff_scenes", "tile_size": 8}, tmp_path / "missing", tmp_path / "o")


def test_scene_without_a_valid_window_is_listed_in_rejected_csv(tmp_path):
    import csv

    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    from geofm.data.tiling import tile_dataset

    raw = tmp_path / "raw"
    raw.mkdir()
    prof = {"driver": "GTiff", "width": 128, "height": 128, "count": 3, "dtype": "uint8", "nodata": 0,
            "crs": "EPSG:32633", "transform": from_origin(500000, 4000000, 10, 10)}
    rng = np.random.default_rng(0)
    with rasterio.open(raw / "good.tif", "w", **prof) as dst:
        dst.write(rng.integers(1, 255, (3, 128, 128), dtype=np.uint8))
    with rasterio.open(raw / "empty.tif", "w", **prof) as dst:  # every pixel nodata
        dst.write(np.zeros((3, 128, 128), dtype=np.uint8))
    stats = tile_dataset("s", {"format": "geotiff_scenes", "tile_size": 32, "split_block": 64,
                               "val_fraction": 0.0, "test_fraction": 0.0}, raw, tmp_path / "tiles")
    assert stats["n_tiles"] == 16
    rows = list(csv.DictReader(open(tmp_path / "tiles" / "rejected.csv")))
    assert [r["file"] for r in rows] == ["empty.tif"] and "no 32px window" in rows[0]["reason"]
