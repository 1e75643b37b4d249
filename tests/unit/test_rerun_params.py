"""What each rule declares as params, --config typing, readable config errors, the CLI's help."""
import contextlib
import io
import shlex

import pytest
import yaml

from geofm import cli
from geofm.config import (ConfigError, deep_update, digest, rule_params, type_overrides, validate)

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def demo():
    return validate(yaml.safe_load((ROOT / "config/demo.yaml").read_text()))


def changed(cfg, path, value):
    *head, last = path.split(".")
    over = node = {}
    for part in head:
        node = node.setdefault(part, {})
    node[last] = value
    return validate(deep_update(cfg, over))


JOBS = {"download": dict(dataset="demo_scenes"), "tile": dict(dataset="demo_scenes"),
        "pretrain": dict(model="demo_tiny"),
        "knn": dict(protocol="knn", model="demo_tiny", dataset="demo_landcover"),
        "linprobe": dict(protocol="linprobe", model="demo_tiny", dataset="demo_landcover"),
        "profile": dict(model="demo_base", variant="base"), "profile_ac": dict(model="demo_base", variant="ac"),
        "figures": {}}


def touched(before, after) -> set:
    out = set()
    for job, kw in JOBS.items():
        rule = {"knn": "evaluate", "linprobe": "evaluate", "profile_ac": "profile"}.get(job, job)
        if rule_params(before, rule, **kw) != rule_params(after, rule, **kw):
            out.add(job)
    return out


@pytest.mark.parametrize("path, value, jobs", [
    ("evaluate.knn_k", 3, {"knn"}),
    ("evaluate.linprobe_epochs", 3, {"linprobe"}),
    ("evaluate.batch_size", 7, {"knn", "linprobe"}),
    ("pretrain.steps", 50, {"pretrain"}),
    ("pretrain.log_every", 5, {"pretrain"}),
    ("pretrain.decoder_dim", 32, {"pretrain", "profile", "profile_ac"}),
    ("datasets.demo_scenes.tile_size", 32, {"tile", "pretrain"}),
    ("datasets.demo_scenes.n_scenes", 2, {"download"}),
    ("profile.batch_size", 4, {"profile", "profile_ac"}),
    ("profile.variants.ac.activation_checkpointing", 2, {"profile_ac"}),
    ("pretrain.runtime_min", 5, set()),
    ("pretrain.checkpoint_every", 7, set()),
    ("pretrain.nodes", 2, set()),
    ("evaluate.runtime_min", 5, set()),
    ("datasets.demo_scenes.mirror", "http://example.org/m", set()),
    ("evaluate.linprobe_augment", True, {"linprobe"}),
    ("evaluate.linprobe_crop_scale", [0.2, 1.0], {"linprobe"}),
    ("evaluate.linprobe_views", 10, {"linprobe"}),
    ("evaluate.crop_pct", 1.0, {"knn", "linprobe"}),
    ("pretrain.grad_clip", 1.0, {"pretrain", "profile", "profile_ac"}),
    # read by the evaluations at a ratio only (test below); the tiles' own split keeps its params
    ("datasets.demo_landcover.train_ratios", [0.5, 0.8], set()),
    # issue 12's execution-only keys: geometry, walltime, retries, scheduler limits, decoding workers
    ("pretrain.retries", 3, set()),
    ("pretrain.expected_mfu", 0.5, set()),
    ("pretrain.per_model", {"demo_tiny": {"nodes": 2, "runtime_min": 5, "retries": 2}}, set()),
    ("pretrain.threads_per_rank", 2, set()),  # a local job's cores per rank
    ("pretrain.per_model", {"demo_tiny": {"threads_per_rank": 2}}, set()),
    ("evaluate.per_model", {"demo_tiny": {"nodes": 2, "runtime_min": 9, "shard_encoder": True}}, set()),
    ("scheduler.max_submissions", 10, set()),
    ("datasets.demo_scenes.workers", 3, set()),
    # per-model settings that change results rerun that model's jobs only
    ("evaluate.feature_precision", "bf16", {"knn", "linprobe"}),
    ("evaluate.per_model", {"demo_tiny": {"feature_precision": "bf16"}}, {"knn", "linprobe"}),
    ("evaluate.per_model", {"demo_small": {"feature_precision": "bf16"}}, set()),
    ("evaluate.per_model", {"demo_tiny": {"pool": "cls"}}, {"knn", "linprobe"}),
    # a model's own pretraining recipe: its pretrain job (and its profile cells, for the step's keys) only
    ("pretrain.per_model", {"demo_tiny": {"lr": 5e-4, "norm_pix_loss": True}}, {"pretrain"}),
    ("pretrain.per_model", {"demo_base": {"decoder_dim": 32}}, {"profile", "profile_ac"}),
    ("pretrain.per_model", {"demo_small": {"lr": 5e-4, "decoder_depth": 2}}, set()),
    ("pretrain.per_model", {"demo_tiny": {"precision": "bf16"}}, {"pretrain"}),
    # a profile cell's precision is the profile section's, set in the demo: not the pretraining's
    ("pretrain.per_model", {"demo_base": {"precision": "bf16"}}, set()),
    ("evaluate.finetune_activation_checkpointing", 1, set()),  # fine-tuning only (no finetune job here)
    # the folds matter to a cross-validated penalty only: with one penalty (the default) they rerun nothing,
    # so adding the key reran no existing linear probe
    ("evaluate.logreg_cv_folds", 3, set()),
    ("evaluate.logreg_l2", [1.0e-3, 0.1], {"linprobe"}),
    # quarter turns in pretraining: the pretraining jobs and the profile cells (the loader's work)
    ("pretrain.augment_rot90", True, {"pretrain", "profile", "profile_ac"}),
    ("pretrain.per_model", {"demo_tiny": {"augment_rot90": True}}, {"pretrain"}),
    # partial reconstruction changes the step: the pretraining jobs and the profile cells; at its default (1, MAE)
    # it is in no params, so adding the key reran nothing
    ("pretrain.prediction_ratio", 0.25, {"pretrain", "profile", "profile_ac"}),
    ("pretrain.per_model", {"demo_tiny": {"prediction_ratio": 0.5}}, {"pretrain"}),
    ("pretrain.prediction_ratio", 1.0, set()),
    ("pretrain.crop_scale", [0.5, 1.0], {"pretrain", "profile", "profile_ac"}),
    ("pretrain.per_model", {"demo_base": {"crop_scale": [0.5, 1.0]}}, {"profile", "profile_ac"}),
])
def test_a_key_is_in_the_params_of_exactly_the_jobs_it_determines(demo, path, value, jobs):
    assert touched(demo, changed(demo, path, value)) == jobs


