"""What every format's tiler writes through: the :class:`Builder` (shards, manifest rows, rejected inputs,
``stats.json`` with the train split's per-band mean/std), the atomic swap of a finished tiles directory
into place, and the seeded splits (stratified per class, or whole spatial blocks)."""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np

from ...common.seeding import numpy_rng
from .. import DataError
from ..shards import MANIFEST, STATS, ShardWriter, shard_name

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["tile_id", "source", "row_off", "col_off", "height", "width", "crs", "geometry", "label",
                    "label_name", "split", "shard", "index"]


class Builder:
    """Collects tiles (into shards), manifest rows and rejected inputs inside a temporary directory."""

    def __init__(self, tmp: Path, name: str, tile_size: int, shard_max_mb: float):
        self.tmp, self.name, self.tile_size, self.shard_max_mb = tmp, name, tile_size, shard_max_mb
        self.writer: ShardWriter | None = None
        self.bands: int | None = None
        self.rows: list[dict] = []
        self.rejected: list[dict] = []
        self.classes: list[str] = []
        self.extra: dict = {}
        self.work_dir: Path | None = None  # resumable per-shard work beside the output (parallel_shards)
        self.n_shards = 0

    def add_shard(self, npy: Path, rows: list[dict]) -> None:
        """Take a finished shard (``parallel_shards``) as the next one; ``rows`` in its order. Linked, not
        moved, so that the work directory stays complete until the whole stage succeeds."""
        if self.writer is not None:
            raise RuntimeError("add_shard after add: one way of writing shards per dataset")
        arr = np.load(npy, mmap_mode="r")
        if arr.shape[0] != len(rows):
            raise DataError(f"{npy}: {arr.shape[0]} tiles but {len(rows)} manifest rows")
        self.bands = int(arr.shape[1])
        dst = self.tmp / shard_name(self.n_shards)
        try:
            os.link(npy, dst)
        except OSError:
            shutil.copyfile(npy, dst)
        for i, row in enumerate(rows):
            row["shard"], row["index"] = self.n_shards, i
            self.rows.append(row)
        self.n_shards += 1

    def reject(self, file, reason: str) -> None:
        self.rejected.append({"file": str(file), "reason": reason})

    def rejected_summary(self, limit: int | None = None) -> str:
        return "; ".join(f"{r['file']}: {r['reason']}" for r in self.rejected[:limit])

    def add(self, tile: np.ndarray, row: dict) -> None:
        if self.writer is None:
            self.bands = int(tile.shape[0])
            self.writer = ShardWriter(self.tmp, self.bands, self.tile_size, self.shard_max_mb)
        row["shard"], row["index"] = self.writer.add(tile)
        self.rows.append(row)

    def unique_tile_ids(self) -> None:
        """Tile ids are file stems; where two files share a stem, every tile is named by its source path."""
        ids = [r["tile_id"] for r in self.rows]
        if len(set(ids)) != len(ids):
            for r in self.rows:
                r["tile_id"] = r["source"]

    def finalize(self) -> dict:
        if self.writer is not None:
            self.writer.close()
        if not self.rows:
            detail = self.rejected_summary() or "no input files"
            raise DataError(f"dataset {self.name!r}: no tiles produced ({detail})")
        import geopandas as gpd
        import pandas as pd

        df = pd.DataFrame(self.rows)
        for col in MANIFEST_COLUMNS:
            if col not in df:
                df[col] = None
        df = df[MANIFEST_COLUMNS]
        df = df.astype({"row_off": "int64", "col_off": "int64", "height": "int64", "width": "int64",
                        "label": "int64", "shard": "int64", "index": "int64"})
        crss = {c for c in df["crs"] if c}
        gdf = gpd.GeoDataFrame(df, geometry="geometry", crs=crss.pop() if len(crss) == 1 else None)
        gdf.to_parquet(self.tmp / MANIFEST, index=False)

        mean, std, n_used = train_stats(self.tmp, df, self.bands)
        split_counts = {s: int((df["split"] == s).sum()) for s in SPLITS}
        stats = {
            "dataset": self.name,
            "mean": mean,
            "std": std,
            "bands": int(self.bands),
            "tile_size": int(self.tile_size),
            "classes": list(self.classes),
            "n_tiles": int(len(df)),
            "splits": split_counts,
            "stats_tiles": n_used,
            "rejected": self.rejected,
        }
        if self.classes:
            counts = np.bincount(df["label"][df["label"] >= 0], minlength=len(self.classes))
            stats["class_counts"] = {c: int(n) for c, n in zip(self.classes, counts)}
        stats.update(self.extra)
        # plain writes: the whole directory is swapped into place atomically (swap_into_place)
        with open(self.tmp / "rejected.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["file", "reason"])
            w.writeheader()
            w.writerows(self.rejected)
        (self.tmp / STATS).write_text(json.dumps(stats, indent=2) + "\n")
        return stats


def train_stats(tmp: Path, df, bands: int, chunk: int = 1024) -> tuple[list[float], list[float], int]:
    """Per-band mean/std (0..1 units) over the train tiles (all tiles if there is no train split)."""
    sel = df[df["split"] == "train"]
    if len(sel) == 0:
        sel = df
    s1 = np.zeros(bands, dtype=np.float64)
    s2 = np.zeros(bands, dtype=np.float64)
    n = 0
    for shard, grp in sel.groupby("shard"):
        arr = np.load(tmp / shard_name(shard), mmap_mode="r")
        idx = np.sort(grp["index"].to_numpy())
        for i in range(0, len(idx), chunk):
            x = np.asarray(arr[idx[i:i + chunk]], dtype=np.float64) / 255.0
            s1 += x.sum(axis=(0, 2, 3))
            s2 += (x * x).sum(axis=(0, 2, 3))
            n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
    std = np.where(std < 1e-6, 1.0, std)
    return [float(v) for v in mean], [float(v) for v in std], int(len(sel))


def swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by the finished ``tmp`` (a sibling): the old one is moved aside first and restored
    if the rename fails, so a failure never loses tiles made earlier."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        if old is not None:
            os.rename(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def footprint(transform, r: int, c: int, h: int, w: int):
    """The manifest geometry of an ``h x w`` window at row ``r``, column ``c`` of a raster."""
    from shapely.geometry import Polygon

    # x = a*col + b*row + xoff, y = d*col + e*row + yoff, written out: affine 3 deprecates ``transform * (c, r)``
    # (PendingDeprecationWarning, "use @") and affine before 2.4 has no ``@``
    a, b, xoff, d, e, yoff = (float(v) for v in tuple(transform)[:6])

    def at(col, row):
        return (a * col + b * row + xoff, d * col + e * row + yoff)

    return Polygon([at(c, r), at(c + w, r), at(c + w, r + h), at(c, r + h)])


# ----------------------------------------------------------------------------------------------------------
# seeded splits
# ----------------------------------------------------------------------------------------------------------
def split_rng(seed: int, *keys) -> np.random.Generator:
    """The tiler's numpy stream for ``keys`` (dataset name, purpose) under the study's ``seed``: the keys as
    strings, all 64 bits of the derived seed (:mod:`geofm.common.seeding`), as the tiler has always drawn."""
    return numpy_rng(int(seed), *(str(k) for k in keys), bits=64)


def stratified_split(labels, train_ratio: float, val_ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Per-class seeded split; every class with >= 2 items gets >= 1 train and >= 1 non-train item."""
    labels = np.asarray(labels)
    out = np.full(len(labels), "test", dtype=object)
    for k in np.unique(labels):
        idx = np.nonzero(labels == k)[0]
        idx = idx[rng.permutation(len(idx))]
        n = len(idx)
        n_train = int(round(n * train_ratio))
        n_val = int(round(n * val_ratio))
        if n >= 2 and train_ratio < 1:
            n_train = min(max(n_train, 1), n - 1)
        n_val = min(n_val, n - n_train)
        if train_ratio + val_ratio < 1 and n_val > 0 and n_train + n_val == n and n - n_train >= 2:
            n_val -= 1  # keep one test item
        out[idx[:n_train]] = "train"
        out[idx[n_train:n_train + n_val]] = "val"
    return out


def split_labelled(b: Builder, rows: list[dict], cfg: dict, seed: int) -> None:
    """Stratified seeded split (``train_ratio``, ``val_ratio``) of ``rows`` (labelled rows of ``b``), in place."""
    splits = stratified_split([r["label"] for r in rows], float(cfg["train_ratio"]), float(cfg["val_ratio"]),
                              split_rng(seed, b.name, "split"))
    for r, sp in zip(rows, splits):
        r["split"] = str(sp)


def assign_blocks(blocks: list, fracs: tuple[float, float], rng: np.random.Generator) -> dict:
    """Seeded assignment of whole blocks to splits with at least one block per requested split."""
    blocks = sorted(set(blocks))
    order = rng.permutation(len(blocks))
    n = len(blocks)
    f_val, f_test = fracs
    n_test, n_val = int(round(n * f_test)), int(round(n * f_val))
    if f_test > 0 and n_test == 0 and n - n_val >= 2:
        n_test = 1
    if f_val > 0 and n_val == 0 and n - n_test >= 2:
        n_val = 1
    while n_test + n_val >= n and n > 0 and (n_test or n_val):  # keep at least one train block
        if n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    split = {}
    for rank, i in enumerate(order):
        split[blocks[i]] = "test" if rank < n_test else ("val" if rank < n_test + n_val else "train")
    return split
