"""One config model: every default lives in the schema and is applied at load, so the code reads each key
without a fallback of its own; the dataclasses built from sections take the schema's values; the schema's
name lists equal the registries they describe."""
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from geofm.config import (PROFILE_VARIANT_KEYS, complete_section, fill_defaults, load_config, profile_effective,
                          schema, validate)

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = {
    "datasets": {"s": {"kind": "scenes", "source": "synthetic", "format": "geotiff_scenes"},
                 "c": {"kind": "classification", "source": "derived", "from": "s", "format": "derived_landcover"}},
    "pretrain_dataset": "s", "eval_datasets": ["c"], "models": ["demo_tiny"], "image_size": 32,
    "pretrain": {}, "evaluate": {"protocols": ["knn"]},
    "profile": {"models": ["demo_tiny"], "strategies": ["DDP"], "nodes": [1]},
}
# the sections whose every key is read by the code through the filled config (datasets.<name> keys are read by
# the data stage; several are required only for some sources or formats, which validate() checks)
SECTIONS = ("pretrain", "evaluate", "profile", "scheduler", "plan")


def _missing(node: dict, sch: dict, path: str) -> list[str]:
    """Keys the schema describes under ``node`` that are neither present nor required-and-checked."""
    out = []
    for key, sub in sch.get("properties", {}).items():
        if key not in node:
            out.append(f"{path}.{key}")
        elif isinstance(node[key], dict) and sub.get("properties"):
            out += _missing(node[key], sub, f"{path}.{key}")
    return out


