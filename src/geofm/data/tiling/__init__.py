"""Tile raw datasets into uint8 shards + a GeoParquet manifest + stats.json.

Entry point: :func:`tile_dataset` ``(name, ds_cfg, raw_dir, out_dir, parent_raw_dir=None, seed=0)``.
Everything is written into a temporary sibling directory that replaces ``out_dir`` only when complete, so a
failure never destroys tiles produced earlier.

Modules: :mod:`.registry` (the formats: name -> tiler and properties), :mod:`.builder` (shards, manifest,
stats, atomic swap, seeded splits), :mod:`.archives` (walking raw inputs, safe zip/rar extraction) and one
module per family of formats: :mod:`.scenes` (``geotiff_scenes``), :mod:`.landcover` (``derived_landcover``),
:mod:`.folders` (``ucmerced_zip``, ``eurosat_zip``, ``aid_zip``, ``resisc45_rar``, ``image_folder``),
:mod:`.eurosat_ms` (``eurosat_ms_zip``); ``millionaid_zip`` is :mod:`geofm.data.millionaid` and ``mixture``
:mod:`geofm.data.mixture`. Each module's docstring says what its formats read.
"""
from __future__ import annotations

import inspect
import os
import shutil
import tempfile
from pathlib import Path

from .. import DataError
from .archives import RAR_TOOLS, extract_rar, safe_extract
from .builder import MANIFEST_COLUMNS, SPLITS, Builder, split_rng, stratified_split, swap_into_place
from .eurosat_ms import EUROSAT_MS_BANDS
from .folders import IMAGE_SUFFIXES, decode_image
from .registry import FORMATS, HANDLER_INPUTS, FormatSpec, format_names, format_of, get_format
from .scenes import TIFF_SUFFIXES


__all__ = ["tile_dataset", "FORMATS", "FormatSpec", "format_names", "get_format", "stratified_split",
           "safe_extract", "extract_rar", "decode_image", "split_rng", "Builder", "swap_into_place",
           "MANIFEST_COLUMNS", "SPLITS", "IMAGE_SUFFIXES", "TIFF_SUFFIXES", "EUROSAT_MS_BANDS", "RAR_TOOLS"]


def tile_dataset(name: str, ds_cfg: dict, raw_dir, out_dir, parent_raw_dir=None, seed: int = 0,
                 part_dirs: dict | None = None) -> dict:
    """Tile dataset ``name`` from ``raw_dir`` into ``out_dir`` (atomically); returns the stats dict.

    ``ds_cfg`` is its ``datasets.<name>`` entry (the schema's and the format's defaults are filled here, as
    :func:`geofm.config.load_config` does); ``part_dirs``: a mixture's parts (dataset -> tiles directory)."""
    from ...config import dataset_defaults

    fmt = format_of(ds_cfg)
    if fmt not in FORMATS:
        raise DataError(f"dataset {name!r}: unknown format {fmt!r} (expected one of {sorted(FORMATS)})")
    spec = FORMATS[fmt]
    cfg = dataset_defaults(dict(ds_cfg))
    if spec.reads_raw:
        raw_dir = Path(raw_dir)
        if not raw_dir.is_dir():
            raise DataError(f"dataset {name!r}: raw directory {raw_dir} does not exist (run the download stage)")
    if not cfg.get("tile_size"):
        raise DataError(f"dataset {name!r}: format {fmt!r} needs 'tile_size' in the dataset config")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the final tiles dir should be an ordinary directory
    try:
        b = Builder(tmp, name, int(cfg["tile_size"]), float(cfg["shard_max_mb"]))
        b.work_dir = out_dir.parent / f".{out_dir.name}.shards"
        b.extra["format"] = fmt
        handler = spec.load()
        inputs = {"b": b, "cfg": cfg, "raw_dir": raw_dir, "parent_raw_dir": parent_raw_dir, "seed": int(seed),
                  "spec": spec, "part_dirs": part_dirs or {}}
        handler(**{k: inputs[k] for k in inspect.signature(handler).parameters if k in HANDLER_INPUTS})
        stats = b.finalize()
        for p in tmp.iterdir():  # scratch (e.g. extracted archives) never ships
            if p.is_dir():
                shutil.rmtree(p)
        swap_into_place(tmp, out_dir)
        shutil.rmtree(b.work_dir, ignore_errors=True)  # done: the per-shard work is in out_dir now
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats
