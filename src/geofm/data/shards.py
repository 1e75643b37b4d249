"""Tile shards: writing (``ShardWriter``) and memory-mapped reading (``TileDataset``).

On-disk layout of a tiles directory (see docs/ARCHITECTURE.md)::

    shard-00000.npy     uint8 N x C x S x S (plain .npy, memory-mappable)
    manifest.parquet    GeoParquet, one row per tile (shard = shard number, index = row in that shard)
    stats.json          mean/std per band (train split, 0..1 units), bands, tile_size, classes, ...
    rejected.csv        file,reason for every input that was skipped
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import DataError

MANIFEST = "manifest.parquet"
STATS = "stats.json"


def shard_name(shard: int) -> str:
    """File name of shard number ``shard``."""
    return f"shard-{int(shard):05d}.npy"


class ShardWriter:
    """Accumulate uint8 C x S x S tiles and flush them to ``shard-XXXXX.npy`` files of bounded size."""

    def __init__(self, out_dir, bands: int, tile_size: int, shard_max_mb: float = 256):
        self.out_dir = Path(out_dir)
        self.bands, self.tile_size = int(bands), int(tile_size)
        tile_bytes = self.bands * self.tile_size * self.tile_size
        self.per_shard = max(1, int(shard_max_mb * 1024 * 1024) // tile_bytes)
        self._buf: list[np.ndarray] = []
        self.shard = 0
        self.n_written = 0
        self.files: list[Path] = []

    def add(self, tile: np.ndarray) -> tuple[int, int]:
        """Append one tile; returns its (shard, index)."""
        tile = np.asarray(tile)
        if tile.dtype != np.uint8 or tile.shape != (self.bands, self.tile_size, self.tile_size):
            raise DataError(f"tile must be uint8 {(self.bands, self.tile_size, self.tile_size)}, got "
                            f"{tile.dtype} {tile.shape}")
        loc = (self.shard, len(self._buf))
        self._buf.append(tile)
        self.n_written += 1
        if len(self._buf) >= self.per_shard:
            self.flush()
        return loc

    def flush(self) -> None:
        """Write the buffered tiles as the current shard (no-op when empty)."""
        if not self._buf:
            return
        path = self.out_dir / shard_name(self.shard)
        np.save(path, np.stack(self._buf))
        self.files.append(path)
        self._buf = []
        self.shard += 1

    def close(self) -> list[Path]:
        self.flush()
        return self.files


def read_stats(tiles_dir) -> dict:
    """A tiles directory's ``stats.json``; missing or unreadable is a :class:`DataError` naming it."""
    path = Path(tiles_dir) / STATS
    if not path.exists():
        raise DataError(f"{path} not found: run the tile stage first")
    try:
        stats = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path} is unreadable ({e}): run the tile stage again") from None
    if not isinstance(stats, dict):
        raise DataError(f"{path} is not a stats mapping: run the tile stage again")
    return stats


class TileDataset:
    """Tiles of one tiles directory (optionally one split), memory-mapped from the shards.

    ``ds[i] -> (torch.uint8 tensor C x S x S, int label)``; ``.stats``, ``.classes``, ``.labels``,
    ``.as_tensor()`` (everything in one uint8 tensor) and ``.get_batch(indices)`` (uint8 B x C x S x S).
    Shards are opened lazily per process, so instances can be pickled into DataLoader workers.
    """

    def __init__(self, tiles_dir, split: str | None = None):
        import pandas as pd

        self.tiles_dir = Path(tiles_dir)
        self.split = split
        self.stats = read_stats(self.tiles_dir)
        mpath = self.tiles_dir / MANIFEST
        if not mpath.exists():
            raise DataError(f"{mpath} not found: run the tile stage first")
        df = pd.read_parquet(mpath, columns=["tile_id", "split", "shard", "index", "label"])
        if split is not None:
            if split not in {"train", "val", "test"}:
                raise DataError(f"unknown split {split!r} (expected train, val or test)")
            df = df[df["split"] == split]
        df = df.reset_index(drop=True)
        self.tile_ids = df["tile_id"].to_numpy()
        self.shards = df["shard"].to_numpy(dtype=np.int64)
        self.indices = df["index"].to_numpy(dtype=np.int64)
        self.labels = df["label"].to_numpy(dtype=np.int64)
        self.classes = list(self.stats.get("classes", []))
        self.bands = int(self.stats["bands"])
        self.tile_size = int(self.stats["tile_size"])
        self._mm: dict[int, np.ndarray] = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_mm"] = {}
        return state

    def _shard(self, s: int) -> np.ndarray:
        arr = self._mm.get(s)
        if arr is None:
            path = self.tiles_dir / shard_name(s)
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise DataError(f"cannot read shard {path}: {e}") from e
            self._mm[s] = arr
        return arr

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        import torch

        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        tile = np.array(self._shard(int(self.shards[i]))[self.indices[i]])
        return torch.from_numpy(tile), int(self.labels[i])

    def get_batch_numpy(self, idx) -> np.ndarray:
        """uint8 array B x C x S x S for dataset positions ``idx`` (grouped per shard, sorted reads)."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), self.bands, self.tile_size, self.tile_size), dtype=np.uint8)
        if len(idx) == 0:
            return out
        sh = self.shards[idx]
        for s in np.unique(sh):
            pos = np.nonzero(sh == s)[0]
            rows = self.indices[idx[pos]]
            order = np.argsort(rows, kind="stable")
            out[pos[order]] = self._shard(int(s))[rows[order]]
        return out

    def get_batch(self, idx):
        """uint8 torch tensor B x C x S x S for dataset positions ``idx``."""
        import torch

        return torch.from_numpy(self.get_batch_numpy(idx))


    def as_tensor(self):
        """All tiles of this (split of the) dataset as one uint8 tensor N x C x S x S."""
        return self.get_batch(np.arange(len(self)))
