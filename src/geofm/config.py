"""Load and validate a study configuration: schema (types, enums, ranges) then cross-references.

The JSON schema is the same file that Snakemake's ``validate`` reads (``workflow/schemas``); it ships
inside the package too so that ``geofm`` validates on its own. Errors name the offending key path.
"""
from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
from importlib import resources as ir
from pathlib import Path

import yaml


class ConfigError(ValueError):
    pass


def schema_path() -> Path:
    return Path(str(ir.files("geofm").joinpath("config.schema.yaml")))


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    """The parsed schema, read once per process (rule_params runs for every job of the DAG); do not mutate."""
    return yaml.safe_load(schema_path().read_text())



_ABSENT = object()


def _lookup(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _walk_defaults(node: dict, sch: dict, visit, top: dict | None = None) -> None:
    """Call ``visit(node, key, subschema)`` for every key the schema describes under ``node``: its properties,
    each entry of a mapping whose entries share one object schema (``datasets.<name>``), recursively. The
    override mappings (``per_model``, ``variants``: additionalProperties without their own defaults) are walked
    too, which is harmless because they have none (a unit test keeps it so). The ``datasets`` entries of the
    top level are left to :func:`dataset_defaults`, whose defaults depend on each entry's format and source."""
    top = node if top is None else top
    for key, sub in sch.get("properties", {}).items():
        visit(node, key, sub)
        val = node.get(key)
        if isinstance(val, dict) and not (node is top and key == "datasets"):
            _walk_defaults(val, sub, visit, top)
    extra = sch.get("additionalProperties")
    if isinstance(extra, dict) and extra.get("properties"):
        for val in node.values():
            if isinstance(val, dict):
                _walk_defaults(val, extra, visit, top)


def fill_defaults(cfg: dict, sch: dict | None = None) -> dict:
    """The schema's defaults, in place, in every section (the one place a default lives): first every
    ``default``, then every ``x-default-from`` (an absent key takes another key's value, e.g.
    ``profile.precision`` from ``pretrain.precision``). Returns ``cfg``."""
    sch = schema() if sch is None else sch

    def plain(node, key, sub):
        if key not in node and "default" in sub:
            node[key] = copy.deepcopy(sub["default"])

    def inherited(node, key, sub):
        if key not in node and "x-default-from" in sub:
            val = _lookup(cfg, sub["x-default-from"])
            if val is not _ABSENT:
                node[key] = copy.deepcopy(val)

    _walk_defaults(cfg, sch, plain)
    _walk_defaults(cfg, sch, inherited)
    return cfg


def complete_section(cfg: dict, section: str) -> dict:
    """``cfg[section]`` with the schema's defaults, for a caller that builds a config by hand (a test, a script)
    instead of loading one: the same values :func:`load_config` would have filled in. ``cfg`` is not changed."""
    keys = ("image_size", "device", "seed", "pretrain", section)
    part = {k: copy.deepcopy(cfg[k]) for k in keys if k in cfg}
    part.setdefault(section, {})
    props = schema()["properties"]
    sub = {"properties": {k: props[k] for k in keys}}
    return fill_defaults(part, sub)[section]


# a profile variant's keys that say where it runs (part of the grid) or describe it; the rest are settings
_VARIANT_PLACE = ("models", "strategies", "nodes", "description")


def _variant_keys() -> tuple[str, ...]:
    props = schema()["properties"]["profile"]["properties"]["variants"]["additionalProperties"]["properties"]
    return tuple(k for k in props if k not in _VARIANT_PLACE)


# the settings a profile variant may override (profile.variants.<name>.<key>): the schema's list, the one list
PROFILE_VARIANT_KEYS = _variant_keys()


def _dataset_props() -> dict:
    return schema()["properties"]["datasets"]["additionalProperties"]["properties"]


def dataset_defaults(ds: dict, image_size: int | None = None) -> dict:
    """Fill the defaults of one ``datasets.<name>`` entry in place (and return it): first its format's own
    (the format registry, :mod:`geofm.data.tiling.registry`: e.g. EuroSAT's 64 px ``tile_size``; a scene
    format without ``tile_size`` takes the study's ``image_size``), then the schema's, each only where the
    key's ``x-formats`` / ``x-sources`` (absent: all) include the dataset's. The one place dataset defaults
    are applied: :func:`validate` calls it for every dataset, the tiler and the fetcher for an entry given
    to them directly."""
    from .data.tiling.registry import FORMATS, format_of

    fmt = format_of(ds)
    spec = FORMATS.get(fmt)
    if spec is not None:
        for key, value in spec.defaults.items():
            ds.setdefault(key, copy.deepcopy(value))
        if spec.tile_size_from_study and image_size and not ds.get("tile_size"):
            ds["tile_size"] = int(image_size)
    for key, sub in _dataset_props().items():
        if "default" in sub and key not in ds and fmt in sub.get("x-formats", [fmt]) \
                and ds.get("source") in sub.get("x-sources", [ds.get("source")]):
            ds[key] = copy.deepcopy(sub["default"])
    return ds


def dataset_default(key: str):
    """The schema's default of dataset key ``key`` (for a helper called outside a dataset's config)."""
    return copy.deepcopy(_dataset_props()[key]["default"])


def section_defaults(section: str) -> dict:
    """The schema's defaults of one config section (``pretrain``, ``evaluate``, ...)."""
    props = schema()["properties"].get(section, {}).get("properties", {})
    return {k: copy.deepcopy(v["default"]) for k, v in props.items() if "default" in v}


def expand_dirs(cfg: dict, source: str = "config") -> dict:
    """``results``/``resources`` may name environment variables (profiles/frontier: ``$GEOFM_ORION/results``,
    on Orion); expanded in place, an unset one is an error naming it. A dataset's ``path`` may too, and may
    start with ``{resources}``, the (expanded) resources directory: data fetched by hand then lies where the
    profile puts ``resources/`` (on Frontier on Orion, not in the 50 GB home)."""
    import os
    import re

    def expand(val: str, key: str) -> str:
        new = os.path.expanduser(os.path.expandvars(val))
        left = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", new)
        if left:
            raise ConfigError(f"{source}: {key}: {val!r} uses ${left[0]}, which is not set in the environment "
                              "(README: On a Slurm cluster)")
        return new

    for key in ("results", "resources"):
        val = cfg.get(key)
        if isinstance(val, str) and "$" in val:
            cfg[key] = expand(val, key)
    for name, d in (cfg.get("datasets") or {}).items():
        val = d.get("path") if isinstance(d, dict) else None
        if isinstance(val, str) and ("$" in val or "{resources}" in val):
            if val.count("{resources}") > (1 if val.startswith("{resources}") else 0):
                raise ConfigError(f"{source}: datasets.{name}.path: {val!r}: '{{resources}}' may only start it")
            d["path"] = expand(val.replace("{resources}", str(cfg.get("resources", "resources")), 1),
                               f"datasets.{name}.path")
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
    errors = sorted(jsonschema.Draft202012Validator(sch).iter_errors(cfg), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        raise ConfigError(explain(errors, source))
    cfg = fill_defaults(copy.deepcopy(cfg), sch)  # every default lives in the schema
    expand_dirs(cfg, source)
    ds = cfg["datasets"]
    for entry in ds.values():
        dataset_defaults(entry, cfg["image_size"])
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
    # per_model entries of models outside `models` are ignored (a run of a subset keeps the study's geometry);
    # the schema checks that each names a registry model
    for m in cfg["models"]:
        p = pretrain_settings(cfg, m)
        if p["batch_size"] % (p["nodes"] * p["procs_per_node"] * p["grad_accum"]):
            raise ConfigError(f"{source}: pretrain.batch_size {p['batch_size']} is not divisible by {m}'s "
                              f"{p['nodes']} nodes x {p['procs_per_node']} ranks x grad_accum {p['grad_accum']}")
    for m in dict.fromkeys([*cfg["models"], *cfg["profile"]["models"]]):  # a profile cell's loader reads it too
        lo, hi = pretrain_settings(cfg, m)["crop_scale"]
        if lo > hi:
            own = (cfg["pretrain"].get("per_model") or {}).get(m) or {}
            key = f"pretrain.per_model.{m}.crop_scale" if "crop_scale" in own else "pretrain.crop_scale"
            raise ConfigError(f"{source}: {key} {[lo, hi]} must be [min, max] with min <= max")
    prof = cfg["profile"]
    for vname, v in prof["variants"].items():
        for key in ("models", "strategies", "nodes"):
            extra = [x for x in v.get(key, []) if x not in prof[key]]
            if extra:
                raise ConfigError(f"{source}: profile.variants.{vname}.{key} lists {extra}, which are not in "
                                  f"profile.{key} (a variant runs on part of the profile grid)")
    from .models.registry import get_spec

    for m in dict.fromkeys([*cfg["models"], *cfg["profile"]["models"]]):  # in config order
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


def set_overrides(items: list[str]) -> dict:
    """``--set KEY=VALUE`` items (dotted keys, YAML values) as a nested dict for :func:`load_config`; the one parser
    of geofm's and scripts/seed-sweep's ``--set``."""
    over: dict = {}
    for item in items:
        key, eq, val = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. pretrain.steps=10")
        node = over
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        try:
            node[parts[-1]] = yaml.safe_load(val)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: {val!r} is not a YAML value ({exc.problem})") from None
    return over


def deep_update(base: dict, upd: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------- readable errors
def _show(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _allowed(sch: dict) -> str:
    """What a (sub)schema accepts, in words: 'one of a, b', 'integer >= 1', a description."""
    if "enum" in sch:
        return "one of " + ", ".join(str(v) for v in sch["enum"])
    if "allowed" in sch:  # a pattern's readable form (definitions.strategy)
        return sch["allowed"]
    kind = sch.get("type", "value")
    if isinstance(kind, list):  # e.g. [integer, "null"]: "integer or null"
        kind = " or ".join(str(k) for k in kind)
    bounds = [f"{op} {sch[k]}" for k, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                                             ("exclusiveMaximum", "<")) if k in sch]
    if "pattern" in sch:
        bounds.append(f"matching {sch['pattern']}")
    if "minItems" in sch:
        bounds.append(f"at least {sch['minItems']} item(s)")
    return " ".join([kind, *bounds])


def _number_text(text: str) -> bool:
    """``1e-3``-like text: a number to a reader, a string to YAML 1.1 (PyYAML), which wants a dot."""
    import re

    return bool(re.fullmatch(r"[-+]?\d+[eE][-+]?\d+", text.strip()))


def _dotted(text: str) -> str:
    mant, exp = text.strip().lower().split("e")
    return f"{mant}.0e{exp}"


def explain(errors: list, source: str = "config") -> str:
    """At most three lines for a failed schema validation: the key path and the bad value, what is allowed
    (for an unknown key: the nearest valid key and the keys allowed there), and how many more problems."""
    e = errors[0]
    path = [str(p) for p in e.absolute_path]
    where = ".".join(path)
    if e.validator == "additionalProperties" and isinstance(e.instance, dict):
        known = list(e.schema.get("properties", {}))
        extra = [k for k in e.instance if k not in known]
        key = extra[0] if extra else "?"
        full = ".".join([*path, str(key)])
        near = difflib.get_close_matches(str(key), known, n=1, cutoff=0.5)
        hint = f"; did you mean {'.'.join([*path, near[0]])}?" if near else ""
        head = f"{source}: {full}: unknown key (value {_show(e.instance.get(key))}){hint}"
        body = f"  allowed under {where or 'the top level'}: {', '.join(known)}"
    elif e.validator == "required":
        head = f"{source}: {where or 'top level'}: {e.message}"
        body = f"  required keys there: {', '.join(e.validator_value)}"
    else:
        head = f"{source}: {where or 'top level'}: {_show(e.instance)} is not allowed"
        body = f"  allowed: {_allowed(e.schema)}"
        if isinstance(e.instance, str) and _number_text(e.instance):
            body += f" (YAML reads {e.instance} as text: write it with a dot, e.g. {_dotted(e.instance)})"
    lines = [head, body]
    if len(errors) > 1:
        more = dict.fromkeys(".".join(str(p) for p in x.absolute_path) or "top level" for x in errors[1:])
        lines.append(f"  ({len(errors) - 1} more: {', '.join(list(more)[:4])}{', ...' if len(more) > 4 else ''})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- --config overrides
def _subschema(sch: dict, root: dict, key) -> dict | None:
    """The schema of ``key`` (a mapping key or a list index) below ``sch``, $refs resolved."""
    if isinstance(key, int):
        node = sch.get("items")
    else:
        node = sch.get("properties", {}).get(key)
        if node is None and isinstance(sch.get("additionalProperties"), dict):
            node = sch["additionalProperties"]
    while isinstance(node, dict) and "$ref" in node:
        target = root
        for part in node["$ref"].split("/")[1:]:
            target = target[part]
        node = target
    return node


def _typed(value, sch: dict | None, root: dict):
    """``value`` as the schema's type where it is a string that reads as one (``'50'`` -> 50 for an integer,
    ``'true'`` -> True for a boolean); containers element by element; anything else unchanged (the schema
    validation then names it)."""
    if sch is None:
        return value
    if isinstance(value, dict):
        return {k: _typed(v, _subschema(sch, root, k), root) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v, _subschema(sch, root, 0), root) for v in value]
    if not isinstance(value, str):
        return value
    kind = sch.get("type")
    kinds = kind if isinstance(kind, list) else [kind]  # e.g. [integer, "null"]
    text = value.strip()
    if "null" in kinds and text.lower() in ("null", "~"):  # YAML's spellings of null
        return None
    try:
        if "integer" in kinds and text.lstrip("+-").isdigit():
            return int(text)
        if "number" in kinds:
            return float(text) if any(c in text.lower() for c in ".en") else int(text)
    except ValueError:
        return value
    if "boolean" in kinds and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return value


def type_overrides(cfg: dict, overrides: dict) -> dict:
    """Type the values that ``overrides`` (Snakemake's ``--config``, which it parses with YAML's BaseLoader, so
    nested values arrive as strings) put into ``cfg``, by the schema; in place, returns ``cfg``. Values from
    config files are left as they are: a quoted number there stays an error."""
    root = schema()

    def walk(node: dict, over: dict, sch: dict | None):
        for k, v in over.items():
            sub = _subschema(sch, root, k) if sch else None
            if isinstance(v, dict) and isinstance(node.get(k), dict):
                walk(node[k], v, sub)
            elif k in node:
                node[k] = _typed(node[k], sub, root)

    walk(cfg, overrides or {}, root)
    return cfg


# --------------------------------------------------------------------------- what each rule's outputs depend on
def canonical(obj):
    """``obj`` with every mapping's keys sorted (tuples as lists): a stable repr for Snakemake's params."""
    if isinstance(obj, dict):
        return {str(k): canonical(obj[k]) for k in sorted(obj, key=str)}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    return obj


def digest(obj, n: int = 16) -> str:
    """A short sha256 of ``obj``'s canonical JSON (the config fingerprints in result files)."""
    text = json.dumps(canonical(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _props(section: str) -> dict:
    return schema()["properties"][section]["properties"]


def unset_default(props: dict, key: str, value) -> bool:
    """True for a key marked ``x-omit-default`` in the schema that holds its default: such a key is left out of
    params and of the checkpoint fingerprint, so that adding it to the schema reran nothing."""
    p = props.get(key) or {}
    if isinstance(value, tuple):  # a dataclass's tuple of a YAML list (TrainConfig.crop_scale)
        value = list(value)
    return bool(p.get("x-omit-default")) and value == p.get("default")


def section_keys(cfg: dict, section: str, exclude: tuple = ("never",), values: dict | None = None) -> dict:
    """``cfg[section]`` (or ``values``: that section as one model sees it, e.g. ``pretrain_settings``) less the
    keys whose schema entry says ``x-rerun`` is in ``exclude`` and the ``x-omit-default`` keys at their default."""
    props = _props(section)
    return {k: v for k, v in (cfg.get(section) or {} if values is None else values).items()
            if (props.get(k) or {}).get("x-rerun") not in exclude and not unset_default(props, k, v)}


def dataset_params(cfg: dict, name: str, rule: str) -> dict:
    """The part of ``datasets.<name>`` that rule ``download`` or ``tile`` reads (schema ``x-rules``)."""
    props = schema()["properties"]["datasets"]["additionalProperties"]["properties"]
    ds = cfg["datasets"][name]
    out = {k: v for k, v in ds.items() if rule in (props.get(k) or {}).get("x-rules", ["tile"])}
    if "seed" not in ds and (rule == "tile" or ds["source"] == "synthetic"):
        out["seed"] = cfg["seed"]  # what geofm.data.stages falls back to
    if rule == "tile" and not ds.get("tile_size"):
        out["image_size"] = cfg["image_size"]
    return out


def _spec(model: str) -> dict:
    import dataclasses

    from .models.registry import get_spec

    spec = dataclasses.asdict(get_spec(model))
    return {k: spec[k] for k in ("width", "depth", "mlp", "heads", "patch")}  # the shape, not the labels


def _reference_tables() -> dict:
    ref = Path(str(ir.files("geofm").joinpath("plots", "reference")))
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in sorted(ref.glob("*.csv"))}


def profile_effective(cfg: dict, variant: str, model: str | None = None) -> dict:
    """A profile cell's settings: ``profile`` the profile section (less its grid lists and execution-only keys)
    under the variant's overrides (``own``; ``base``: none), ``pretrain`` the rest of the step's settings, which
    come from the pretrain section (``x-profile``) as ``model`` sees it (``pretrain.per_model``; the section
    alone without a model). An unknown variant is a ValueError."""
    prof = cfg["profile"]
    variants = prof["variants"]
    if variant != "base" and variant not in variants:
        raise ValueError(f"unknown profile variant {variant!r} (profile.variants: {', '.join(variants) or 'none'})")
    own = {k: v for k, v in (variants.get(variant) or {}).items() if k in PROFILE_VARIANT_KEYS}
    eff = {k: v for k, v in section_keys(cfg, "profile").items() if k not in ("models", "strategies", "nodes",
                                                                                "variants")}
    eff.update(own)
    props = _props("pretrain")
    pre = pretrain_settings(cfg, model) if model else cfg["pretrain"]
    step = {k: v for k, v in pre.items()
            if (props.get(k) or {}).get("x-profile") and k not in eff and not unset_default(props, k, v)}
    return {"variant": variant, "profile": eff, "pretrain": step, "own": own}


def rule_params(cfg: dict, rule: str, dataset: str | None = None, model: str | None = None,
                protocol: str | None = None, variant: str | None = None, train_ratio: float | None = None) -> dict:
    """The part of the (validated) config that determines the outputs of one job of ``rule``: the Snakemake
    rules declare it as ``params:`` (so that Snakemake's params trigger reruns exactly the jobs a change
    touches) and the result JSONs record its digest. Keys are sorted and no path of the checkout is in it."""
    if rule in ("download", "tile"):
        out = {"dataset": dataset, **dataset_params(cfg, dataset, rule)}
    elif rule == "pretrain":
        ds = cfg["pretrain_dataset"]
        out = {"model": model, "spec": _spec(model), "image_size": cfg["image_size"], "seed": cfg["seed"],
               "pretrain": section_keys(cfg, "pretrain", values=pretrain_settings(cfg, model)),
               "dataset": {"name": ds, **dataset_params(cfg, ds, "tile")}}
    elif rule == "evaluate":
        props = _props("evaluate")
        ev = {k: v for k, v in section_keys(cfg, "evaluate", values=evaluate_settings(cfg, model)).items()
              if protocol in (props.get(k) or {}).get("x-protocol", [protocol])}
        if not isinstance(ev.get("logreg_l2"), list):  # folds matter only to a cross-validated penalty
            ev.pop("logreg_cv_folds", None)
        if ev.get("pool") == "mean":  # its definition changed once (geofm.models.registry.POOLING): those jobs
            from .models.registry import POOLING  # rerun; the cls token's kept its params

            ev["pooling"] = POOLING["mean"]
        out = {"protocol": protocol, "model": model, "dataset": dataset, "image_size": cfg["image_size"],
               "seed": cfg["seed"], "evaluate": ev}
        if train_ratio is not None:  # one of datasets.<D>.train_ratios: this job's re-split ({D}.tr<percent>.json)
            out["train_ratio"] = float(train_ratio)
    elif rule == "profile":
        eff = profile_effective(cfg, variant, model)
        del eff["own"]  # already in eff["profile"]
        if eff["profile"]["data"] == "real":
            eff["dataset"] = cfg["pretrain_dataset"]
        out = {"model": model, "spec": _spec(model), "image_size": cfg["image_size"], "seed": cfg["seed"], **eff}
    elif rule == "plan":  # geofm.perf reads the profile grid, the pretraining plan and the models' shapes
        names = sorted(set(cfg["profile"]["models"]) | set(cfg["models"]))
        out = {"plan": section_keys(cfg, "plan"), "profile": section_keys(cfg, "profile"),
               "pretrain": section_keys(cfg, "pretrain"), "specs": {m: _spec(m) for m in names},
               # each model's pretraining as the plan prices it (pretrain.per_model over the section): its recipe
               # and its geometry (execution-only elsewhere); not its walltime or retries
               "pretrain_per_model": {m: {**section_keys(cfg, "pretrain", values=pretrain_settings(cfg, m)),
                                          "geometry": [pretrain_settings(cfg, m)[k] for k in ("nodes", "procs_per_node")]}
                                      for m in cfg["models"]},
               "image_size": cfg["image_size"], "paper_reference": _reference_tables()}
    elif rule == "figures":
        out = {"paper_reference": _reference_tables()}
    else:
        raise ValueError(f"no params for rule {rule!r}")
    return canonical(out)
