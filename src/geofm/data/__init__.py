"""Data stage of GeoFM-Scale: download, synthesize, tile and load satellite imagery.

Submodules:

- :mod:`geofm.data.demo` -- deterministic synthetic georeferenced scenes (with land-cover labels).
- :mod:`geofm.data.download` -- ``fetch_dataset``: synthetic / local / url / derived sources.
- :mod:`geofm.data.tiling` -- ``tile_dataset``: scenes or classification archives -> shards + GeoParquet
  (a package: the format registry, the builder, archive safety, one module per family of formats).
- :mod:`geofm.data.millionaid`, :mod:`geofm.data.mixture` -- the ``millionaid_zip`` and ``mixture`` formats.
- :mod:`geofm.data.shards` -- ``ShardWriter`` and ``TileDataset`` (memmapped uint8 shards).
- :mod:`geofm.data.sampler` -- ``StepSampler``: the one step-indexed sampler (pretraining and fine-tuning).
- :mod:`geofm.data.loader` -- ``StepBatches``: the one loader (a rank's step batches, MAE augmentations).
- :mod:`geofm.data.augment` -- the one preprocessing path (crop, resize, flip, normalise; the test transform).
- :mod:`geofm.data.stages` -- ``run_download`` / ``run_tile`` entry points used by the CLI.

Heavy dependencies (torch, rasterio, geopandas) are imported by the submodules, not here.
"""

from __future__ import annotations


class DataError(Exception):
    """A data problem the user must fix (bad input file, checksum mismatch, HTTP error, ...)."""


__all__ = ["DataError"]