def test_a_new_definition_of_the_mean_pool_reruns_the_mean_pooled_evaluations_only(demo, monkeypatch):
    """``pool: mean`` changed meaning once (geofm.models.registry.POOLING): an evaluation made under the old one
    must rerun, not stand beside the new results; the cls token's evaluations and every other job keep their
    params. (Before, a results tree of the old definition reported "nothing to be done".)"""
    from geofm.models import registry

    cls = changed(demo, "evaluate.per_model", {"demo_tiny": {"pool": "cls"}})

    def params(cfg):
        return {job: rule_params(cfg, {"knn": "evaluate", "linprobe": "evaluate", "profile_ac": "profile"}.get(job, job),
                                 **kw) for job, kw in JOBS.items()}

    mean_before, cls_before = params(demo), params(cls)
    monkeypatch.setattr(registry, "POOLING", {**registry.POOLING, "mean": "another definition"})
    mean_after, cls_after = params(demo), params(cls)
    assert {j for j in JOBS if mean_before[j] != mean_after[j]} == {"knn", "linprobe"}
    assert cls_before == cls_after


def test_cross_validation_folds_rerun_a_cross_validated_probe(demo):
    cv = changed(demo, "evaluate.logreg_l2", [1.0e-3, 0.1])
    assert touched(cv, changed(cv, "evaluate.logreg_cv_folds", 3)) == {"linprobe"}
    assert "logreg_cv_folds" not in rule_params(demo, "evaluate", **JOBS["linprobe"])["evaluate"]


def test_an_evaluation_at_a_train_ratio_carries_that_ratio_only(demo):
    """{D}.tr<percent>.json jobs: a ratio's params hold that ratio, not the list, so editing
    datasets.<D>.train_ratios reruns only the evaluations of the ratios that changed."""
    kw = JOBS["linprobe"]
    before = changed(demo, "datasets.demo_landcover.train_ratios", [0.5, 0.8])
    after = changed(demo, "datasets.demo_landcover.train_ratios", [0.5, 0.7])
    assert rule_params(before, "evaluate", **kw, train_ratio=0.5) == rule_params(after, "evaluate", **kw,
                                                                                 train_ratio=0.5)
    assert rule_params(before, "evaluate", **kw, train_ratio=0.5)["train_ratio"] == 0.5
    assert rule_params(before, "evaluate", **kw, train_ratio=0.8) != rule_params(after, "evaluate", **kw,
                                                                                 train_ratio=0.7)
    assert rule_params(before, "evaluate", **kw, train_ratio=0.5) != rule_params(before, "evaluate", **kw)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    assert "--train-ratio" in out.getvalue() and "train_ratios" in out.getvalue()


