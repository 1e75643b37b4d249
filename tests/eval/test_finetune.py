"""The fine-tuning protocol: layer-wise lr decay, targets, augmentation, the evaluate stage end to end."""
import json

import pytest
import torch

from geofm.eval import stages
from geofm.eval.finetune import (Classifier, FinetuneConfig, finetune, layer_id, param_groups_lrd, soft_targets,
                                 with_drop_path)
from geofm.models import build_encoder

from test_eval_stages import CLASSES, write_tiles  # noqa: E402 (rootdir-relative, pytest puts tests/eval on sys.path)


def test_layer_ids_and_lr_scales():
    enc = build_encoder("test_micro", 16, 3)  # depth 2
    model = Classifier(enc, 4)
    assert layer_id("encoder.cls_token", 2) == 0
    assert layer_id("encoder.patch_embed.proj.weight", 2) == 0
    assert layer_id("encoder.blocks.1.attn.qkv.weight", 2) == 2
    assert layer_id("encoder.norm.weight", 2) == 3 and layer_id("head.weight", 2) == 3
    groups = param_groups_lrd(model, 0.05, 0.5, 2)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["head.weight"]["lr_scale"] == 1.0 and by_name["head.weight"]["weight_decay"] == 0.05
    assert by_name["head.bias"]["weight_decay"] == 0.0
    assert by_name["encoder.blocks.1.mlp.fc1.weight"]["lr_scale"] == 0.5
    assert by_name["encoder.blocks.0.mlp.fc1.weight"]["lr_scale"] == 0.25
    assert by_name["encoder.patch_embed.proj.weight"]["lr_scale"] == 0.125
    assert by_name["encoder.cls_token"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_soft_targets_label_smoothing():
    t = soft_targets(torch.tensor([0, 2]), 4, 0.2)
    torch.testing.assert_close(t[0], torch.tensor([0.85, 0.05, 0.05, 0.05]))
    torch.testing.assert_close(t.sum(1), torch.ones(2))


def test_drop_path_copy_keeps_weights():
    enc = build_encoder("test_micro", 16, 3, seed=2)
    dp = with_drop_path(enc, 0.2)
    assert dp.blocks[1].drop_path1.drop_prob == pytest.approx(0.2)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(dp.eval().forward_features(x), enc.eval().forward_features(x))


def test_finetune_learns_with_mixup_and_drop_path():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(36) % 3
    x = torch.randint(0, 100, (36, 3, 16, 16), generator=g, dtype=torch.uint8)
    x[torch.arange(36), y] += 150
    cfg = FinetuneConfig(epochs=15, batch_size=12, base_lr=2e-2, drop_path=0.1, mixup=0.2, pool="mean", seed=0)
    model, hist = finetune(build_encoder("test_micro", 16, 3), x, y, 3, [0.4] * 3, [0.25] * 3, 16, cfg)
    assert len(hist) == 15 and hist[-1]["loss"] < hist[0]["loss"]
    assert not model.training
    xf = (x.float() / 255 - 0.4) / 0.25
    with torch.no_grad():
        assert (model(xf).argmax(1) == y).float().mean() > 0.9


def test_run_evaluate_finetune(tmp_path):
    write_tiles(tmp_path)
    enc = build_encoder("test_micro", 16, 3, seed=1)
    path = tmp_path / "pretrain" / "test_micro" / "encoder.pt"
    path.parent.mkdir(parents=True)
    torch.save({"meta": {"model": "test_micro", "step": 9, "image_size": 16, "in_chans": 3},
                "state_dict": enc.state_dict()}, path)
    ev = {"batch_size": 8, "device": "cpu", "finetune_epochs": 8, "finetune_lr": 0.05, "layer_decay": 0.8,
          "drop_path": 0.05, "label_smoothing": 0.1, "mixup": 0.0, "pool": "cls"}
    cfg = {"results": str(tmp_path), "seed": 0, "image_size": 16, "evaluate": ev}
    out = tmp_path / "eval" / "finetune" / "test_micro" / "fix.json"
    rec = stages.run_evaluate(cfg, "finetune", "test_micro", "fix", path, out)
    on_disk = json.loads(out.read_text())
    assert on_disk["protocol"] == "finetune" and on_disk["checkpoint_step"] == 9
    from geofm.config import section_defaults

    assert on_disk["config"] == {**section_defaults("evaluate"), **ev, "image_size": 16, "finetune_batch_size": 8}
    s = on_disk["settings"]
    assert s["layer_decay"] == 0.8 and s["pool"] == "cls" and s["epochs"] == 8
    for which in ("pretrained", "random_init"):
        r = rec[which]
        assert set(r["per_class"]) == set(CLASSES) and r["top5"] == 1.0
        assert (r["n_train"], r["n_test"]) == (24, 12)
    assert rec["pretrained"]["top1"] > 0.5  # bright-band classes: easy
    assert out.with_name("fix.confusion.csv").exists() and out.with_name("fix.confusion.png").exists()


def test_pool_in_cache_key_and_file(tmp_path, monkeypatch):
    from geofm.eval.features import cache_file, cache_key

    k = cache_key("m", 1, "d", "train", pool="cls")
    assert k["pool"] == "cls" and cache_file(tmp_path, k).name == "d.train.cls.pt"
    assert cache_file(tmp_path, cache_key("m", 1, "d", "train", pool="mean")).name == "d.train.pt"


def test_layer_decay_and_mixup_reach_the_optimizer_and_the_batches(monkeypatch):
    """What fine-tuning really does at each step: every AdamW group steps at the schedule's lr times its
    layer's scale (patch embedding 0.5^3 of the head's with layer_decay 0.5 on test_micro's 2 blocks), and
    mixup draws its Beta(a, a) weight once per step only when enabled."""
    from geofm.common.lr import warmup_cosine

    seen, draws = [], []
    real_step, real_sample = torch.optim.AdamW.step, torch.distributions.Beta.sample

    def step(self, *a, **k):
        seen.append([(g["lr"], g["lr_scale"]) for g in self.param_groups])
        return real_step(self, *a, **k)

    def sample(self, *a, **k):
        draws.append(float(self.concentration1))
        return real_sample(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    monkeypatch.setattr(torch.distributions.Beta, "sample", sample)
    y = torch.arange(24) % 3
    x = torch.randint(0, 255, (24, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for mixup in (0.0, 0.2):
        seen.clear(), draws.clear()
        cfg = FinetuneConfig(epochs=2, batch_size=12, base_lr=1e-2, layer_decay=0.5, mixup=mixup, pool="mean",
                             seed=0, warmup_epochs=1, min_lr=0.0)
        finetune(build_encoder("test_micro", 16, 3), x, y, 3, [0.5] * 3, [0.25] * 3, 16, cfg)
        assert len(seen) == 4  # 2 epochs of 2 steps
        peak = 1e-2 * 12 / 256
        for it, groups in enumerate(seen):
            want = warmup_cosine(it, 4, 2, peak, 0.0)
            assert all(lr == pytest.approx(want * scale) for lr, scale in groups), (it, groups)
            assert {scale for _, scale in groups} == {1.0, 0.5, 0.25, 0.125}
        assert draws == pytest.approx([0.2] * 4 if mixup else []), (mixup, draws)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_every_classifier_parameter_gets_a_gradient(pool):
    """DDP (``finetune_strategy: DDP``) fails on parameters that never get a gradient. MAE's global pool
    does not use the encoder's final norm, so the classifier drops it (MAE: ``del self.norm``)."""
    model = Classifier(build_encoder("test_micro", 16, 3, seed=0), 5, pool)
    model(torch.randn(3, 3, 16, 16)).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
