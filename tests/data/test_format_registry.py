"""The format registry against the schema, and the dataset defaults it and the schema supply."""
from __future__ import annotations

import inspect

import pytest

from geofm.config import dataset_defaults, schema, validate
from geofm.data.tiling.registry import FORMATS, HANDLER_INPUTS, format_names

DS_PROPS = schema()["properties"]["datasets"]["additionalProperties"]["properties"]


def test_schema_format_enum_is_the_registry():
    assert DS_PROPS["format"]["enum"] == format_names()


def test_every_handler_loads_and_takes_only_inputs_the_tiler_passes():
    for spec in FORMATS.values():
        params = inspect.signature(spec.load()).parameters
        required = [k for k, p in params.items() if p.default is inspect.Parameter.empty]
        assert set(required) <= set(HANDLER_INPUTS), (spec.name, required)


def test_x_formats_name_registry_formats_and_defaults_validate():
    sources = set(DS_PROPS["source"]["enum"])
    for key, sub in DS_PROPS.items():
        assert set(sub.get("x-formats", [])) <= set(FORMATS), key
        assert set(sub.get("x-sources", [])) <= sources, key
    for spec in FORMATS.values():  # a format's own defaults are keys the schema knows
        assert set(spec.defaults) <= set(DS_PROPS), spec.name


def _cfg(datasets: dict) -> dict:
    return {"datasets": datasets, "pretrain_dataset": "scenes", "eval_datasets": ["es"], "models": ["demo_tiny"],
            "image_size": 32, "pretrain": {}, "evaluate": {"protocols": ["knn"]},
            "profile": {"models": ["demo_tiny"], "strategies": ["NO_SHARD"], "nodes": [1]}}


def test_load_fills_dataset_defaults_by_format_and_source():
    cfg = validate(_cfg({
        "scenes": {"kind": "scenes", "source": "synthetic", "format": "geotiff_scenes"},
        "es": {"kind": "classification", "source": "local", "path": "x", "format": "eurosat_zip"},
        "ms": {"kind": "classification", "source": "url", "url": "http://x/a.zip", "format": "eurosat_ms_zip",
               "tile_size": 32, "train_ratio": 0.5},
    }))
    sc, es, ms = (cfg["datasets"][k] for k in ("scenes", "es", "ms"))
    # a scene format takes the study's image_size; the schema's scene keys, the synthetic source's keys
    assert sc["tile_size"] == 32 and sc["min_valid_fraction"] == 0.5 and sc["val_fraction"] == 0.1
    assert (sc["n_scenes"], sc["size"], sc["bands"]) == (3, 2048, 3)
    assert "train_ratio" not in sc and "scaling" not in sc and "retries" not in sc
    # EuroSAT's own tile size (the registry), the class-folder keys, nothing of other formats
    assert es["tile_size"] == 64 and es["train_ratio"] == 0.8 and es["val_ratio"] == 0.0
    assert "min_valid_fraction" not in es and "n_scenes" not in es and "scaling" not in es
    # given values win; the format's bands, the schema's scaling, the url source's retries
    assert ms["tile_size"] == 32 and ms["train_ratio"] == 0.5 and ms["bands"] == 13
    assert ms["scaling"] == "fixed" and ms["scale_range"] == [0, 10000] and ms["retries"] == 5


def test_dataset_defaults_is_idempotent_and_leaves_unknown_formats_alone():
    ds = dataset_defaults({"kind": "classification", "source": "local", "format": "ucmerced_zip"})
    assert dataset_defaults(dict(ds)) == ds and ds["tile_size"] == 256
    with pytest.raises(KeyError, match="unknown format"):
        from geofm.data.tiling.registry import get_format

        get_format("tarball")
