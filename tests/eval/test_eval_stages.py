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


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A real ``encoder.pt``: the tiny ``test_micro`` MAE pretrained for 6 steps on the fixture's tiles by the
    pretraining code itself (one process), and the evaluation config that reads it."""
    from geofm.train.pretrain import TrainConfig, train

    root = tmp_path_factory.mktemp("real")
    tiles = write_tiles(root, size=16)
    out = root / "pretrain" / "test_micro"
    train(TrainConfig.from_dict(dict(model="test_micro", image_size=16, data=str(tiles), steps=6, batch_size=8,
                                     lr=1e-3, warmup_steps=2, decoder_dim=32, decoder_depth=1, decoder_heads=2,
                                     precision="fp32", strategy="NO_SHARD", log_every=1, device="cpu",
                                     seed=0)), out)
    cfg = {"results": str(root), "seed": 5, "image_size": 16,
           "evaluate": {"linprobe_epochs": 30, "linprobe_lr": 0.5, "batch_size": 16, "knn_k": 5,
                        "knn_temperature": 0.1, "device": "cpu", "pool": "mean", "linprobe_solver": "sgd",
                        "linprobe_augment": False, "linprobe_batch_size": 16, "feature_cache": False}}
    return cfg, root, out / "encoder.pt"


def _confusion_agrees(rec, csv_path):
    cm = pd.read_csv(csv_path, index_col=0)
    assert list(cm.index) == CLASSES and list(cm.columns) == CLASSES
    assert cm.values.sum() == rec["n_test"]
    assert rec["top1"] == pytest.approx(cm.values.trace() / cm.values.sum())
    for c in CLASSES:
        assert rec["per_class"][c] == pytest.approx(cm.loc[c, c] / cm.loc[c].sum()), c


@pytest.mark.parametrize("protocol", ["knn", "linprobe"])
def test_run_evaluate_end_to_end(pretrained, protocol):
    """The stage on a real pretrained encoder: the checkpoint's meta, the pretraining set's normalisation, the
    random-init baseline of the same architecture, accuracies consistent with the confusion matrix."""
    cfg, root, enc_path = pretrained
    meta = torch.load(enc_path, weights_only=False)["meta"]
    out = root / "eval" / protocol / "test_micro" / "fix.json"
    rec = stages.run_evaluate(cfg, protocol, "test_micro", "fix", enc_path, out)
    on_disk = json.loads(out.read_text())
    assert on_disk == json.loads(json.dumps(rec))
    assert on_disk["protocol"] == protocol and on_disk["model"] == "test_micro" and on_disk["dataset"] == "fix"
    assert on_disk["checkpoint_step"] == meta["step"] == 6
    assert on_disk["encoder_fingerprint"] == meta["fingerprint"]
    from geofm.config import section_defaults
    from geofm.models import MODELS

    # the effective settings: the keys given, the schema's defaults for the rest
    assert on_disk["config"].items() >= cfg["evaluate"].items()
    assert all(on_disk["config"][k] == v for k, v in section_defaults("evaluate").items()
               if k not in cfg["evaluate"] and v is not None)
    for which in ("pretrained", "random_init"):
        r = on_disk[which]
        assert (r["n_train"], r["n_test"]) == (24, 12)
        assert r["feature_dim"] == MODELS["test_micro"].width
        assert r["top5"] == 1.0  # 3 classes
    # classes differ in their band means: features of the pretrained ViT separate them
    assert on_disk["pretrained"]["top1"] >= 0.9, on_disk["pretrained"]
    # the image-by-image comparison is of these two runs: its counts give both top-1s back
    from geofm.eval.metrics import mcnemar_exact_p

    v, n = on_disk["vs_random_init"], on_disk["pretrained"]["n_test"]
    assert v["both_right"] + v["both_wrong"] + v["only_pretrained_right"] + v["only_random_init_right"] == n
    assert (v["both_right"] + v["only_pretrained_right"]) / n == pytest.approx(on_disk["pretrained"]["top1"])
    assert (v["both_right"] + v["only_random_init_right"]) / n == pytest.approx(on_disk["random_init"]["top1"])
    assert v["gain"] == pytest.approx(on_disk["pretrained"]["top1"] - on_disk["random_init"]["top1"])
    assert v["mcnemar_p"] == mcnemar_exact_p(v["only_pretrained_right"], v["only_random_init_right"])
    _confusion_agrees(on_disk["pretrained"], root / "eval" / protocol / "test_micro" / "fix.confusion.csv")
    assert (root / "eval" / protocol / "test_micro" / "fix.confusion.png").stat().st_size > 0
    assert not list(out.parent.glob(".*tmp*"))  # atomic writes left nothing behind


def test_evaluation_uses_the_checkpoint_weights(pretrained, tmp_path):
    """The same evaluation of a copy of encoder.pt whose patch embedding is zeroed (every image then gives the
    same features): the pretrained accuracy falls to a constant guess, the random-init baseline is unchanged."""
    cfg, root, enc_path = pretrained
    first = stages.run_evaluate(cfg, "knn", "test_micro", "fix", enc_path, tmp_path / "a.json")
    obj = torch.load(enc_path, weights_only=False)
    zeroed = [k for k in obj["state_dict"] if k.startswith("patch_embed.")]
    assert zeroed, sorted(obj["state_dict"])
    for k in zeroed:
        obj["state_dict"][k] = torch.zeros_like(obj["state_dict"][k])
    blind = tmp_path / "pretrain" / "test_micro" / "encoder.pt"
    blind.parent.mkdir(parents=True)
    torch.save(obj, blind)
    second = stages.run_evaluate(cfg, "knn", "test_micro", "fix", blind, tmp_path / "b.json")
    timeless = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert timeless(second["random_init"]) == timeless(first["random_init"])
    assert second["pretrained"]["top1"] <= 1 / len(CLASSES) + 1e-9 < first["pretrained"]["top1"]
    # a checkpoint that does not fit the architecture is refused, naming the file
    del obj["state_dict"][zeroed[0]]
    torch.save(obj, blind)
    with pytest.raises(Exception, match="encoder.pt|patch_embed"):
        stages.run_evaluate(cfg, "knn", "test_micro", "fix", blind, tmp_path / "c.json")


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


def test_features_cached_under_another_pooling_definition_are_not_reused(env, monkeypatch):
    """``mean`` changed meaning once (the mean of the normed tokens, then MAE's global pool): the cache key
    carries the definition (``geofm.models.mae.POOLING``), so features of the old one are recomputed."""
    cfg, root, enc_path, _ = env
    out = root / "eval" / "knn" / "standin" / "fix.json"
    stages.run_evaluate(cfg, "knn", "standin", "fix", enc_path, out)
    calls = []
    plain = StandIn.forward_features

    def counting(self, x, pool="mean"):
        calls.append(pool)
        return plain(self, x, pool)

    monkeypatch.setattr(StandIn, "forward_features", counting)
    monkeypatch.setattr(stages, "POOLING", {**stages.POOLING, "mean": "a later definition"})
    stages.run_evaluate(cfg, "knn", "standin", "fix", enc_path, out)
    assert calls and set(calls) == {"mean"}


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


def test_cross_validated_logreg_penalty_is_each_encoders_own(env, monkeypatch):
    """``logreg_l2`` as a list: each encoder's penalty is chosen on its own training features and recorded
    in its own result (the pretrained and random-init encoders' features differ, so do their held-out
    scores); the settings hold the grid and the folds, not one encoder's choice."""
    from geofm.eval.linprobe import fit_logreg_cv

    cfg, root, enc_path, _ = env

    def half_blind(*a, seed=0, **k):  # the random-init twin sees band 0 only: classes 1 and 2 look alike
        enc = StandIn(informative=False, seed=seed)
        with torch.no_grad():
            enc.proj.weight[:, 1:] = 0.0
        return enc

    monkeypatch.setattr(stages, "build_encoder", half_blind)
    calls = []

    def spy(feats, labels, *a, **k):
        calls.append((feats.clone(), labels.clone()))
        return fit_logreg_cv(feats, labels, *a, **k)

    monkeypatch.setattr(stages, "fit_logreg_cv", spy)
    grid = [1.0e-4, 1.0e-2, 1.0, 100.0]
    cfg["evaluate"].update(linprobe_solver="logreg", logreg_l2=grid, logreg_cv_folds=4)
    rec = stages.run_evaluate(cfg, "linprobe", "standin", "fix", enc_path, root / "lr.json")
    assert rec["settings"]["logreg_l2_grid"] == grid and rec["settings"]["logreg_cv_folds"] == 4
    assert "logreg_l2" not in rec["settings"]
    # each encoder's record holds what the cross-validation on that encoder's training features chose
    assert [len(c[1]) for c in calls] == [24, 24]  # the training images, pretrained first
    for which, (feats, labels) in zip(("pretrained", "random_init"), calls):
        _, info = fit_logreg_cv(feats, labels, 3, grid, folds=4, seed=5)
        assert rec[which]["logreg_cv_top1"] == info["logreg_cv_top1"], which
        assert rec[which]["logreg_l2"] == info["logreg_l2"], which
    assert rec["pretrained"]["logreg_cv_top1"] != rec["random_init"]["logreg_cv_top1"]


def test_a_replaced_encoder_is_not_evaluated_on_cached_features(pretrained, tmp_path):
    """The feature cache is keyed on the encoder file itself, not only its step: an ``encoder.pt`` replaced
    at the same step and of the same size (re-pretrained under another setting, here its patch embedding
    zeroed) gets new features, so its own accuracy, not the cached one of its predecessor."""
    import os

    cfg, root, enc_path = pretrained
    cfg = {**cfg, "evaluate": {**cfg["evaluate"], "feature_cache": True}}
    enc = tmp_path / "pretrain" / "test_micro" / "encoder.pt"
    enc.parent.mkdir(parents=True)
    obj = torch.load(enc_path, weights_only=False)
    torch.save(obj, enc)  # saved here, as its replacement will be: the two files have the same size
    first = stages.run_evaluate(cfg, "knn", "test_micro", "fix", enc, tmp_path / "a.json")
    assert list((root / "eval" / "features").rglob("fix.train.pt"))  # cached
    for k in obj["state_dict"]:
        if k.startswith("patch_embed."):
            obj["state_dict"][k] = torch.zeros_like(obj["state_dict"][k])
    size = enc.stat().st_size
    torch.save(obj, enc)
    assert enc.stat().st_size == size and obj["meta"]["step"] == first["checkpoint_step"]
    st = enc.stat()
    os.utime(enc, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    second = stages.run_evaluate(cfg, "knn", "test_micro", "fix", enc, tmp_path / "b.json")
    assert second["pretrained"]["top1"] <= 1 / len(CLASSES) + 1e-9 < first["pretrained"]["top1"]
