"""MAE's linear-probe protocol and pretraining recipe as the defaults; the one preprocessing path."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from geofm.config import section_defaults
from geofm.data import augment
from geofm.eval import stages

from test_eval_stages import StandIn, write_tiles  # noqa: E402 (pytest puts tests/eval on sys.path)


def test_schema_defaults_are_maes_linear_probe():
    d = section_defaults("evaluate")
    assert (d["pool"], d["linprobe_solver"], d["linprobe_lr"], d["linprobe_epochs"], d["linprobe_batch_size"],
            d["linprobe_augment"], d["crop_pct"]) == ("cls", "lars", 0.1, 90, 16384, True, 0.875)
    assert d["linprobe_warmup_epochs"] is None  # 10 % of the epochs: MAE's 10 of 90
    assert d["linprobe_weight_decay"] == 0.0 and d["linprobe_crop_scale"] == [0.08, 1.0]
    assert section_defaults("pretrain")["grad_clip"] == 0.0


def test_center_resize_is_resize_then_centre_crop():
    x = torch.arange(64 * 64, dtype=torch.float32).view(1, 1, 64, 64).repeat(1, 3, 1, 1)
    y = augment.center_resize(x, 28, 0.875)  # resize to 32, crop 28 from offset 2
    full = torch.nn.functional.interpolate(x, size=(32, 32), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(y, full[..., 2:30, 2:30])
    assert torch.equal(augment.center_resize(x, 64, 1.0), x)  # crop_pct 1: a plain resize (none needed)


def test_eval_batch_normalises_with_the_given_stats():
    x = torch.full((2, 3, 8, 8), 51, dtype=torch.uint8)
    y = augment.eval_batch(x, 8, [0.2, 0.1, 0.3], [0.5, 0.5, 0.5], crop_pct=1.0)
    torch.testing.assert_close(y[:, 0], torch.zeros(2, 8, 8))
    torch.testing.assert_close(y[:, 1], torch.full((2, 8, 8), 0.2))


def test_bicubic_is_the_default_and_bilinear_selectable():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, 3, 20, 20), dtype=torch.uint8, generator=g)
    cub = augment.resized_crop(x, None, 12)
    lin = augment.resized_crop(x, None, 12, mode="bilinear")
    ref = torch.nn.functional.interpolate(x, size=(12, 12), mode="bicubic", antialias=True, align_corners=False)
    assert torch.equal(cub, ref) and not torch.equal(cub, lin)
    with pytest.raises(ValueError, match="interpolation"):
        augment.resized_crop(x, None, 12, mode="nearest")


@pytest.fixture
def env(tmp_path, monkeypatch):
    write_tiles(tmp_path, n_train=48, n_test=24)
    enc_path = tmp_path / "pretrain" / "standin" / "encoder.pt"
    enc_path.parent.mkdir(parents=True)
    enc_path.write_bytes(b"stand-in")
    seen = {}

    class Recording(StandIn):
        def forward_features(self, x, pool="mean"):
            seen.setdefault("pool", set()).add(pool)
            seen.setdefault("calls", 0)
            seen["calls"] += 1
            return super().forward_features(x)

    norm = {"mean": [0.25, 0.25, 0.25], "std": [0.3, 0.3, 0.3], "tiles": "mix"}
    monkeypatch.setattr(stages, "load_encoder", lambda p: (Recording(), {"model": "standin", "step": 3,
                                                                          "image_size": 8, "in_chans": 3,
                                                                          "norm": norm}))
    monkeypatch.setattr(stages, "build_encoder", lambda n, s, c, seed=0: StandIn(c, informative=False, seed=seed))
    cfg = {"results": str(tmp_path), "seed": 1, "image_size": 8,
           "evaluate": {"linprobe_epochs": 20, "linprobe_lr": 20.0, "batch_size": 16, "device": "cpu",
                        "linprobe_warmup_epochs": 2}}
    return cfg, tmp_path, enc_path, seen, norm


def test_default_linprobe_is_maes_augmented_lars_probe(env):
    cfg, root, enc_path, seen, norm = env
    rec = stages.run_evaluate(cfg, "linprobe", "standin", "fix", enc_path, root / "o" / "fix.json")
    s = rec["settings"]
    assert s["linprobe_solver"] == "lars" and s["linprobe_augment"] is True and s["pool"] == "cls"
    assert s["linprobe_batch_size"] == 48  # 16,384 capped at the training images
    assert s["linprobe_abs_lr"] == pytest.approx(20.0 * 48 / 256)
    assert seen["pool"] == {"cls"}
    # an augmented view per epoch (48 images in chunks of 16: 3 forwards x 20 epochs) + the test features once
    assert seen["calls"] == 3 * 20 + 2
    assert s["normalisation"]["mean"] == norm["mean"] and "pretraining set" in s["normalisation"]["from"]
    assert rec["pretrained"]["top1"] >= 0.9 and rec["pretrained"]["n_train"] == 48


def test_linprobe_views_draws_each_view_once_and_reuses_it(env):
    """linprobe_views = V: the encoder sees every training image V times in all, not once per epoch, and epoch
    e trains on view e mod V (the same features as epoch e - V); null stays MAE's fresh view per epoch."""
    cfg, root, enc_path, seen, _ = env
    cfg["evaluate"].update({"linprobe_views": 3})
    rec = stages.run_evaluate(cfg, "linprobe", "standin", "fix", enc_path, root / "o" / "v3.json")
    # 3 views of 48 images in chunks of 16 (3 forwards each) + the test features once, for 20 epochs
    assert seen["calls"] == 3 * 3 + 2
    assert rec["settings"]["linprobe_views"] == 3 and rec["pretrained"]["top1"] >= 0.9

    calls = []

    class Counting(StandIn):
        def forward_features(self, x, pool="mean"):
            calls.append(x.clone())
            return super().forward_features(x)

    images = torch.randint(0, 256, (10, 3, 12, 12), dtype=torch.uint8)
    args = (Counting(), images, [0.5] * 3, [0.2] * 3, 8, 4, "cpu", "cls", [0.2, 1.0], 7)
    f = stages._augmented_features(*args, views=2)
    idx = torch.tensor([7, 1, 4])
    a0, a1, a2 = f(idx, 0, 0), f(idx, 1, 0), f(idx, 2, 0)
    assert len(calls) == 2 * 3  # two views of 10 images in chunks of 4; epoch 2 reused view 0
    assert torch.equal(a0, a2) and not torch.equal(a0, a1)
    whole = f(torch.arange(10), 0, 5)
    assert torch.equal(whole[idx], a0)  # a batch is its rows of the view, whatever the batch index
    fresh = stages._augmented_features(*args)  # null: a new crop every epoch and batch
    b0, b2 = fresh(idx, 0, 0), fresh(idx, 2, 0)
    assert not torch.equal(b0, b2) and len(calls) == 2 * 3 + 2


