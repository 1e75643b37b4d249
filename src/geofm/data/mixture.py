"""A mixed pretraining set: the tiles of several tiled datasets in one tiles directory.

Config (``source: mixture``, ``format: mixture``)::

    realmix:
      kind: scenes
      source: mixture
      format: mixture
      parts: {ucmerced: train, eurosat: train, landsat8: all}   # dataset -> which tiles (train | all)
      tile_size: 64

Each part's tiles (``results/tiles/<part>``, made by its own tile job) are read through
:class:`~geofm.data.shards.TileDataset`, resized to ``tile_size`` with the project's one resize
(:func:`geofm.data.augment.resized_crop`: antialiased, uint8) and written as ``split: train`` with
``label -1`` (a pretraining set has no classes). ``train`` takes a classification dataset's training
split only, so no evaluation image is seen in pretraining; ``all`` takes every tile (scenes that nothing
evaluates on). ``stats.json`` holds the mixture's own per-band mean/std (what pretraining and evaluation
normalise with) and the tile count per part. Every part must have the same number of bands.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import DataError

PART_SPLITS = ("train", "all")


def tile_mixture(name: str, ds_cfg: dict, part_dirs: dict[str, Path], out_dir) -> dict:
    """Write the mixture ``name`` of the tiles directories ``part_dirs`` (dataset -> tiles dir) into
    ``out_dir`` atomically; returns its stats (:func:`geofm.data.tiling.tile_dataset` of format ``mixture``)."""
    from .tiling import tile_dataset

    return tile_dataset(name, {**ds_cfg, "format": "mixture"}, None, out_dir, part_dirs=part_dirs)


def tile_mixture_parts(b, cfg: dict, part_dirs: dict[str, Path], chunk: int = 512) -> None:
    """The tiler of format ``mixture`` (registered in :mod:`geofm.data.tiling.registry`)."""
    from .augment import resized_crop
    from .shards import TileDataset

    name, S = b.name, b.tile_size
    parts = cfg.get("parts") or {}
    if not parts:
        raise DataError(f"dataset {name!r}: a mixture needs 'parts: {{dataset: train | all, ...}}'")
    counts, bands = {}, None
    # in name order, not the YAML's: the workflow hands each stage its config with sorted keys
    # (workflow/rules/common.smk), and a stage run by hand on the same config must tile the same mixture (the
    # order of its tiles is the pretraining's sample order, its statistics the normalisation)
    for part, which in sorted(parts.items()):
        if which not in PART_SPLITS:
            raise DataError(f"dataset {name!r}: parts.{part} must be one of {PART_SPLITS}, got {which!r}")
        d = Path(part_dirs[part])
        if not (d / "stats.json").is_file():
            raise DataError(f"dataset {name!r}: part {part!r} has no tiles at {d} (run its tile stage first)")
        ds = TileDataset(d, split="train" if which == "train" else None)
        if bands is not None and ds.stats["bands"] != bands:
            raise DataError(f"dataset {name!r}: part {part!r} has {ds.stats['bands']} bands, the parts before "
                            f"it have {bands}")
        bands = ds.stats["bands"]
        tiles = ds.as_tensor()
        ids = [str(t) for t in ds.tile_ids]
        for i in range(0, len(tiles), chunk):
            x = resized_crop(torch.as_tensor(np.asarray(tiles[i:i + chunk])), None, S)
            for j, t in enumerate(x.numpy()):
                tid = f"{part}/{ids[i + j]}"
                b.add(np.ascontiguousarray(t), {"tile_id": tid, "source": tid, "row_off": 0, "col_off": 0,
                                                "height": S, "width": S, "crs": None, "geometry": None,
                                                "label": -1, "label_name": "", "split": "train"})
        counts[part] = {"tiles": int(len(tiles)), "split": which}
    b.extra["parts"] = counts


def stats_of(tiles_dir) -> dict:
    from .shards import read_stats

    return read_stats(tiles_dir)