def test_params_are_canonical_and_hold_no_checkout_path(demo):
    shuffled = validate(yaml.safe_load(yaml.safe_dump(demo, sort_keys=True)))
    for job, kw in JOBS.items():
        rule = {"knn": "evaluate", "linprobe": "evaluate", "profile_ac": "profile"}.get(job, job)
        p = rule_params(demo, rule, **kw)
        assert repr(p) == repr(rule_params(shuffled, rule, **kw))
        assert str(ROOT) not in repr(p) and "/work/" not in repr(p)
    assert digest(rule_params(demo, "pretrain", model="demo_tiny")) != digest(rule_params(demo, "pretrain",
                                                                                           model="demo_small"))


def test_config_overrides_are_typed_by_the_schema(demo):
    over = {"pretrain": {"steps": "50", "lr": "1e-3", "norm_pix_loss": "false"}, "profile": {"nodes": ["1", "2"]},
            "seed": "3", "evaluate": {"knn_k": "many"}}
    cfg = type_overrides(deep_update(demo, over), over)
    assert cfg["pretrain"]["steps"] == 50 and cfg["pretrain"]["lr"] == 1e-3 and cfg["pretrain"]["norm_pix_loss"] is False
    assert cfg["profile"]["nodes"] == [1, 2] and cfg["seed"] == 3
    assert cfg["evaluate"]["knn_k"] == "many"  # not a number: left for the schema to name
    with pytest.raises(ConfigError, match=r"evaluate.knn_k: 'many' is not allowed"):
        validate(cfg)
    # keys whose schema type is a list ([integer, "null"]): a number or YAML's null, as --config hands them over
    over = {"evaluate": {"linprobe_views": "30", "linprobe_warmup_epochs": "null", "finetune_warmup_epochs": "2.5"}}
    ev = validate(type_overrides(deep_update(demo, over), over))["evaluate"]
    assert (ev["linprobe_views"], ev["linprobe_warmup_epochs"], ev["finetune_warmup_epochs"]) == (30, None, 2.5)
    # a string in a config file (not an override) stays an error
    with pytest.raises(ConfigError, match="pretrain.steps"):
        validate(deep_update(demo, {"pretrain": {"steps": "50"}}))


def test_config_errors_are_short_and_name_the_key(demo):
    with pytest.raises(ConfigError) as err:
        validate(deep_update(demo, {"evaluate": {"knn_kk": 3}}))
    lines = str(err.value).splitlines()
    assert len(lines) <= 3 and "evaluate.knn_kk" in lines[0] and "did you mean evaluate.knn_k?" in lines[0]
    assert "knn_temperature" in lines[1] and "properties" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        validate(deep_update(demo, {"pretrain": {"strategy": "HALF_SHARD", "steps": 0}, "seed": -1}))
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and "pretrain.steps: 0 is not allowed" in lines[0] and "integer >= 1" in lines[1]
    assert "2 more: pretrain.strategy, seed" in lines[2]
    for over, key in (({"crop_scale": [0.9, 0.5]}, "pretrain.crop_scale"),
                      ({"per_model": {"demo_tiny": {"crop_scale": [0.6, 0.5]}}}, "pretrain.per_model.demo_tiny.crop_scale")):
        with pytest.raises(ConfigError, match=rf"{key} \[0\.\d, 0\.5\] must be \[min, max\] with min <= max"):
            validate(deep_update(demo, {"pretrain": over}))
    # a model that is only profiled: its profile cells' loader would fail at run time
    with pytest.raises(ConfigError, match=r"pretrain.per_model.demo_base.crop_scale \[0\.6, 0\.5\]"):
        validate(deep_update({**demo, "models": ["demo_tiny"]},
                             {"pretrain": {"per_model": {"demo_base": {"crop_scale": [0.6, 0.5]}}}}))