def test_train_ratio_resplits_the_labelled_tiles(env):
    cfg, root, enc_path, _, _ = env
    cfg["evaluate"].update({"linprobe_augment": False})
    assert stages.ratio_tag(0.2) == "tr20" and stages.ratio_tag(0.5) == "tr50" and stages.ratio_tag(0.125) == "tr12p5"
    a = stages.run_evaluate(cfg, "knn", "standin", "fix", enc_path, root / "o" / "fix.tr25.json", train_ratio=0.25)
    b = stages.run_evaluate(cfg, "knn", "standin", "fix", enc_path, root / "o" / "fix.tr75.json", train_ratio=0.75)
    assert (a["pretrained"]["n_train"], a["pretrained"]["n_test"]) == (18, 54)  # 72 labelled tiles, 24 per class
    assert (b["pretrained"]["n_train"], b["pretrained"]["n_test"]) == (54, 18)
    assert a["train_ratio"] == 0.25 and "25%" in a["settings"]["split"]
    tr, te = stages.resplit(root / "tiles" / "fix", 0.25, 1, "fix")
    assert np.bincount(tr.labels).tolist() == [6, 6, 6] and np.bincount(te.labels).tolist() == [18, 18, 18]
    with pytest.raises(stages.EvalError, match="train ratio"):
        stages.resplit(root / "tiles" / "fix", 1.0, 1, "fix")


