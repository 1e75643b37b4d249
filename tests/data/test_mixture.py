"""A mixed pretraining set (source: mixture): the tiles of several tiled datasets in one tiles directory."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geofm.config import ConfigError, validate
from geofm.data import DataError
from geofm.data.mixture import tile_mixture
from geofm.data.shards import TileDataset
from geofm.data.tiling import tile_dataset


def _folder(root, n_per_class, size, value, mode="RGB"):
    for c in ("a", "b"):
        for i in range(n_per_class):
            p = root / c / f"{c}{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new(mode, (size, size), value if mode == "RGB" else value[0]).save(p)
    return root


def test_mixture_takes_train_or_all_tiles_resized_with_its_own_stats(tmp_path):
    tile_dataset("p1", {"format": "image_folder", "tile_size": 16, "train_ratio": 0.5},
                 _folder(tmp_path / "r1", 4, 16, (200, 0, 0)), tmp_path / "t" / "p1")
    tile_dataset("p2", {"format": "image_folder", "tile_size": 32, "train_ratio": 0.5},
                 _folder(tmp_path / "r2", 3, 32, (0, 0, 100)), tmp_path / "t" / "p2")
    stats = tile_mixture("mix", {"parts": {"p1": "train", "p2": "all"}, "tile_size": 8},
                         {"p1": tmp_path / "t" / "p1", "p2": tmp_path / "t" / "p2"}, tmp_path / "t" / "mix")
    assert stats["parts"] == {"p1": {"tiles": 4, "split": "train"}, "p2": {"tiles": 6, "split": "all"}}
    ds = TileDataset(tmp_path / "t" / "mix", split="train")
    assert len(ds) == 10 and ds.tile_size == 8 and (ds.labels == -1).all()
    x = ds.as_tensor().numpy() / 255.0
    np.testing.assert_allclose(stats["mean"], x.mean(axis=(0, 2, 3)), atol=1e-6)  # the mixture's own stats
    man = pd.read_parquet(tmp_path / "t" / "mix" / "manifest.parquet")
    assert man["tile_id"].str.startswith(("p1/", "p2/")).all() and man["tile_id"].is_unique
    p1_train = set(pd.read_parquet(tmp_path / "t" / "p1" / "manifest.parquet").query("split == 'train'")["tile_id"])
    assert {t[3:] for t in man["tile_id"] if t.startswith("p1/")} == p1_train  # no test image of p1


def test_the_mixture_does_not_depend_on_the_order_of_its_parts(tmp_path):
    """The workflow gives the tile stage its config with sorted keys, a user running the stage by hand the
    YAML's order: both must get the same tiles in the same order, with the same statistics (before, a hand run
    of config/demo-real.yaml and the rule pretrained on differently ordered sets)."""
    tile_dataset("p1", {"format": "image_folder", "tile_size": 16, "train_ratio": 0.5},
                 _folder(tmp_path / "r1", 4, 16, (200, 10, 0)), tmp_path / "t" / "p1")
    tile_dataset("p2", {"format": "image_folder", "tile_size": 16, "train_ratio": 0.5},
                 _folder(tmp_path / "r2", 3, 16, (0, 30, 100)), tmp_path / "t" / "p2")
    dirs = {"p1": tmp_path / "t" / "p1", "p2": tmp_path / "t" / "p2"}
    one = tile_mixture("mix", {"parts": {"p2": "all", "p1": "train"}, "tile_size": 8}, dirs, tmp_path / "a")
    two = tile_mixture("mix", {"parts": {"p1": "train", "p2": "all"}, "tile_size": 8}, dirs, tmp_path / "b")
    assert json.dumps(one) == json.dumps(two)
    ids = [pd.read_parquet(tmp_path / d / "manifest.parquet")["tile_id"].tolist() for d in ("a", "b")]
    assert ids[0] == ids[1] and ids[0][0].startswith("p1/")
    a, b = (TileDataset(tmp_path / d, split="train").as_tensor().numpy() for d in ("a", "b"))
    np.testing.assert_array_equal(a, b)


def test_mixture_errors_name_the_part(tmp_path):
    tile_dataset("p1", {"format": "image_folder", "tile_size": 16}, _folder(tmp_path / "r1", 2, 16, (9, 9, 9)),
                 tmp_path / "t" / "p1")
    with pytest.raises(DataError, match="part 'p2' has no tiles"):
        tile_mixture("mix", {"parts": {"p1": "all", "p2": "all"}, "tile_size": 8},
                     {"p1": tmp_path / "t" / "p1", "p2": tmp_path / "t" / "p2"}, tmp_path / "t" / "mix")
    assert not (tmp_path / "t" / "mix").exists()
    base = {"datasets": {"p1": {"kind": "classification", "source": "local", "path": "x", "format": "image_folder"},
                         "mix": {"kind": "scenes", "source": "mixture", "format": "mixture",
                                 "parts": {"p1": "train", "nope": "all"}, "tile_size": 8}},
            "pretrain_dataset": "mix", "eval_datasets": ["p1"], "models": ["demo_tiny"], "image_size": 32,
            "pretrain": {}, "evaluate": {"protocols": ["knn"]},
            "profile": {"models": ["demo_tiny"], "strategies": ["DDP"], "nodes": [1]}}
    with pytest.raises(ConfigError, match=r"datasets.mix.parts .*'nope'"):
        validate(json.loads(json.dumps(base)))
    base["datasets"]["mix"]["parts"] = {"p1": "train"}
    assert validate(base)["pretrain_dataset"] == "mix"
