"""CLI-facing entry points of the data stage: ``run_download`` and ``run_tile``.

Both take the full validated config dict (``geofm.config.load_config``) and a dataset name:

- ``run_download(cfg, name) -> Path``: fetches into ``{resources}/raw/{name}/`` and returns the path of
  ``{resources}/raw/{name}/download.json`` (the Snakemake rule's output).
- ``run_tile(cfg, name) -> Path``: tiles into ``{results}/tiles/{name}/`` (``manifest.parquet``, ``stats.json``,
  ``shard-*.npy``, ``rejected.csv``) and returns that directory.  For ``source: derived`` the parent's raw
  directory (``{resources}/raw/{from}``) is passed to the tiler.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from . import DataError

log = logging.getLogger(__name__)


def _ds_cfg(cfg: dict, dataset: str) -> dict:
    try:
        return dict(cfg["datasets"][dataset])
    except KeyError:
        known = sorted((cfg.get("datasets") or {}).keys())
        raise DataError(f"dataset {dataset!r} is not in the config (known: {', '.join(known) or 'none'})") from None


def raw_dir_for(cfg: dict, dataset: str) -> Path:
    return Path(cfg["resources"]) / "raw" / dataset


def tiles_dir_for(cfg: dict, dataset: str) -> Path:
    return Path(cfg["results"]) / "tiles" / dataset


def run_download(cfg: dict, dataset: str) -> Path:
    """Fetch ``dataset``; returns ``{resources}/raw/{dataset}/download.json``."""
    from .download import fetch_dataset

    ds = _ds_cfg(cfg, dataset)
    if ds["source"] == "synthetic" and "seed" not in ds:
        ds["seed"] = cfg["seed"]
    path = fetch_dataset(dataset, ds, raw_dir_for(cfg, dataset))
    log.info("downloaded %s -> %s", dataset, path)
    return path


def run_tile(cfg: dict, dataset: str) -> Path:
    """Tile ``dataset``; returns ``{results}/tiles/{dataset}`` (holding manifest.parquet and stats.json)."""
    from ..config import dataset_defaults
    from .tiling import tile_dataset

    ds = dataset_defaults(_ds_cfg(cfg, dataset), cfg["image_size"])
    out = tiles_dir_for(cfg, dataset)
    if ds["source"] == "mixture":
        parts = {p: tiles_dir_for(cfg, p) for p in ds.get("parts") or {}}
        stats = tile_dataset(dataset, ds, None, out, seed=cfg["seed"], part_dirs=parts)
        log.info("mixed %s: %d tiles from %s -> %s", dataset, stats["n_tiles"], json.dumps(stats["parts"]), out)
        return out
    parent_raw = None
    if ds["source"] == "derived":
        parent = ds.get("from")
        if not parent:
            raise DataError(f"dataset {dataset!r}: source 'derived' needs 'from:'")
        parent_raw = raw_dir_for(cfg, parent)
        if not (parent_raw / "download.json").exists():
            raise DataError(f"dataset {dataset!r} is derived from {parent!r}, but {parent_raw}/download.json is "
                            f"missing: run the download stage for {parent!r} first")
    raw = raw_dir_for(cfg, dataset)
    if ds["source"] != "derived" and not (raw / "download.json").exists():
        raise DataError(f"{raw / 'download.json'} is missing: run the download stage for {dataset!r} first "
                        "(a failed download leaves none)")
    stats = tile_dataset(dataset, ds, raw, out, parent_raw_dir=parent_raw, seed=cfg["seed"])
    log.info("tiled %s: %d tiles (%s), %d rejected -> %s", dataset, stats["n_tiles"],
             json.dumps(stats["splits"]), len(stats["rejected"]), out)
    bad = stats["rejected"]
    if bad:  # said on the console, not only in rejected.csv
        first = "; ".join(f"{Path(str(r.get('file', '?'))).name}: {r.get('reason', '?')}" for r in bad[:3])
        print(f"geofm tile: {dataset}: {len(bad)} input(s) rejected, listed in {out / 'rejected.csv'}: {first}"
              f"{'; ...' if len(bad) > 3 else ''}", file=sys.stderr)
    return out
