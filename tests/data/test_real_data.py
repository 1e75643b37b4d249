"""Tiling real data from shared/data: UC Merced and EuroSAT subsets, RGB.byte.tif (nodata), Landsat 8 bands.

Skipped with a reason when shared/data is absent (set GEOFM_SHARED_DATA to point at it).
"""

from __future__ import annotations

import io
import shutil
import zipfile

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from geofm.data import DataError
from geofm.data.shards import TileDataset
from geofm.data.tiling import safe_extract, tile_dataset


def _check_stratified(gdf, n_classes, per_class, train_ratio):
    assert gdf["label"].nunique() == n_classes
    for _, g in gdf.groupby("label"):
        assert len(g) == per_class
        assert (g["split"] == "train").sum() == round(per_class * train_ratio)
        assert set(g["split"]) == {"train", "test"}


def test_ucmerced_subset(shared_file, tmp_path):
    z = shared_file("ucmerced_subset.zip")
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(z, raw / z.name)
    stats = tile_dataset("ucm", {"format": "ucmerced_zip", "tile_size": 64, "train_ratio": 0.75}, raw,
                         tmp_path / "t", seed=0)
    assert len(stats["classes"]) == 21 and stats["classes"][0] == "agricultural"
    assert stats["n_tiles"] == 252 and stats["rejected"] == [] and stats["bands"] == 3
    gdf = gpd.read_parquet(tmp_path / "t" / "manifest.parquet")
    _check_stratified(gdf, 21, 12, 0.75)
    assert gdf.geometry.isna().all() and gdf["crs"].isna().all()
    odd = gdf.set_index("tile_id").loc[["golfcourse04", "harbor10", "parkinglot09"], ["height", "width"]]
    assert odd.values.tolist() == [[251, 256], [257, 257], [256, 255]]  # original sizes, resized to 64
    ds = TileDataset(tmp_path / "t", split="test")
    x, y = ds[0]
    assert tuple(x.shape) == (3, 64, 64) and ds.classes[y] == gdf[gdf["split"] == "test"].iloc[0]["label_name"]
    assert (x.float().std() > 5).item()  # real image content


def test_eurosat_subset_and_corrupt_images(shared_file, tmp_path):
    z = shared_file("eurosat_rgb_subset.zip")
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(z, raw / z.name)
    stats = tile_dataset("es", {"format": "eurosat_zip", "tile_size": 64}, raw, tmp_path / "t", seed=1)
    assert len(stats["classes"]) == 10 and stats["n_tiles"] == 500 and stats["rejected"] == []
    _check_stratified(gpd.read_parquet(tmp_path / "t" / "manifest.parquet"), 10, 50, 0.8)

    # A rebuilt zip with 2 classes x 3 images, one truncated JPEG and one non-image: rejected, not fatal.
    raw2 = tmp_path / "raw2"
    raw2.mkdir()
    with zipfile.ZipFile(z) as src, zipfile.ZipFile(raw2 / "small.zip", "w") as dst:
        for cls in ("Forest", "River"):
            for i in (1, 2, 3):
                dst.writestr(f"2750/{cls}/{cls}_{i}.jpg", src.read(f"2750/{cls}/{cls}_{i}.jpg"))
        dst.writestr("2750/River/River_99.jpg", src.read("2750/River/River_4.jpg")[:700])
        dst.writestr("2750/Forest/Forest_98.jpg", b"not a jpeg at all")
    stats = tile_dataset("es2", {"format": "eurosat_zip", "tile_size": 32}, raw2, tmp_path / "t2")
    assert stats["n_tiles"] == 6 and stats["classes"] == ["Forest", "River"]
    rej = {r["file"]: r["reason"] for r in stats["rejected"]}
    assert set(rej) == {"small.zip/2750/River/River_99.jpg", "small.zip/2750/Forest/Forest_98.jpg"}
    assert all(name in reason for name, reason in rej.items())


