"""The format registry: one table mapping each dataset ``format`` name to its tiler and its properties.

The schema's ``datasets.<name>.format`` enum is these names (a test keeps them equal). Handlers are named
as ``module:function`` and imported when a dataset of that format is tiled, so that reading the table
(``geofm.config`` fills per-format defaults from it) imports neither numpy nor rasterio.

A handler names in its signature the inputs it uses, from: ``b`` (the :class:`~.builder.Builder` collecting
tiles), ``cfg`` (the dataset's config, defaults filled), ``raw_dir``, ``parent_raw_dir`` (a derived
dataset's parent's raw directory), ``seed`` (the study's seed), ``spec`` (its :class:`FormatSpec`) and
``part_dirs`` (a mixture's parts: dataset -> tiles directory). :func:`geofm.data.tiling.tile_dataset`
passes exactly those.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

HANDLER_INPUTS = ("b", "cfg", "raw_dir", "parent_raw_dir", "seed", "spec", "part_dirs")


@dataclass(frozen=True)
class FormatSpec:
    name: str
    handler: str  # "module:function", relative to geofm.data
    defaults: dict = field(default_factory=dict)  # this format's own config defaults (over the schema's)
    class_root: str | None = None  # <class>/<image> layouts: the folder holding the class folders (None: search)
    tile_size_from_study: bool = False  # no tile_size: the study's image_size (scene formats)
    reads_raw: bool = True  # tiles {resources}/raw/<name> (a mixture reads other datasets' tiles instead)

    def load(self) -> Callable:
        module, func = self.handler.split(":")
        return getattr(importlib.import_module(f"geofm.data.{module}"), func)


_CLASS_FOLDERS = "tiling.folders:tile_class_folders"

FORMATS: dict[str, FormatSpec] = {f.name: f for f in [
    FormatSpec("geotiff_scenes", "tiling.scenes:tile_geotiff_scenes", tile_size_from_study=True),
    FormatSpec("derived_landcover", "tiling.landcover:tile_derived_landcover", tile_size_from_study=True),
    # UC Merced Land Use: UCMerced_LandUse/Images/<class>/*.tif, 256 x 256 px
    FormatSpec("ucmerced_zip", _CLASS_FOLDERS, {"tile_size": 256}, class_root="Images"),
    # EuroSAT (RGB): 2750/<Class>/*.jpg, 64 x 64 px
    FormatSpec("eurosat_zip", _CLASS_FOLDERS, {"tile_size": 64}, class_root="2750"),
    FormatSpec("image_folder", _CLASS_FOLDERS),
    # AID: AID/<class>/*.jpg, 600 x 600 px (tiled at 256 by default)
    FormatSpec("aid_zip", _CLASS_FOLDERS, {"tile_size": 256}, class_root="AID"),
    # NWPU-RESISC45: NWPU-RESISC45/<class>/*.jpg, 256 x 256 px
    FormatSpec("resisc45_rar", _CLASS_FOLDERS, {"tile_size": 256}, class_root="NWPU-RESISC45"),
    FormatSpec("millionaid_zip", "millionaid:tile_millionaid"),
    # EuroSAT_MS: <Class>/<Class>_N.tif, 13-band Sentinel-2, 64 x 64 px
    FormatSpec("eurosat_ms_zip", "tiling.eurosat_ms:tile_eurosat_ms", {"tile_size": 64, "bands": 13}),
    FormatSpec("mixture", "mixture:tile_mixture_parts", reads_raw=False),
]}


def format_names() -> list[str]:
    return list(FORMATS)


def format_of(ds_cfg: dict) -> str | None:
    """A dataset's format: its ``format``, else ``derived_landcover`` for ``source: derived``."""
    return ds_cfg.get("format") or ("derived_landcover" if ds_cfg.get("source") == "derived" else None)


def get_format(name) -> FormatSpec:
    try:
        return FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown format {name!r} (expected one of {', '.join(sorted(FORMATS))})") from None
