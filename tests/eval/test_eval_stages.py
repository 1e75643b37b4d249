"""End-to-end evaluate stage on a tiny tiles directory written as the tile stage writes it
(docs/ARCHITECTURE.md: shard-00000.npy, manifest.parquet, stats.json)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from geofm.eval import stages

CLASSES = ["water", "forest", "urban"]


def write_tiles(root, n_train=24, n_test=12, bands=3, size=8, seed=0):
    """Class c has band c bright: separable by per-band means."""
    rng = np.random.default_rng(seed)
    tiles, rows = [], []
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            c = i % len(CLASSES)
            t = rng.integers(0, 80, size=(bands, size, size)).astype(np.uint8)
            t[c] += 150
            rows.append(dict(tile_id=f"{split}-{i}", source="fixture", row_off=0, col_off=0, height=size,
                             width=size, crs="EPSG:4326", label=c, label_name=CLASSES[c], split=split,
                             shard=0, index=len(tiles)))
            tiles.append(t)
    d = root / "tiles" / "fix"
    d.mkdir(parents=True)
    arr = np.stack(tiles)
    np.save(d / "shard-00000.npy", arr)
    pd.DataFrame(rows).to_parquet(d / "manifest.parquet")
    train = arr[: n_train] / 255.0
    (d / "stats.json").write_text(json.dumps({
        "mean": train.mean(axis=(0, 2, 3)).tolist(), "std": train.std(axis=(0, 2, 3)).tolist(),
        "bands": bands, "tile_size": size, "classes": CLASSES, "n_tiles": len(tiles), "rejected": []}))
    return d


class StandIn(nn.Module):
    """Tiny encoder: 1x1 conv then spatial mean. ``informative`` = identity-like weights."""

    def __init__(self, in_chans=3, dim=6, informative=True, seed=0):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, 1)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            if informative:
                self.proj.weight.zero_()
                for i in range(in_chans):
                    self.proj.weight[i, i] = 1.0
            else:
                self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=g))
            self.proj.bias.zero_()

    def forward_features(self, x, pool="mean"):
        return self.proj(x).mean(dim=(2, 3))


@pytest.fixture
def env(tmp_path, monkeypatch):
    write_tiles(tmp_path)
    enc_path = tmp_path / "pretrain" / "standin" / "encoder.pt"
    enc_path.parent.mkdir(parents=True)
    enc_path.write_bytes(b"stand-in")
    built = []

    def fake_load(path):
        return StandIn(), {"model": "standin", "step": 123, "image_size": 8, "in_chans": 3}

    def fake_build(name, image_size, in_chans, seed=0):
        built.append((name, image_size, in_chans, seed))
        return StandIn(in_chans, informative=False, seed=seed)

    monkeypatch.setattr(stages, "load_encoder", fake_load)
    monkeypatch.setattr(stages, "build_encoder", fake_build)
    cfg = {"results": str(tmp_path), "seed": 5, "image_size": 8,
           "evaluate": {"linprobe_epochs": 30, "linprobe_lr": 0.5, "batch_size": 16, "knn_k": 5,
                        "knn_temperature": 0.1, "device": "cpu", "pool": "mean", "linprobe_solver": "sgd",
                        "linprobe_augment": False, "linprobe_batch_size": 16}}
    return cfg, tmp_path, enc_path, built


@pytest.mark.parametrize("protocol", ["knn", "linprobe"])
def test_run_evaluate_end_to_end(env, protocol):
    cfg, root, enc_path, built = env
    out = root / "eval" / protocol / "standin" / "fix.json"
    rec = stages.run_evaluate(cfg, protocol, "standin", "fix", enc_path, out)
    on_disk = json.loads(out.read_text())
    assert on_disk == json.loads(json.dumps(rec))
    assert on_disk["protocol"] == protocol and on_disk["model"] == "standin" and on_disk["dataset"] == "fix"
    assert on_disk["checkpoint_step"] == 123
    from geofm.config import section_defaults

    # the effective settings: the schema's defaults, the given keys, and the keys that default to another's value
    assert on_disk["config"] == {**section_defaults("evaluate"), **cfg["evaluate"], "image_size": 8,
                                 "finetune_batch_size": 16}
    for which in ("pretrained", "random_init"):
        r = on_disk[which]
        assert set(r) >= {"top1", "top5", "per_class", "n_train", "n_test"}
        assert (r["n_train"], r["n_test"]) == (24, 12)
        assert set(r["per_class"]) == set(CLASSES)
        assert r["top5"] == 1.0  # 3 classes
    assert on_disk["pretrained"]["top1"] >= 0.9
    assert built == [("standin", 8, 3, 5)]  # random init: same architecture, seeded from cfg
    cm = pd.read_csv(root / "eval" / protocol / "standin" / "fix.confusion.csv", index_col=0)
    assert list(cm.index) == CLASSES and list(cm.columns) == CLASSES
    assert cm.values.sum() == 12
    assert (root / "eval" / protocol / "standin" / "fix.confusion.png").stat().st_size > 0
    assert not list(out.parent.glob(".*tmp*"))  # atomic writes left nothing behind


def test_feature_cache_reused(env, monkeypatch):
    cfg, root, enc_path, _ = env
    out = root / "eval" / "knn" / "standin" / "fix.json"
    first = stages.run_evaluate(cfg, "knn", "standin", "fix", enc_path, out)
    assert list((root / "eval" / "features" / "standin").rglob("fix.train.pt"))

    def boom(*a, **k):
        raise AssertionError("features should come from the cache")

    monkeypatch.setattr(StandIn, "forward_features", boom)
    second = stages.run_evaluate(cfg, "knn", "standin", "fix", enc_path, out)
    assert second["pretrained"]["top1"] == first["pretrained"]["top1"]


def test_unknown_protocol(env):
    cfg, root, enc_path, _ = env
    with pytest.raises(ValueError, match="bogus"):
        stages.run_evaluate(cfg, "bogus", "standin", "fix", enc_path, root / "x.json")


def test_missing_checkpoint_names_file(env):
    cfg, root, _, _ = env
    missing = root / "pretrain" / "nope" / "encoder.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        stages.run_evaluate(cfg, "knn", "nope", "fix", missing, root / "x.json")


def test_wrong_model_names_file(env):
    cfg, root, enc_path, _ = env
    with pytest.raises(stages.EvalError, match="(?s)encoder.pt.*'standin'.*'demo_tiny'"):
        stages.run_evaluate(cfg, "knn", "demo_tiny", "fix", enc_path, root / "x.json")
    assert not (root / "x.json").exists()


def test_image_size_mismatch(env):
    cfg, root, enc_path, _ = env
    cfg["evaluate"]["image_size"] = 16
    with pytest.raises(stages.EvalError, match="image_size 8"):
        stages.run_evaluate(cfg, "knn", "standin", "fix", enc_path, root / "x.json")


def test_with_project_vit(tmp_path):
    """The real encoder classes of geofm.models (tiny 'test_micro' ViT), tiles resized 8 → 16."""
    models = pytest.importorskip("geofm.models")
    if "test_micro" not in models.MODELS:
        pytest.skip("registry has no test_micro model")
    write_tiles(tmp_path)
    enc = models.build_encoder("test_micro", 16, 3, seed=1)
    path = tmp_path / "pretrain" / "test_micro" / "encoder.pt"
    path.parent.mkdir(parents=True)
    # the format geofm.models.load_encoder reads (written by the pretrain stage)
    torch.save({"meta": {"model": "test_micro", "step": 7, "image_size": 16, "in_chans": 3},
                "state_dict": enc.state_dict()}, path)
    cfg = {"results": str(tmp_path), "seed": 0, "image_size": 16,
           "evaluate": {"knn_k": 3, "batch_size": 8, "device": "cpu", "feature_cache": False}}
    rec = stages.run_evaluate(cfg, "knn", "test_micro", "fix", path, tmp_path / "out" / "fix.json")
    assert rec["checkpoint_step"] == 7
    assert rec["pretrained"]["feature_dim"] == models.MODELS["test_micro"].width
    assert 0.0 <= rec["random_init"]["top1"] <= 1.0
