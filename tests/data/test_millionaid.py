"""MillionAID in its official layout (generated trees): leaves at depths 2 and 3 under train/, a hierarchical
or a flat test/ folder, TorchGeo's archive names train.zip / test.zip."""
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geofm.data import DataError
from geofm.data.tiling import tile_dataset

# (level 1, level 2[, level 3]) leaves, as in the release: e.g. water_area/beach, agriculture_land/arable_land/dry_field
LEAVES = [("water_area", "beach"), ("water_area", "lake"), ("agriculture_land", "arable_land", "dry_field"),
          ("agriculture_land", "arable_land", "paddy_field"), ("transportation_land", "airport_area", "runway")]
PER_CLASS = 3


def _jpg(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path, quality=90)


def make_tree(root: Path, test: str) -> int:
    """train/ with every leaf; test/ hierarchical ('tree') or flat ('flat'). Returns the image count."""
    n = 0
    for split in ("train", "test"):
        for k, leaf in enumerate(LEAVES):
            for i in range(PER_CLASS):
                # the same file name in every leaf folder: must stay distinct images
                name = f"P{i:07d}.jpg"
                if split == "test" and test == "flat":
                    _jpg(root / "test" / f"P{100 * k + i:07d}.jpg", 1000 + 100 * k + i)
                else:
                    _jpg(root / split / Path(*leaf) / name, (0 if split == "train" else 500) + 100 * k + i)
                n += 1
    return n


def _cfg(n, **kw):
    return {"format": "millionaid_zip", "tile_size": 16, "train_ratio": 0.5, "expected_images": n,
            "expected_classes": len(LEAVES), **kw}


def _zip_split(root: Path, split: str, dest: Path) -> None:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted((root / split).rglob("*")):
            zf.write(p, p.relative_to(root).as_posix())


@pytest.mark.parametrize("test_layout", ["tree", "flat"])
@pytest.mark.parametrize("packed", [False, True])
def test_official_tree_every_image_and_leaf(tmp_path, test_layout, packed):
    tree = tmp_path / "tree"
    n = make_tree(tree, test_layout)
    raw = tmp_path / "raw"
    if packed:  # the two archives as TorchGeo names them, each unpacking to its split folder
        raw.mkdir()
        _zip_split(tree, "train", raw / "train.zip")
        _zip_split(tree, "test", raw / "test.zip")
    else:
        raw = tree
    stats = tile_dataset("millionaid", _cfg(n), raw, tmp_path / "tiles")
    man = pd.read_parquet(tmp_path / "tiles" / "manifest.parquet")
    assert stats["n_tiles"] == n == len(man)  # the pretraining set is the whole release
    assert man["source"].is_unique and man["tile_id"].is_unique
    assert stats["classes"] == sorted("/".join(leaf) for leaf in LEAVES)  # one class per leaf, by its path
    labelled = man[man["label"] >= 0]
    per_class = labelled.groupby("label_name").size()
    expect = PER_CLASS * (2 if test_layout == "tree" else 1)
    assert (per_class == expect).all() and len(per_class) == len(LEAVES)
    if test_layout == "flat":  # labels withheld: in pretraining, not in the labelled set
        unl = man[man["label"] < 0]
        assert len(unl) == PER_CLASS * len(LEAVES) and (unl["source"].str.contains("test/")).all()
    assert stats["pretrain_split"] is None and stats["count_check"]["shortfall"] == 0
    assert set(labelled["split"]) == {"train", "test"}
    assert stats["rejected"] == []


def test_shortfall_is_reported_and_below_threshold_an_error(tmp_path, caplog):
    tree = tmp_path / "tree"
    n = make_tree(tree, "tree")
    stats = tile_dataset("m", _cfg(n + 1, min_count_fraction=0.5), tree, tmp_path / "t1")
    assert stats["count_check"]["shortfall"] == 1 and stats["count_check"]["images"] == n
    assert any(f"{n} images" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError, match=rf"{n} images .* below min_count_fraction=0.99"):
        tile_dataset("m", _cfg(2 * n), tree, tmp_path / "t2")
    with pytest.raises(DataError, match="1 leaf classes missing"):
        tile_dataset("m", _cfg(n, expected_classes=len(LEAVES) + 1), tree, tmp_path / "t3")
    assert not (tmp_path / "t2").exists()


def test_image_off_the_leaf_depths_is_rejected_with_its_reason(tmp_path):
    tree = tmp_path / "tree"
    n = make_tree(tree, "tree")
    _jpg(tree / "train" / "water_area" / "stray.jpg", 7)
    stats = tile_dataset("m", _cfg(n), tree, tmp_path / "t")
    assert stats["n_tiles"] == n
    (rej,) = stats["rejected"]
    assert rej["file"] == "train/water_area/stray.jpg" and "1 folder(s) below train/" in rej["reason"]
    assert "stray.jpg" in (tmp_path / "t" / "rejected.csv").read_text()
