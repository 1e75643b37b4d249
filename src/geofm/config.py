"""Load and validate a study configuration: schema (types, enums, ranges) then cross-references.

The JSON schema is the same file that Snakemake's ``validate`` reads (``workflow/schemas``); it ships
inside the package too so that ``geofm`` validates on its own. Errors name the offending key path.
"""
from __future__ import annotations

import copy
from importlib import resources as ir
from pathlib import Path

import yaml


# the settings a profile variant may override (profile.variants.<name>.<key>); the rest of a variant's keys
# (models, strategies, nodes, description) say where it runs
PROFILE_VARIANT_KEYS = ("backward_prefetch", "forward_prefetch", "compile", "activation_checkpointing", "data",
                        "precision")


class ConfigError(ValueError):
    pass


def schema_path() -> Path:
    return Path(str(ir.files("geofm").joinpath("config.schema.yaml")))


def schema() -> dict:
    return yaml.safe_load(schema_path().read_text())


def _fill_defaults(node: dict, sch: dict) -> None:
    for key, sub in sch.get("properties", {}).items():
        if "default" in sub and key not in node:
            node[key] = copy.deepcopy(sub["default"])


def section_defaults(section: str) -> dict:
    """The schema's defaults of one config section (``pretrain``, ``evaluate``, ...)."""
    props = schema()["properties"].get(section, {}).get("properties", {})
    return {k: copy.deepcopy(v["default"]) for k, v in props.items() if "default" in v}


def validate(cfg: dict, source: str = "config") -> dict:
    import jsonschema

    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: the configuration must be a mapping, got {type(cfg).__name__}")
    sch = schema()
    errors = sorted(jsonschema.Draft202012Validator(sch).iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors[:10]:
            where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
            lines.append(f"  {where}: {e.message}")
        raise ConfigError(f"{source}: invalid configuration:\n" + "\n".join(lines))
    cfg = copy.deepcopy(cfg)
    _fill_defaults(cfg, sch)
    for sec in ("pretrain", "evaluate"):  # every default lives in the schema
        _fill_defaults(cfg[sec], sch["properties"][sec])
    ds = cfg["datasets"]
    if cfg["pretrain_dataset"] not in ds:
        raise ConfigError(f"{source}: pretrain_dataset {cfg['pretrain_dataset']!r} is not under datasets "
                          f"(known: {', '.join(ds)})")
    for name in cfg["eval_datasets"]:
        if name not in ds:
            raise ConfigError(f"{source}: eval_datasets entry {name!r} is not under datasets (known: {', '.join(ds)})")
        if ds[name]["kind"] != "classification":
            raise ConfigError(f"{source}: eval_datasets entry {name!r} has kind {ds[name]['kind']!r}, "
                              "expected 'classification'")
    for name, d in ds.items():
        if d["source"] == "derived" and d.get("from") not in ds:
            raise ConfigError(f"{source}: datasets.{name}.from must name another dataset, got {d.get('from')!r}")
        if d["source"] == "url" and not d.get("url"):
            raise ConfigError(f"{source}: datasets.{name}.url is required when source is 'url'")
        if d["source"] == "mixture":
            parts = d.get("parts") or {}
            bad = [p for p in parts if p not in ds or p == name or ds[p]["source"] == "mixture"]
            if not parts or bad:
                raise ConfigError(f"{source}: datasets.{name}.parts must name other (non-mixture) datasets, "
                                  f"got {bad or parts!r}")
        if d["source"] == "local" and not d.get("path"):
            raise ConfigError(f"{source}: datasets.{name}.path is required when source is 'local'")
    prof = cfg["profile"]
    for vname, v in (prof.get("variants") or {}).items():
        for key in ("models", "strategies", "nodes"):
            extra = [x for x in v.get(key, []) if x not in prof.get(key, [])]
            if extra:
                raise ConfigError(f"{source}: profile.variants.{vname}.{key} lists {extra}, which are not in "
                                  f"profile.{key} (a variant runs on part of the profile grid)")
    from .models.registry import get_spec

    for m in dict.fromkeys([*cfg["models"], *cfg["profile"].get("models", [])]):  # in config order
        if cfg["image_size"] % get_spec(m).patch:
            raise ConfigError(f"{source}: image_size {cfg['image_size']} is not a multiple of {m}'s patch "
                              f"size {get_spec(m).patch}")
    return cfg


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if overrides:
        cfg = deep_update(cfg or {}, overrides)
    return validate(cfg, str(path))


def deep_update(base: dict, upd: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = v
    return out