@pytest.fixture(scope="module")
def minimal(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "minimal.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    return load_config(path)


def test_a_minimal_config_loads_with_every_section_fully_populated(minimal):
    top = schema()
    assert [k for k in top["properties"] if k not in minimal] == []
    for sec in SECTIONS:
        assert _missing(minimal[sec], top["properties"][sec], sec) == [], sec
    # the values are the schema's own (spot checks of each kind: plain, null = none, taken from another key)
    assert minimal["pretrain"]["steps"] == 100 and minimal["pretrain"]["strategy"] == "NO_SHARD"
    assert minimal["evaluate"]["linprobe_warmup_epochs"] is None and minimal["profile"]["device_memory_gb"] is None
    assert minimal["evaluate"]["image_size"] == 32 and minimal["evaluate"]["device"] == minimal["device"] == "auto"
    assert minimal["evaluate"]["finetune_batch_size"] == minimal["evaluate"]["batch_size"] == 256
    assert minimal["profile"]["precision"] == minimal["pretrain"]["precision"] == "bf16"
    assert minimal["scheduler"] == {"max_submissions": None, "walltime_bins": [], "tile_nodes": 1,
                                    "tile_runtime_min": 120}
    # per-dataset entries get the defaults of the keys that apply to their format and source (x-formats /
    # x-sources; geofm.config.dataset_defaults), and no others
    ds_props = top["properties"]["datasets"]["additionalProperties"]["properties"]
    for d in minimal["datasets"].values():
        applies = {k for k, v in ds_props.items() if "default" in v
                   and d["format"] in v.get("x-formats", [d["format"]]) and d["source"] in v.get("x-sources", [d["source"]])}
        others = {k for k, v in ds_props.items() if "default" in v} - applies
        assert applies and applies <= set(d), d
        from geofm.data.tiling.registry import FORMATS

        assert not (others & set(d)) - set(FORMATS[d["format"]].defaults), d  # the format's own may set them


@pytest.mark.parametrize("name", ["demo.yaml", "config.yaml", "demo-real.yaml"])
def test_a_filled_config_is_valid_and_filling_again_changes_nothing(name):
    cfg = load_config(ROOT / "config" / name)
    assert validate(cfg) == cfg  # the Snakefile's filled config is what each job's CLI validates again
    for sec in SECTIONS:
        assert _missing(cfg[sec], schema()["properties"][sec], sec) == [], sec


def test_a_key_set_in_the_config_wins_over_its_default_and_over_the_key_it_defaults_to(minimal):
    cfg = {**MINIMAL, "pretrain": {"precision": "fp32", "batch_size": 32},
           "evaluate": {"protocols": ["knn"], "batch_size": 16},
           "profile": {**MINIMAL["profile"], "compile": True}}
    got = validate(cfg)
    assert got["profile"]["precision"] == "fp32"  # from pretrain.precision
    assert got["profile"]["compile"] is True and got["pretrain"]["compile"] is False  # its own value
    assert got["evaluate"]["finetune_batch_size"] == 16
    assert validate({**cfg, "evaluate": {"protocols": ["knn"], "finetune_batch_size": 8}})["evaluate"][
        "finetune_batch_size"] == 8


def test_complete_section_gives_what_load_gives(minimal):
    for sec in ("pretrain", "evaluate", "profile"):
        assert complete_section(MINIMAL, sec) == minimal[sec], sec
    assert complete_section({"image_size": 32}, "evaluate")["image_size"] == 32


def test_override_mappings_carry_no_defaults():
    """per_model and variants entries override their section: a default there would override a set value."""
    props = schema()["properties"]
    for entry in (props["pretrain"]["properties"]["per_model"]["additionalProperties"],
                  props["evaluate"]["properties"]["per_model"]["additionalProperties"],
                  props["profile"]["properties"]["variants"]["additionalProperties"]):
        assert not [k for k, v in entry["properties"].items() if "default" in v or "x-default-from" in v]
    cfg = fill_defaults({**MINIMAL, "pretrain": {"per_model": {"demo_tiny": {"nodes": 1}}}})
    assert cfg["pretrain"]["per_model"] == {"demo_tiny": {"nodes": 1}}


def test_override_entries_have_their_sections_types():
    """A per_model entry takes the same values as the section's key it overrides (no drift between the two)."""
    props = schema()["properties"]
    for section in ("pretrain", "evaluate"):
        sec = props[section]["properties"]
        for key, rule in sec["per_model"]["additionalProperties"]["properties"].items():
            own = {k: v for k, v in sec[key].items() if k not in ("default", "description") and not k.startswith("x-")}
            assert rule == own, (section, key)


def test_every_x_default_from_names_a_key_of_the_same_type():
    found = []

    def walk(sch, path):
        for key, sub in sch.get("properties", {}).items():
            if "x-default-from" in sub:
                found.append((f"{path}{key}", sub))
            walk(sub, f"{path}{key}.")

    walk(schema(), "")
    assert found
    for where, sub in found:
        node = schema()
        for part in sub["x-default-from"].split("."):
            node = node["properties"][part]
        assert node.get("type") == sub.get("type") or node.get("$ref") == sub.get("$ref"), where
        assert "default" in node or sub["x-default-from"] == "image_size", where  # image_size is required


def test_train_config_defaults_are_the_schema_s():
    from geofm.train.pretrain import TrainConfig

    pre = complete_section({}, "pretrain")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    outside = {"model", "image_size", "in_chans", "data", "betas", "seed", "device", "fail_at_step"}
    assert set(fields) - outside == set(pre) - set(TrainConfig.NOT_TRAINING)  # each setting has one field
    for name in set(fields) - outside:
        default = fields[name].default
        assert (list(default) if isinstance(default, tuple) else default) == pre[name], name  # tuple: a YAML list
    top = schema()["properties"]
    assert (fields["seed"].default, fields["device"].default) == (top["seed"]["default"], top["device"]["default"])


def test_finetune_config_defaults_are_the_schema_s():
    from geofm.eval.finetune import EVALUATE_KEYS, FinetuneConfig

    ev = complete_section({}, "evaluate")
    fields = {f.name: f for f in dataclasses.fields(FinetuneConfig)}
    assert set(EVALUATE_KEYS) == set(fields) - {"min_lr", "seed"}
    for name, key in EVALUATE_KEYS.items():
        want = tuple(ev[key]) if isinstance(ev[key], list) else ev[key]
        assert fields[name].default == want, name
    assert FinetuneConfig.from_evaluate({**ev, "finetune_lr": 0.01, "finetune_crop_scale": [0.5, 1]}, 3) == \
        FinetuneConfig(base_lr=0.01, crop_scale=(0.5, 1.0), seed=3)


def test_schema_name_lists_equal_their_registries():
    from geofm.distributed.strategies import BASE_STRATEGIES, parse_strategy
    from geofm.eval.stages import PROTOCOLS
    from geofm.models.registry import MODELS

    defs = schema()["definitions"]
    assert defs["model"]["enum"] == list(MODELS)
    assert tuple(defs["protocol"]["enum"]) == PROTOCOLS
    alternatives = re.match(r"\^\((.*)\)\$", defs["strategy"]["pattern"]).group(1).split("|")
    assert tuple(a for a in alternatives if not a.startswith("HYBRID")) == BASE_STRATEGIES
    pattern = re.compile(defs["strategy"]["pattern"])
    for name in (*BASE_STRATEGIES, "HYBRID_1GPU", "HYBRID_16GPUs"):
        assert pattern.match(name) and parse_strategy(name).name == name
    for bad in ("HYBRID_0GPUs", "FSDP", "ddp"):
        assert not pattern.match(bad)


def test_profile_variant_keys_are_the_schema_s_and_override_profile_settings(minimal):
    variant = schema()["properties"]["profile"]["properties"]["variants"]["additionalProperties"]["properties"]
    assert set(PROFILE_VARIANT_KEYS) == set(variant) - {"models", "strategies", "nodes", "description"}
    assert set(PROFILE_VARIANT_KEYS) <= set(minimal["profile"])
    cfg = validate({**MINIMAL, "profile": {**MINIMAL["profile"], "variants": {"v": {"compile": True}}}})
    assert profile_effective(cfg, "v")["profile"]["compile"] is True
    assert profile_effective(cfg, "base")["profile"]["compile"] is False
    with pytest.raises(ValueError, match="unknown profile variant 'w'"):
        profile_effective(cfg, "w")
