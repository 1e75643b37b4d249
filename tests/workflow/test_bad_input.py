"""Bad input through the DAG: files that cannot be used are named, good work is kept."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
from rasterio.transform import from_origin

from test_workflow import make_project, snakemake

pytestmark = pytest.mark.slow


def write_scene(path: Path, crs="EPSG:32633", size=128):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (3, size, size), dtype=np.uint8)
    kw = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", transform=from_origin(500000, 4600000, 10, 10))
    if crs:
        kw["crs"] = crs
    with rasterio.open(path, "w", **kw) as dst:
        dst.write(data)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "p").mkdir()
    proj = make_project(tmp_path / "p")
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    write_scene(scenes / "good.tif")
    write_scene(scenes / "nocrs.tif", crs=None)
    write_scene(tmp_path / "full.tif")
    raw = (tmp_path / "full.tif").read_bytes()
    (scenes / "truncated.tif").write_bytes(raw[: len(raw) // 3])
    cfg = yaml.safe_load((proj / "tiny.yaml").read_text())
    cfg["datasets"]["local_scenes"] = {"kind": "scenes", "source": "local", "path": str(scenes),
                                       "format": "geotiff_scenes", "tile_size": 32, "stride": 32, "split_block": 64}
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    shutil.copy(scenes / "nocrs.tif", only_bad)
    cfg["datasets"]["bad_scenes"] = {"kind": "scenes", "source": "local", "path": str(only_bad),
                                     "format": "geotiff_scenes", "tile_size": 32, "stride": 32}
    (proj / "bad.yaml").write_text(yaml.safe_dump(cfg))
    return proj


def test_unusable_files_are_listed_and_the_rest_tiled(project):
    snakemake(project, "--configfile=bad.yaml", "results/tiles/local_scenes/stats.json")
    stats = json.loads((project / "results/tiles/local_scenes/stats.json").read_text())
    assert stats["n_tiles"] == 16  # good.tif only: 128/32 squared
    rejected = pd.read_csv(project / "results/tiles/local_scenes/rejected.csv")
    reasons = dict(zip(rejected["file"].map(lambda f: Path(f).name), rejected["reason"]))
    assert set(reasons) == {"nocrs.tif", "truncated.tif"}
    assert "CRS" in reasons["nocrs.tif"] or "crs" in reasons["nocrs.tif"]


def test_all_bad_fails_naming_the_file_and_keeps_other_outputs(project):
    snakemake(project, "--configfile=bad.yaml", "results/tiles/local_scenes/stats.json")
    good = project / "results/tiles/local_scenes/stats.json"
    before = good.stat().st_mtime
    res = snakemake(project, "--configfile=bad.yaml", "--keep-going", "results/tiles/bad_scenes/stats.json",
                    "results/tiles/demo_scenes/stats.json", check=False)
    assert res.returncode != 0
    log = (project / "results/logs/tile/bad_scenes.log").read_text()
    assert "nocrs.tif" in log
    assert good.stat().st_mtime == before
    assert (project / "results/tiles/demo_scenes/stats.json").exists()