def test_unlabelled_tiles_are_left_out_of_evaluation(tmp_path):
    import pandas as pd

    d = write_tiles(tmp_path)
    man = pd.read_parquet(d / "manifest.parquet")
    man.loc[man.index[:6], "label"] = -1  # e.g. MillionAID's flat test folder
    man.to_parquet(d / "manifest.parquet")
    sp = stages.load_split(d, "train")
    assert len(sp.labels) == 18 and (sp.labels >= 0).all() and sp.images.shape[0] == 18


def test_pretraining_recipe_follows_mae():
    from geofm.models.mae import build_mae
    from geofm.train.pretrain import TrainConfig, param_groups

    assert TrainConfig(model="test_micro").grad_clip == 0.0  # MAE does not clip
    mae = build_mae("test_micro", 16, 3, device="cpu")
    decay, no_decay = param_groups(mae, 0.05)
    ids = {id(p) for p in decay["params"]}
    assert id(mae.encoder.cls_token) in ids and id(mae.mask_token) in ids  # MAE decays both tokens
    names = {id(p): n for n, p in mae.named_parameters()}
    assert all(p.ndim < 2 or names[id(p)].endswith(".bias") for p in no_decay["params"])
    eps = {m.eps for m in mae.modules() if isinstance(m, nn.LayerNorm)}
    assert eps == {1e-6}  # every LayerNorm, timm's blocks included


def test_pretraining_reads_every_split_where_the_tiler_says_so(tmp_path):
    from geofm.train.pretrain import _pretrain_split

    d = write_tiles(tmp_path)
    assert _pretrain_split(str(d)) == "train"
    st = json.loads((d / "stats.json").read_text())
    (d / "stats.json").write_text(json.dumps({**st, "pretrain_split": None}))
    assert _pretrain_split(str(d)) is None
    assert _pretrain_split("synthetic") == "train"


@pytest.mark.parametrize("pool,timm_pool", [("mean", "avg"), ("cls", "token")])
def test_pooled_features_are_maes_against_timm(pool, timm_pool):
    """MAE's models_vit.VisionTransformer (facebookresearch/mae): ``global_pool=True`` deletes the final
    norm and returns ``fc_norm(x[:, 1:].mean(1))``, a fresh LayerNorm (eps 1e-6) that its linear probe
    leaves at initialisation; otherwise ``norm(x)[:, 0]``. timm's VisionTransformer computes the same with
    ``global_pool="avg"`` (norm = Identity, fc_norm = LayerNorm) and ``"token"``: the encoder's weights in
    a timm ViT must give the same features. (Red with the mean of the normed tokens, the old "mean".)"""
    from functools import partial

    from timm.models.vision_transformer import VisionTransformer

    from geofm.models import build_encoder

    enc = build_encoder("demo_tiny", 32, 3, seed=3).eval()
    with torch.no_grad():  # a final norm that is not the identity, as after pretraining
        g = torch.Generator().manual_seed(0)
        enc.norm.weight.copy_(1 + 0.5 * torch.randn(enc.norm.weight.shape, generator=g))
        enc.norm.bias.copy_(0.3 * torch.randn(enc.norm.bias.shape, generator=g))
    s = enc.spec
    ref = VisionTransformer(img_size=32, patch_size=s.patch, embed_dim=s.width, depth=s.depth, num_heads=s.heads,
                            mlp_ratio=s.mlp / s.width, qkv_bias=True, num_classes=0, global_pool=timm_pool,
                            norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    state = {k: v for k, v in enc.state_dict().items() if not (pool == "mean" and k.startswith("norm."))}
    state["pos_embed"] = enc.pos_embed.detach().clone()
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) == ({"fc_norm.weight", "fc_norm.bias"} if pool == "mean" else set())
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = enc.forward_features(x, pool=pool)
        theirs = ref.forward_head(ref.forward_features(x), pre_logits=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
