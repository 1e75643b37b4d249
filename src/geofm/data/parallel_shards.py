"""Shard writing in parallel processes, resumable per shard (the layer under the tile stage's image paths).

The items (e.g. ~1M MillionAID images) are cut, in their sorted order, into fixed groups of
``per_shard`` (the :class:`~geofm.data.shards.ShardWriter` size for ``shard_max_mb``); worker process
``k`` decodes group ``k`` into ``shard-XXXXX.npy`` plus ``shard-XXXXX.json`` (per item: its metadata or
why it was rejected) in a work directory beside the output. Both are written atomically, the JSON last:
a shard with its JSON is done. A run that dies (walltime, node failure) leaves its done shards there; the
next run with the same items, tile size and shard size (the work directory's ``plan.json``) decodes only
the missing ones. A changed item list starts over. Shards of rejected-only groups are empty and dropped.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..common.io import save_numpy, write_json
from .shards import shard_name


def _write_compact_json(path: Path, obj) -> None:
    write_json(path, obj, indent=None, newline=False)


def shard_size(bands: int, tile_size: int, shard_max_mb: float) -> int:
    return max(1, int(shard_max_mb * 1024 * 1024) // (bands * tile_size * tile_size))


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))  # the CPUs this job may use (Slurm's cpuset)
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _decode_group(args) -> tuple[int, int]:
    k, items, decode, work = args
    work = Path(work)
    tiles, meta = [], []
    for item in items:
        try:
            tile, info = decode(item)
        except Exception as e:  # noqa: BLE001 - a corrupt input is rejected, not fatal
            meta.append({"ok": False, "reason": f"{type(e).__name__}: {e}"})
            continue
        tiles.append(tile)
        meta.append({"ok": True, **info})
    npy = work / shard_name(k)
    if tiles:
        save_numpy(npy, np.stack(tiles))
    _write_compact_json(work / f"{npy.stem}.json", meta)
    return k, len(tiles)


def decode_shards(items: Sequence, decode: Callable, per_shard: int, work_dir: Path, workers: int,
                  identity: dict, log=print) -> list[tuple[Path | None, list[dict]]]:
    """Decode ``items`` with ``decode(item) -> (uint8 tile, metadata dict)`` (a picklable top-level
    function) into shards under ``work_dir``; returns, per group in order, ``(npy path or None, per-item
    metadata: {"ok": True, ...} or {"ok": False, "reason"})``. ``identity`` (JSON) names the content:
    the items' stable names (not scratch paths), the format, the tile size."""
    work_dir = Path(work_dir)
    key = hashlib.sha256(json.dumps({**identity, "per_shard": per_shard, "n": len(items)},
                                    sort_keys=True).encode()).hexdigest()
    plan = work_dir / "plan.json"
    if work_dir.exists() and (not plan.exists() or json.loads(plan.read_text()).get("key") != key):
        shutil.rmtree(work_dir)  # other items or settings: nothing there can be reused
    work_dir.mkdir(parents=True, exist_ok=True)
    _write_compact_json(plan, {"key": key, "n_items": len(items), "per_shard": per_shard})
    groups = [list(items[i:i + per_shard]) for i in range(0, len(items), per_shard)]
    todo = [k for k in range(len(groups)) if not (work_dir / f"{shard_name(k)[:-4]}.json").exists()]
    if len(todo) < len(groups):
        log(f"resuming: {len(groups) - len(todo)} of {len(groups)} shards already decoded in {work_dir}")
    jobs = [(k, groups[k], decode, str(work_dir)) for k in todo]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            for k, n in pool.map(_decode_group, jobs):
                log(f"shard {k + 1}/{len(groups)}: {n} tiles")
    else:
        for job in jobs:
            _decode_group(job)
    out = []
    for k in range(len(groups)):
        npy = work_dir / shard_name(k)
        meta = json.loads((work_dir / f"{npy.stem}.json").read_text())
        out.append((npy if npy.exists() else None, meta))
    return out
