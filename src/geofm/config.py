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
    """Schema defaults, also inside sections (``pretrain.retries``, ``scheduler.tile_nodes``, ...)."""
    for key, sub in sch.get("properties", {}).items():
        if "default" in sub and key not in node:
            node[key] = copy.deepcopy(sub["default"])
        if isinstance(node.get(key), dict) and sub.get("properties"):
            _fill_defaults(node[key], sub)


def expand_dirs(cfg: dict, source: str = "config") -> dict:
    """``results``/``resources`` may name environment variables (profiles/frontier: ``$GEOFM_ORION/results``,
    on Orion); expanded in place, an unset one is an error naming it."""
    import os
    import re

    for key in ("results", "resources"):
        val = cfg.get(key)
        if isinstance(val, str) and "$" in val:
            new = os.path.expanduser(os.path.expandvars(val))
            left = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", new)
            if left:
                raise ConfigError(f"{source}: {key}: {val!r} uses ${left[0]}, which is not set in the environment "
                                  "(README: On a Slurm cluster)")
            cfg[key] = new
    return cfg


def pretrain_settings(cfg: dict, model: str) -> dict:
    """The ``pretrain`` section as ``model`` sees it: ``pretrain.per_model.<model>`` over the section."""
    p = dict(cfg["pretrain"])
    own = (p.pop("per_model", None) or {}).get(model) or {}
    return {**p, **own}


def evaluate_settings(cfg: dict, model: str) -> dict:
    """The ``evaluate`` section as ``model`` sees it: ``evaluate.per_model.<model>`` over the section."""
    e = dict(cfg["evaluate"])
    own = (e.pop("per_model", None) or {}).get(model) or {}
    return {**e, **own}


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
    expand_dirs(cfg, source)
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
        if d["source"] == "local" and not d.get("path"):
            raise ConfigError(f"{source}: datasets.{name}.path is required when source is 'local'")
    for sec in ("pretrain", "evaluate"):
        extra = [m for m in (cfg[sec].get("per_model") or {}) if m not in cfg["models"]]
        if extra:
            raise ConfigError(f"{source}: {sec}.per_model names {extra}, which are not in models")
    for m in cfg["models"]:
        p = pretrain_settings(cfg, m)
        world = p.get("nodes", 1) * p.get("procs_per_node", 1)
        if p.get("batch_size") and p["batch_size"] % (world * p.get("grad_accum", 1)):
            raise ConfigError(f"{source}: pretrain.batch_size {p['batch_size']} is not divisible by {m}'s "
                              f"{p.get('nodes', 1)} nodes x {p.get('procs_per_node', 1)} ranks"
                              f" x grad_accum {p.get('grad_accum', 1)}")
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