@pytest.mark.parametrize("stage", list(cli.STAGES))
def test_each_stage_help_says_what_it_reads_writes_and_an_example(stage):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.main([stage, "--help"])
    text = out.getvalue()
    assert "reads" in text and ("writes" in text) and f"example: geofm {stage} " in text
    example = shlex.split(text.split("example: ", 1)[1].replace("\n", " "))
    for opt in (a for a in example if a.startswith("--")):
        assert f"{opt} " in text.split("options:")[1], opt  # the example uses only options the stage has


def test_a_models_own_recipe_reaches_its_training_and_fingerprint_only(demo):
    """pretrain.per_model.<model> recipe keys: the CLI's TrainConfig for that model carries them (and so its
    checkpoint fingerprint changes); another model's stays as it was."""
    from geofm.cli import _train_config
    from geofm.config import pretrain_settings
    from geofm.train.fingerprint import fingerprint

    own = changed(demo, "pretrain.per_model", {"demo_base": {"lr": 7.5e-4, "decoder_dim": 24, "decoder_depth": 3,
                                                              "precision": "bf16"}})

    def tc(cfg, model):
        return _train_config(cfg, model, "synthetic", pretrain_settings(cfg, model))

    base = tc(own, "demo_base")
    assert (base.lr, base.decoder_dim, base.decoder_depth, base.precision) == (7.5e-4, 24, 3, "bf16")
    assert base.decoder_heads == demo["pretrain"]["decoder_heads"]  # the rest from the section
    assert fingerprint(base) != fingerprint(tc(demo, "demo_base"))
    assert tc(own, "demo_tiny") == tc(demo, "demo_tiny")
    assert fingerprint(tc(own, "demo_tiny")) == fingerprint(tc(demo, "demo_tiny"))


@pytest.mark.parametrize("key, value", [("augment_rot90", True), ("crop_scale", [0.5, 1.0])])
def test_a_key_added_at_its_old_behaviour_reruns_and_moves_nothing(demo, monkeypatch, key, value):
    """pretrain.augment_rot90 and pretrain.crop_scale (x-omit-default) at their defaults (false; MAE's
    [0.2, 1.0]): every job's params and the checkpoint fingerprint are those of the code before the key existed
    (its TrainConfig without the field), so an existing study reruns nothing and resumes its checkpoints; set,
    it is in both."""
    import dataclasses

    from geofm.cli import _train_config
    from geofm.config import pretrain_settings
    from geofm.train import fingerprint as fpmod

    before = {k: v for k, v in demo["pretrain"].items() if k != key}  # a config of before the key
    old = {**demo, "pretrain": before}
    for job, kw in JOBS.items():
        rule = {"knn": "evaluate", "linprobe": "evaluate", "profile_ac": "profile"}.get(job, job)
        assert rule_params(demo, rule, **kw) == rule_params(old, rule, **kw), job
    assert rule_params(demo, "plan") == rule_params(old, "plan")
    assert key in rule_params(changed(demo, f"pretrain.{key}", value), "pretrain", model="demo_tiny")["pretrain"]

    def tc(cfg):
        return _train_config(cfg, "demo_tiny", "synthetic", pretrain_settings(cfg, "demo_tiny"))

    now, turned = fpmod.fingerprint(tc(demo)), fpmod.fingerprint(tc(changed(demo, f"pretrain.{key}", value)))
    real_asdict = dataclasses.asdict
    monkeypatch.setattr(fpmod.dataclasses, "asdict", lambda obj: {k: v for k, v in real_asdict(obj).items()
                                                                   if k != key})
    assert fpmod.fingerprint(tc(demo)) == now != turned  # the old TrainConfig's fingerprint


@pytest.mark.parametrize("path, value, reruns", [
    ("pretrain.per_model", {"demo_tiny": {"decoder_dim": 16}}, True),  # a model's recipe: priced anew
    ("pretrain.per_model", {"demo_tiny": {"nodes": 2}}, True),  # its geometry
    ("pretrain.per_model", {"demo_tiny": {"runtime_min": 5, "retries": 1}}, False),  # its walltime: no
    ("pretrain.per_model", {"demo_tiny": {"threads_per_rank": 2}}, False),  # a local job's cores: no
    ("pretrain.runtime_min", 7, False),
])
def test_the_plan_reprices_a_models_own_recipe_and_geometry_only(demo, path, value, reruns):
    assert (rule_params(demo, "plan") != rule_params(changed(demo, path, value), "plan")) == reruns
