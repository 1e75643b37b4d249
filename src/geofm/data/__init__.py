"""Data stage of GeoFM-Scale: download, synthesize, tile and load satellite imagery.

Submodules:

- :mod:`geofm.data.demo` -- deterministic synthetic georeferenced scenes (with land-cover labels).
- :mod:`geofm.data.download` -- ``fetch_dataset``: synthetic / local / url / derived sources.
- :mod:`geofm.data.tiling` -- ``tile_dataset``: scenes or classification archives -> shards + GeoParquet.
- :mod:`geofm.data.shards` -- ``ShardWriter`` and ``TileDataset`` (memmapped uint8 shards).
- :mod:`geofm.data.loader` -- ``make_loader`` / ``infinite_batches`` (rank-split, MAE augmentations).
- :mod:`geofm.data.stages` -- ``run_download`` / ``run_tile`` entry points used by the CLI.

Heavy dependencies (torch, rasterio, geopandas) are imported by the submodules, not here.
"""

from __future__ import annotations


class DataError(Exception):
    """A data problem the user must fix (bad input file, checksum mismatch, HTTP error, ...)."""


__all__ = ["DataError"]