def test_safe_extract_refuses_path_traversal(tmp_path):
    bad = io.BytesIO()
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("ok/a.txt", b"a")
        zf.writestr("../evil.txt", b"x")
    (tmp_path / "bad.zip").write_bytes(bad.getvalue())
    with pytest.raises(DataError, match="unsafe path"):
        safe_extract(tmp_path / "bad.zip", tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_rgb_byte_nodata(shared_file, tmp_path):
    src_path = shared_file("geotiff/RGB.byte.tif")
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(src_path, raw / "RGB.byte.tif")
    stats = tile_dataset("rgb", {"format": "geotiff_scenes", "tile_size": 64, "min_valid_fraction": 0.8,
                                 "split_block": 128}, raw, tmp_path / "t", seed=0)
    gdf = gpd.read_parquet(tmp_path / "t" / "manifest.parquet")
    full_grid = (718 // 64) * (791 // 64)
    assert 0 < stats["n_tiles"] < full_grid  # nodata corners were skipped
    assert gdf.crs.to_epsg() == 32618
    with rasterio.open(src_path) as src:
        assert src.nodata == 0
        for _, row in gdf.iterrows():
            w = rasterio.windows.Window(row["col_off"], row["row_off"], 64, 64)
            valid = (src.read_masks(window=w) > 0).all(axis=0).mean()
            assert valid >= 0.8
            np.testing.assert_allclose(row.geometry.bounds, rasterio.windows.bounds(w, src.transform))
    assert all(stats["splits"][s] > 0 for s in ("train", "val", "test"))


def test_landsat8_band_stack(shared_file, tmp_path):
    d = shared_file("geotiff/landsat8_LC80200392015216LGN00_crop")
    raw = tmp_path / "raw"
    shutil.copytree(d, raw)
    stats = tile_dataset("l8", {"format": "geotiff_scenes", "tile_size": 64, "band_files": ["l8_B*.tif"],
                                "split_block": 128}, raw, tmp_path / "t", seed=0)
    assert stats["bands"] == 7 and stats["rejected"] == []
    assert stats["n_tiles"] == (603 // 64) * (627 // 64)
    (key, scaling), = stats["scaling"].items()
    assert key.split("+") == [f"l8_B{i}.tif" for i in range(1, 8)]
    assert all(lo < hi for lo, hi in zip(scaling["p2"], scaling["p98"]))
    gdf = gpd.read_parquet(tmp_path / "t" / "manifest.parquet")
    assert gdf.crs.to_epsg() == 32616
    x = TileDataset(tmp_path / "t").as_tensor()
    assert x.shape[1] == 7 and x.dtype.itemsize == 1
    # 2-98 % stretch uses the whole 0..255 range
    assert int(x.min()) == 0 and int(x.max()) == 255
    # 'band_select' picks an RGB subset of the stack (1-based)
    stats = tile_dataset("l8rgb", {"format": "geotiff_scenes", "tile_size": 64, "band_files": ["l8_B*.tif"],
                                   "band_select": [4, 3, 2]}, raw, tmp_path / "t3")
    assert stats["bands"] == 3


def test_image_folder_directory(shared_file, tmp_path):
    z = shared_file("eurosat_rgb_subset.zip")
    raw = tmp_path / "raw" / "tree"
    with zipfile.ZipFile(z) as zf:
        for cls in ("Highway", "Pasture", "SeaLake"):
            for i in range(1, 6):
                p = raw / cls / f"{cls}_{i}.jpg"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(zf.read(f"2750/{cls}/{cls}_{i}.jpg"))
    stats = tile_dataset("f", {"format": "image_folder", "tile_size": 48, "train_ratio": 0.6}, tmp_path / "raw",
                         tmp_path / "t")
    assert stats["classes"] == ["Highway", "Pasture", "SeaLake"] and stats["n_tiles"] == 15
    assert stats["splits"] == {"train": 9, "val": 0, "test": 6}
    gdf = gpd.read_parquet(tmp_path / "t" / "manifest.parquet")
    assert gdf["source"].iloc[0] == "tree/Highway/Highway_1.jpg"


def test_band_stack_linked_by_hand(shared_file, tmp_path):
    """A by-hand band-stack folder is linked into raw_dir (not copied); band_files still finds its bands."""
    from geofm.data.download import fetch_dataset

    d = shared_file("geotiff/landsat8_LC80200392015216LGN00_crop")
    raw = tmp_path / "raw"
    raw.mkdir()
    fetch_dataset("l8", {"source": "local", "path": str(d)}, raw)
    assert (raw / d.name).is_symlink()
    stats = tile_dataset("l8", {"format": "geotiff_scenes", "tile_size": 64, "band_files": ["l8_B*.tif"],
                                "band_select": [4, 3, 2]}, raw, tmp_path / "t")
    assert stats["bands"] == 3 and stats["n_tiles"] == (603 // 64) * (627 // 64)
