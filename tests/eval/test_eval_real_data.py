"""Real imagery: an encoder MAE-pretrained at demo scale beats the same encoder at random initialisation
in kNN and in MAE's linear probe, on the UC Merced and EuroSAT subsets in ``shared/data``.

Protocol (that of ``config/demo-real.yaml``): tiles of 64 px through the project's download and tile
stages (stratified, seeded 50 % train split); ``demo_tiny`` pretrained with MAE on the mixed real set
(``realmix``: the UC Merced and EuroSAT training tiles and the tiles of the two Landsat scenes; 800 steps of
32 random-resized 32-px crops, ``norm_pix_loss``); features are the cls token of the frozen encoder; kNN
k=10, T=0.07; linear probe = MAE's (BatchNorm + linear head, LARS, 90 epochs on augmented views of the
training images, resize + centre crop at test) with the config's base lr and its 30 views per image. Inputs are normalised
with the mixed set's statistics. The random-init twin gets exactly the same treatment. No test image is
seen in pretraining.
"""
import json
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("GEOFM_SHARED_DATA") or ROOT.parent / "shared" / "data")  # a worktree elsewhere: set it
ZIPS = {"ucmerced": DATA / "ucmerced_subset.zip", "eurosat": DATA / "eurosat_rgb_subset.zip",
        "landsat7": DATA / "geotiff" / "RGB.byte.tif", "landsat8": DATA / "geotiff" / "landsat8_LC80200392015216LGN00_crop"}

pytestmark = pytest.mark.skipif(not all(p.exists() for p in ZIPS.values()),
                                reason=f"real data subsets not found in {DATA} (development checkout only)")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from geofm.cli import main as cli
    from geofm.config import load_config, pretrain_settings
    from geofm.train.pretrain import TrainConfig, train

    tmp = tmp_path_factory.mktemp("real")
    raw = yaml.safe_load((ROOT / "config" / "demo-real.yaml").read_text())
    raw["results"], raw["resources"] = str(tmp / "results"), str(tmp / "resources")
    for name, p in ZIPS.items():
        raw["datasets"][name]["path"] = str(p)
    cfg_path = tmp / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    for d in ZIPS:
        assert cli(["download", "--config", str(cfg_path), "--dataset", d]) in (0, None)
        assert cli(["tile", "--config", str(cfg_path), "--dataset", d]) in (0, None)
    assert cfg_path and raw["pretrain_dataset"] == "realmix"
    assert cli(["tile", "--config", str(cfg_path), "--dataset", "realmix"]) in (0, None)
    cfg = load_config(cfg_path)
    pre = pretrain_settings(cfg, "demo_tiny")  # demo_tiny's recipe (demo_base has its own: pretrain.per_model)
    tc = TrainConfig(model="demo_tiny", image_size=cfg["image_size"], data=str(tmp / "results" / "tiles" / "realmix"),
                     steps=pre["steps"], batch_size=pre["batch_size"], lr=pre["lr"], warmup_steps=pre["warmup_steps"],
                     norm_pix_loss=pre["norm_pix_loss"], decoder_dim=pre["decoder_dim"],
                     decoder_depth=pre["decoder_depth"], decoder_heads=pre["decoder_heads"], precision="fp32",
                     device="cpu", seed=cfg["seed"], log_every=100)
    enc = tmp / "results" / "pretrain" / "demo_tiny" / "encoder.pt"
    train(tc, enc.parent)
    return cfg, enc


@pytest.mark.parametrize("dataset", ["ucmerced", "eurosat"])
@pytest.mark.parametrize("protocol", ["knn", "linprobe"])
def test_pretrained_beats_random_init(real, protocol, dataset):
    from geofm.eval.stages import run_evaluate

    from geofm.config import evaluate_settings

    cfg, enc = real
    cfg = {**cfg, "evaluate": evaluate_settings(cfg, "demo_tiny")}  # as `geofm evaluate --model demo_tiny` does
    out = Path(cfg["results"]) / "eval" / protocol / "demo_tiny" / f"{dataset}.json"
    rec = run_evaluate(cfg, protocol, "demo_tiny", dataset, enc, out)
    pre, rnd = rec["pretrained"]["top1"], rec["random_init"]["top1"]
    print(json.dumps({"protocol": protocol, "dataset": dataset, "pretrained": pre, "random_init": rnd,
                      "pool": rec["settings"]["pool"]}))
    assert rec["settings"]["pool"] == "cls" and rec["checkpoint_step"] == cfg["pretrain"]["steps"]
    assert rec["settings"]["normalisation"]["from"].startswith("pretraining set")
    if protocol == "linprobe":  # MAE's probe: LARS on augmented views, the test transform at test time
        s = rec["settings"]
        assert s["linprobe_solver"] == "lars" and s["linprobe_augment"] and s["linprobe_epochs"] == 90
        assert s["linprobe_views"] == cfg["evaluate"]["linprobe_views"] == 30
        assert s["crop_pct"] == 0.875 and s["linprobe_batch_size"] == rec["pretrained"]["n_train"]
    n_cls = len(rec["settings"]["classes"])
    assert rnd > 1.5 / n_cls  # the baseline is a real one, well above chance
    assert pre > rnd, f"{protocol} on {dataset}: pretrained {pre:.3f} <= random init {rnd:.3f}"
    # the image-by-image comparison is of these two runs: its counts give both top-1s back, and its p-value
    # is McNemar's exact one of the images only one of them gets right
    from geofm.eval.metrics import mcnemar_exact_p

    v, n = rec["vs_random_init"], rec["pretrained"]["n_test"]
    assert v["both_right"] + v["both_wrong"] + v["only_pretrained_right"] + v["only_random_init_right"] == n
    assert (v["both_right"] + v["only_pretrained_right"]) / n == pytest.approx(pre)
    assert (v["both_right"] + v["only_random_init_right"]) / n == pytest.approx(rnd)
    assert v["mcnemar_p"] == mcnemar_exact_p(v["only_pretrained_right"], v["only_random_init_right"]) < 1.0
    print(json.dumps({"protocol": protocol, "dataset": dataset, "vs_random_init": v}))


def test_checkpoint_of_another_model_size_is_a_clear_error(real, tmp_path):
    from geofm.eval.stages import EvalError, run_evaluate

    cfg, enc = real
    with pytest.raises(EvalError, match="holds model 'demo_tiny', not the requested 'demo_base'"):
        run_evaluate(cfg, "knn", "demo_base", "ucmerced", enc, tmp_path / "x.json")
    missing = tmp_path / "pretrain" / "demo_base" / "encoder.pt"
    with pytest.raises(FileNotFoundError, match="run pretraining"):
        run_evaluate(cfg, "knn", "demo_base", "ucmerced", missing, tmp_path / "y.json")
