"""EuroSAT multispectral (eurosat_ms_zip) from synthetic 13-band GeoTIFFs, and RAR extraction (resisc45_rar).

No real EuroSAT_MS data is available offline: the GeoTIFFs here are synthetic (13-band uint16, UTM CRS, 64 px,
the official ``<Class>/<Class>_N.tif`` layout). The RAR archives are real (see fixtures/README.md); they need
bsdtar, 7z or unrar on PATH, else those tests are skipped.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geofm.data import DataError
from geofm.data.shards import TileDataset
from geofm.data.tiling import EUROSAT_MS_BANDS, RAR_TOOLS, extract_rar, tile_dataset

FIX = Path(__file__).parent / "fixtures"
CLASSES = ("AnnualCrop", "Forest", "River")


def _ms_tif(path: Path, value_of_band, bands=13, size=64, crs="EPSG:32632", seed=0) -> None:
    rng = np.random.default_rng(seed)
    data = np.stack([np.clip(value_of_band(b) + rng.integers(-50, 50, (size, size)), 0, 65535)
                     for b in range(bands)]).astype(np.uint16)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=bands, dtype="uint16",
                       crs=crs, transform=from_origin(500000 + 640 * seed, 5600000, 10, 10)) as dst:
        dst.write(data)


@pytest.fixture(scope="module")
def ms_raw(tmp_path_factory) -> Path:
    """EuroSAT_MS.zip look-alike: 3 classes x 5 images, band b ~ 500 * (b + 1), plus a 12-band and a bad file."""
    d = tmp_path_factory.mktemp("ms")
    tree = d / "tree" / "EuroSAT_MS"
    for k, cls in enumerate(CLASSES):
        (tree / cls).mkdir(parents=True)
        for i in range(1, 6):
            _ms_tif(tree / cls / f"{cls}_{i}.tif", lambda b: 500 * (b + 1), seed=10 * k + i,
                    crs="EPSG:32632" if i % 2 else "EPSG:32633")
    _ms_tif(tree / "River" / "River_90.tif", lambda b: 1000, bands=12)
    (tree / "Forest" / "Forest_91.tif").write_bytes(b"II*\x00 truncated")
    raw = d / "raw"
    raw.mkdir()
    with zipfile.ZipFile(raw / "EuroSAT_MS.zip", "w") as zf:
        for p in sorted(tree.rglob("*.tif")):
            zf.write(p, p.relative_to(d / "tree").as_posix())
    return raw


def test_eurosat_ms_fixed_scaling(ms_raw, tmp_path):
    stats = tile_dataset("ms", {"format": "eurosat_ms_zip", "train_ratio": 0.6}, ms_raw, tmp_path / "t", seed=0)
    assert stats["bands"] == 13 and stats["tile_size"] == 64 and stats["classes"] == list(CLASSES)
    assert stats["n_tiles"] == 15 and stats["splits"] == {"train": 9, "val": 0, "test": 6}
    assert stats["band_names"] == EUROSAT_MS_BANDS
    assert stats["scaling"]["mode"] == "fixed" and stats["scaling"]["high"] == [10000.0] * 13
    rej = {r["file"]: r["reason"] for r in stats["rejected"]}
    assert set(rej) == {"EuroSAT_MS.zip/EuroSAT_MS/River/River_90.tif", "EuroSAT_MS.zip/EuroSAT_MS/Forest/Forest_91.tif"}
    assert "12 bands, expected 13" in rej["EuroSAT_MS.zip/EuroSAT_MS/River/River_90.tif"]
    x = TileDataset(tmp_path / "t").as_tensor().numpy().astype(np.float64)
    assert x.shape == (15, 13, 64, 64)
    # 0..10000 -> 0..255: band b holds ~500 (b + 1) -> ~12.75 (b + 1); the top bands (>= 10000) saturate
    expect = np.minimum(500 * (np.arange(13) + 1) * 255 / 10000, 255)
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), expect, atol=1.0)
    gdf = gpd.read_parquet(tmp_path / "t" / "manifest.parquet")
    assert set(gdf["crs"]) == {"EPSG:32632", "EPSG:32633"}  # each image keeps its own UTM zone
    row = gdf.set_index("tile_id").loc["Forest_1"]  # written with seed 11: origin x = 500000 + 640 * 11
    x0 = 500000 + 640 * 11
    assert row["height"] == 64 and np.allclose(row.geometry.bounds, (x0, 5600000 - 640, x0 + 640, 5600000))


def test_eurosat_ms_percentile_and_band_select(ms_raw, tmp_path):
    cfg = {"format": "eurosat_ms_zip", "scaling": "percentile", "percentiles": [2, 98], "band_select": [4, 3, 2],
           "tile_size": 32}
    stats = tile_dataset("msp", cfg, ms_raw, tmp_path / "t", seed=0)
    assert stats["bands"] == 3 and stats["tile_size"] == 32 and stats["band_names"] == ["B04", "B03", "B02"]
    sc = stats["scaling"]
    assert sc["mode"] == "percentile" and sc["percentiles"] == [2, 98]
    for lo, hi, b in zip(sc["low"], sc["high"], (4, 3, 2)):  # percentiles of ~500 b +- 50 (train split,
        assert 500 * b - 50 < lo < 500 * b - 5 and 500 * b + 5 < hi < 500 * b + 50  # after resizing to 32 px)
    x = TileDataset(tmp_path / "t", split="train").as_tensor()
    assert x.shape[1:] == (3, 32, 32)
    assert int(x.min()) == 0 and int(x.max()) == 255 and 100 < float(x.float().mean()) < 155  # full range used
    with pytest.raises(DataError, match="scaling must be"):
        tile_dataset("bad", {"format": "eurosat_ms_zip", "scaling": "minmax"}, ms_raw, tmp_path / "b")


def _have_rar_tool() -> bool:
    return any(shutil.which(t) for t in RAR_TOOLS)


@pytest.mark.skipif(not _have_rar_tool(), reason=f"no RAR extractor on PATH ({', '.join(RAR_TOOLS)}); "
                    "install libarchive-tools for bsdtar")
@pytest.mark.parametrize("name", ["rar3-subdirs.rar", "rar5-subdirs.rar"])
def test_extract_real_rar(name, tmp_path):
    out = extract_rar(FIX / name, tmp_path / "x")
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert files["sub/dir1/file1.txt"] == b"file1\n" and files["sub/dir2/file2.txt"] == b"file2\n"
    assert "sub/with space/long fn.txt" in files and len(files) == 4  # incl. the non-ASCII directory's file
    assert (out / "sub" / "empty").is_dir()


@pytest.mark.skipif(not shutil.which("bsdtar"), reason="bsdtar not on PATH (apt-get install libarchive-tools)")
def test_rar_symlink_traversal_refused(tmp_path):
    dest = tmp_path / "a" / "x"
    with pytest.raises(DataError, match="rar5-evil-symlink-traversal.rar"):
        extract_rar(FIX / "rar5-evil-symlink-traversal.rar", dest)
    assert not (tmp_path / "a" / "pwned.txt").exists()
    assert not any(p.is_symlink() for p in tmp_path.rglob("*"))


def test_rar_without_extractor_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(FIX / "rar5-subdirs.rar", raw / "NWPU-RESISC45.rar")
    with pytest.raises(DataError, match=r"cannot extract .*NWPU-RESISC45\.rar: no RAR extractor.*libarchive-tools"):
        tile_dataset("r", {"format": "resisc45_rar"}, raw, tmp_path / "t")
    assert not (tmp_path / "t").exists()


@pytest.mark.skipif(not _have_rar_tool(), reason="no RAR extractor on PATH")
def test_resisc45_rar_without_images_is_a_clear_error(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(FIX / "rar3-subdirs.rar", raw / "NWPU-RESISC45.rar")  # real RAR, but text files only
    with pytest.raises(DataError, match="no images found for format resisc45_rar"):
        tile_dataset("r", {"format": "resisc45_rar"}, raw, tmp_path / "t")
