"""Tile raw datasets into uint8 shards + a GeoParquet manifest + stats.json.

Entry point: :func:`tile_dataset` ``(name, ds_cfg, raw_dir, out_dir, parent_raw_dir=None, seed=0)``.
Everything is written into a temporary sibling directory that replaces ``out_dir`` only when complete,
so a failure never destroys tiles produced earlier.

Formats (``ds_cfg["format"]``):

``geotiff_scenes``
    Every ``*.tif``/``*.tiff`` under ``raw_dir`` (recursively, ignoring ``*_labels.tif``) is one scene; or
    ``band_files: [glob, ...]`` (relative to ``raw_dir``) lists files on one grid to stack band-wise into
    a single scene (e.g. Landsat ``l8_B*.tif``); optional ``band_select: [1-based indices]`` picks bands
    (``bands``, an int, is the synthetic band count and is ignored here).
    Windows of ``tile_size`` every ``stride`` px are kept when their valid fraction (nodata / mask aware)
    is >= ``min_valid_fraction``.  uint8 stays as is; other dtypes are scaled per band with the scene's
    2-98 percentiles.  Splits are spatially disjoint: the scene is cut into ``split_block`` px blocks, whole
    blocks are assigned (seeded) to train/val/test (``val_fraction``, ``test_fraction``), and a tile that
    would straddle blocks of two different splits is dropped.  Files without a CRS, unreadable or
    truncated files are recorded in ``rejected`` (DataError when every file is rejected).
``derived_landcover``
    Tiles of the synthetic scenes of a parent dataset (``from:``), labelled by the majority class of the
    ``*_labels.tif`` raster when its share is >= ``min_purity`` (0.9); at most ``max_per_class`` per
    class; stratified seeded split by ``train_ratio`` (``val_ratio`` optional, rest test).
``ucmerced_zip`` / ``eurosat_zip``
    Archives with ``UCMerced_LandUse/Images/<class>/*.tif`` or ``2750/<Class>/*.jpg`` (an already extracted
    tree is accepted too).  Extracted safely, every image read with PIL, resized (bilinear) to
    ``tile_size``, labelled by folder, stratified seeded split.  Corrupt images are rejected, not fatal.
``eurosat_ms_zip``
    EuroSAT_MS.zip / EuroSAT_allBands (``<Class>/<Class>_N.tif``, 13-band uint16 Sentinel-2 GeoTIFFs with a CRS):
    read with rasterio, scaled per band to uint8 (``scaling: fixed`` with ``scale_range`` [0, 10000], or
    ``scaling: percentile`` with ``percentiles`` [2, 98] of the train split), 13 bands or ``band_select``;
    the manifest keeps each image's CRS and footprint.
``millionaid_zip``
    MillionAID as published (``train.zip``/``test.zip`` or ``train/``/``test/``, leaves 2 or 3 folders deep,
    a flat unlabelled test folder): :mod:`geofm.data.millionaid`.
``image_folder`` / ``aid_zip`` / ``resisc45_rar``
    The same for any ``<class>/<image>`` tree (directory or archive; ``AID/`` and ``NWPU-RESISC45/`` roots are
    preferred when present).  ``.rar`` archives need an external ``bsdtar``, ``7z`` or ``unrar``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from . import DataError
from .shards import MANIFEST, STATS, ShardWriter

TIFF_SUFFIXES = {".tif", ".tiff"}
IMAGE_SUFFIXES = {".tif", ".tiff", ".jpg", ".jpeg", ".png", ".bmp"}
SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["tile_id", "source", "row_off", "col_off", "height", "width", "crs", "geometry", "label",
                    "label_name", "split", "shard", "index"]
DEFAULT_TILE_SIZE = {"ucmerced_zip": 256, "eurosat_zip": 64, "eurosat_ms_zip": 64, "aid_zip": 256, "resisc45_rar": 256}
# <class>/<image> layouts: format -> name of the directory holding the class folders (None: found by search)
FOLDER_MARKERS = {"ucmerced_zip": "Images", "eurosat_zip": "2750", "aid_zip": "AID", "resisc45_rar": "NWPU-RESISC45",
                  "millionaid_zip": None, "image_folder": None, "eurosat_ms_zip": None}
# Sentinel-2 band order of EuroSAT_MS / EuroSAT_allBands GeoTIFFs
EUROSAT_MS_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


# ----------------------------------------------------------------------------------------------------------
# shared builder
# ----------------------------------------------------------------------------------------------------------
class _Builder:
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
        from .shards import shard_name

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

    def add(self, tile: np.ndarray, row: dict) -> None:
        if self.writer is None:
            self.bands = int(tile.shape[0])
            self.writer = ShardWriter(self.tmp, self.bands, self.tile_size, self.shard_max_mb)
        row["shard"], row["index"] = self.writer.add(tile)
        self.rows.append(row)

    def finalize(self) -> dict:
        if self.writer is not None:
            self.writer.close()
        if not self.rows:
            detail = "; ".join(f"{r['file']}: {r['reason']}" for r in self.rejected) or "no input files"
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

        mean, std, n_used = _train_stats(self.tmp, df, self.bands)
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
        with open(self.tmp / "rejected.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["file", "reason"])
            w.writeheader()
            w.writerows(self.rejected)
        (self.tmp / STATS).write_text(json.dumps(stats, indent=2) + "\n")
        return stats


def _train_stats(tmp: Path, df, bands: int, chunk: int = 1024) -> tuple[list[float], list[float], int]:
    """Per-band mean/std (0..1 units) over the train tiles (all tiles if there is no train split)."""
    from .shards import shard_name

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


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
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


def _seeded_rng(seed: int, *keys) -> np.random.Generator:
    h = hashlib.sha256(repr((int(seed),) + tuple(str(k) for k in keys)).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def _tile_size(ds_cfg: dict, fmt: str) -> int:
    s = ds_cfg.get("tile_size") or ds_cfg.get("image_size") or DEFAULT_TILE_SIZE.get(fmt)
    if not s:
        raise DataError(f"format {fmt!r} needs 'tile_size' in the dataset config")
    return int(s)


def tile_dataset(name: str, ds_cfg: dict, raw_dir, out_dir, parent_raw_dir=None, seed: int = 0) -> dict:
    """Tile dataset ``name`` from ``raw_dir`` into ``out_dir`` (atomically); returns the stats dict."""
    fmt = ds_cfg.get("format") or ("derived_landcover" if ds_cfg.get("source") == "derived" else None)
    handlers = {"geotiff_scenes": _tile_geotiff_scenes, "derived_landcover": _tile_derived_landcover,
                **{f: _tile_image_folders for f in FOLDER_MARKERS}}
    if fmt not in handlers:
        raise DataError(f"dataset {name!r}: unknown format {fmt!r} (expected one of {sorted(handlers)})")
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not raw_dir.is_dir():
        raise DataError(f"dataset {name!r}: raw directory {raw_dir} does not exist (run the download stage)")
    tile_size = _tile_size(ds_cfg, fmt)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the final tiles dir should be an ordinary directory
    try:
        b = _Builder(tmp, name, tile_size, float(ds_cfg.get("shard_max_mb", 256)))
        b.work_dir = out_dir.parent / f".{out_dir.name}.shards"
        b.extra["format"] = fmt
        handlers[fmt](b, fmt, ds_cfg, raw_dir, parent_raw_dir, int(seed))
        stats = b.finalize()
        for p in tmp.iterdir():  # scratch (e.g. extracted archives) never ships
            if p.is_dir():
                shutil.rmtree(p)
        _swap_into_place(tmp, out_dir)
        shutil.rmtree(b.work_dir, ignore_errors=True)  # done: the per-shard work is in out_dir now
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


# ----------------------------------------------------------------------------------------------------------
# geotiff_scenes
# ----------------------------------------------------------------------------------------------------------
def _walk(root: Path):
    """Every path under ``root``, following directory links (a by-hand dataset is linked into raw_dir;
    ``Path.rglob`` does not descend into links before Python 3.13)."""
    for d, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for n in sorted(dirs + files):
            yield Path(d) / n


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def _find_scene_files(raw_dir: Path, ds_cfg: dict) -> list[list[Path]]:
    band_files = ds_cfg.get("band_files")
    if band_files:
        if isinstance(band_files, str):
            band_files = [band_files]
        files: list[Path] = []
        for pat in band_files:
            pat_path = Path(pat)
            if pat_path.is_absolute():
                matches = sorted(Path(pat_path.anchor).glob(str(pat_path.relative_to(pat_path.anchor))))
            else:  # relative to raw_dir, or to a by-hand directory linked into it (geofm.data.download)
                roots = [raw_dir, *sorted(d for d in raw_dir.iterdir() if d.is_symlink() and d.is_dir())]
                matches = next((m for m in (sorted(r.glob(pat)) for r in roots) if m), [])
            if not matches:
                raise DataError(f"band_files pattern {pat!r} matches no file under {raw_dir}")
            files += [m for m in matches if m not in files]
        return [files]
    files = sorted(p for p in _walk(raw_dir) if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES
                   and not p.name.lower().endswith(("_labels.tif", "_labels.tiff")) and not p.name.startswith("."))
    return [[p] for p in files]


class _Scene:
    def __init__(self, files, width, height, count, dtype, crs, transform, nodata_aware, key):
        self.files, self.width, self.height, self.count = files, width, height, count
        self.dtype, self.crs, self.transform, self.nodata_aware, self.key = dtype, crs, transform, \
            nodata_aware, key


def _open_scene(files: list[Path], raw_dir: Path):
    """Validate a (stack of) GeoTIFF(s). Returns (_Scene, None) or (None, reason)."""
    import rasterio
    from rasterio.enums import MaskFlags

    metas = []
    for f in files:
        try:
            with rasterio.open(f) as src:
                metas.append((src.width, src.height, src.count, src.dtypes[0], src.crs, src.transform,
                              any(fl != [MaskFlags.all_valid] for fl in src.mask_flag_enums),
                              len(set(src.dtypes)) == 1))
        except Exception as e:  # noqa: BLE001 - any GDAL failure means unusable file
            return None, f"cannot open {_rel(f, raw_dir)}: {e}"
    for f, m in zip(files, metas):
        if m[4] is None:
            return None, f"{_rel(f, raw_dir)} has no CRS (not georeferenced)"
        if not m[7]:
            return None, f"{_rel(f, raw_dir)} mixes band data types"
    w, h, _, dt, crs, tr = metas[0][:6]
    for f, m in zip(files[1:], metas[1:]):
        if (m[0], m[1]) != (w, h) or m[4] != crs or not m[5].almost_equals(tr):
            return None, f"{_rel(f, raw_dir)} is not on the grid of {_rel(files[0], raw_dir)}"
        if m[3] != dt:
            return None, f"{_rel(f, raw_dir)} has dtype {m[3]}, {_rel(files[0], raw_dir)} has {dt}"
    key = "+".join(_rel(f, raw_dir) for f in files)
    return _Scene(files, w, h, sum(m[2] for m in metas), dt, crs, tr, any(m[6] for m in metas), key), None


def _read_stack(srcs, window=None, out_shape=None):
    """Read data + validity (all bands valid & finite) of a stack of open datasets."""
    data, valid = [], None
    for src in srcs:
        kw = {"window": window}
        if out_shape is not None:
            kw["out_shape"] = (src.count,) + out_shape
        d = src.read(**kw)
        m = src.read_masks(**kw) > 0
        if np.issubdtype(d.dtype, np.floating):
            m &= np.isfinite(d)
        v = m.all(axis=0)
        valid = v if valid is None else valid & v
        data.append(d)
    return np.concatenate(data, axis=0), valid


def _window_fractions(valid: np.ndarray, cols: np.ndarray, S: int) -> np.ndarray:
    """Valid fraction of each S x S window starting at the given columns of an S-row strip."""
    cs = np.concatenate([[0], np.cumsum(valid.sum(axis=0))])
    return (cs[cols + S] - cs[cols]) / float(S * S)


def _assign_blocks(blocks: list, fracs: tuple[float, float], rng: np.random.Generator) -> dict:
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


def _tile_geotiff_scenes(b: _Builder, fmt, ds_cfg, raw_dir: Path, parent_raw_dir, seed: int) -> None:
    import rasterio
    from rasterio.windows import Window

    S = b.tile_size
    stride = int(ds_cfg.get("stride") or S)
    min_valid = float(ds_cfg.get("min_valid_fraction", 0.5))
    block = int(ds_cfg.get("split_block") or 8 * S)
    if block < S:
        raise DataError(f"split_block ({block}) must be >= tile_size ({S})")
    fracs = (float(ds_cfg.get("val_fraction", 0.1)), float(ds_cfg.get("test_fraction", 0.1)))
    select = ds_cfg.get("band_select")
    if select is not None and (isinstance(select, (int, str)) or not all(int(i) >= 1 for i in select)):
        raise DataError(f"band_select must be a list of 1-based band indices, got {select!r}")

    groups = _find_scene_files(raw_dir, ds_cfg)
    if not groups:
        raise DataError(f"no GeoTIFF found under {raw_dir}")
    scenes: list[_Scene] = []
    for files in groups:
        sc, reason = _open_scene(files, raw_dir)
        if sc is None:
            b.reject("+".join(_rel(f, raw_dir) for f in files), reason)
        elif sc.width < S or sc.height < S:
            b.reject(sc.key, f"{sc.key} is {sc.width}x{sc.height}, smaller than tile_size {S}")
        elif select and max(int(i) for i in select) > sc.count:
            b.reject(sc.key, f"{sc.key} has {sc.count} bands, 'band_select' is {list(select)}")
        elif scenes and (len(select) if select else sc.count) != (len(select) if select else scenes[0].count):
            b.reject(sc.key, f"{sc.key} has {sc.count} bands but {scenes[0].key} has {scenes[0].count}")
        else:
            scenes.append(sc)
    if not scenes:
        raise DataError("every input GeoTIFF was rejected: " +
                        "; ".join(f"{r['file']}: {r['reason']}" for r in b.rejected))

    # Pass 1: which windows are valid enough (mask only) -> which blocks exist -> block splits.
    kept: dict[str, list[tuple[int, int]]] = {}
    for sc in list(scenes):
        rows = np.arange(0, sc.height - S + 1, stride)
        cols = np.arange(0, sc.width - S + 1, stride)
        try:
            if not sc.nodata_aware:
                kept[sc.key] = [(int(r), int(c)) for r in rows for c in cols]
                continue
            srcs = [rasterio.open(f) for f in sc.files]
            try:
                lst = []
                for r in rows:
                    valid = np.ones((S, sc.width), bool)
                    for src in srcs:
                        valid &= (src.read_masks(window=Window(0, int(r), sc.width, S)) > 0).all(axis=0)
                    fr = _window_fractions(valid, cols, S)
                    lst += [(int(r), int(c)) for c in cols[fr >= min_valid]]
                kept[sc.key] = lst
            finally:
                for s in srcs:
                    s.close()
        except Exception as e:  # noqa: BLE001
            b.reject(sc.key, f"cannot read {sc.key}: {e}")
            scenes.remove(sc)
            continue
        if not kept[sc.key]:
            b.reject(sc.key, f"{sc.key}: no {S}px window has a valid fraction >= min_valid_fraction={min_valid} "
                             "(no valid pixels, or too few)")
            scenes.remove(sc)
    all_blocks = []
    for sc in scenes:
        for r, c in kept[sc.key]:
            for br in range(r // block, (r + S - 1) // block + 1):
                for bc in range(c // block, (c + S - 1) // block + 1):
                    all_blocks.append((sc.key, br, bc))
    block_split = _assign_blocks(all_blocks, fracs, _seeded_rng(seed, b.name, "blocks"))

    # Pass 2: read strips, scale, cut tiles; a scene is committed only if it was read completely.
    n_straddle = 0
    scaling = {}
    for sc in scenes:
        pending = []
        try:
            srcs = [rasterio.open(f) for f in sc.files]
            try:
                lo = hi = None
                if sc.dtype != "uint8":
                    f = min(1.0, 1024.0 / max(sc.width, sc.height))
                    shape = (max(1, int(sc.height * f)), max(1, int(sc.width * f)))
                    d, v = _read_stack(srcs, out_shape=shape)
                    if not v.any():
                        raise DataError("no valid pixels")
                    px = d[:, v].astype(np.float64)
                    lo, hi = np.percentile(px, 2, axis=1), np.percentile(px, 98, axis=1)
                    hi = np.where(hi > lo, hi, lo + 1.0)
                    scaling[sc.key] = {"p2": lo.tolist(), "p98": hi.tolist()}
                by_row: dict[int, list[int]] = {}
                for r, c in kept[sc.key]:
                    by_row.setdefault(r, []).append(c)
                for r, cs in sorted(by_row.items()):
                    d, valid = _read_stack(srcs, window=Window(0, r, sc.width, S))
                    if select:
                        d = d[[int(i) - 1 for i in select]]
                    if lo is not None:
                        lo_s = lo if not select else lo[[int(i) - 1 for i in select]]
                        hi_s = hi if not select else hi[[int(i) - 1 for i in select]]
                        d = np.clip((d.astype(np.float32) - lo_s[:, None, None]) * (255.0 / (hi_s - lo_s))[:, None,
                                    None], 0, 255)
                        d = np.round(np.nan_to_num(d)).astype(np.uint8)
                    d = np.where(valid[None], d, 0).astype(np.uint8)
                    for c in cs:
                        splits = {block_split[(sc.key, br, bc)]
                                  for br in range(r // block, (r + S - 1) // block + 1)
                                  for bc in range(c // block, (c + S - 1) // block + 1)}
                        if len(splits) > 1:
                            n_straddle += 1
                            continue
                        pending.append((r, c, splits.pop(), np.ascontiguousarray(d[:, :, c:c + S])))
            finally:
                for s in srcs:
                    s.close()
        except Exception as e:  # noqa: BLE001 - truncated / corrupt data
            b.reject(sc.key, f"cannot read {sc.key}: {e}")
            continue
        if not pending:
            b.reject(sc.key, f"{sc.key}: no {S}px tile left (every valid window straddles blocks of two splits; "
                             "a larger split_block keeps them)")
            continue
        crs = sc.crs.to_string()
        stem = sc.key.rsplit(".", 1)[0].replace("/", "_").replace("+", "_")
        for r, c, split, tile in pending:
            b.add(tile, {
                "tile_id": f"{stem}_r{r:06d}_c{c:06d}", "source": sc.key, "row_off": r, "col_off": c,
                "height": S, "width": S, "crs": crs, "geometry": _footprint(sc.transform, r, c, S, S),
                "label": -1, "label_name": "", "split": split,
            })
    if not b.rows:
        raise DataError(f"no tile of {S}px passed min_valid_fraction={min_valid}; rejected: " +
                        ("; ".join(f"{r['file']}: {r['reason']}" for r in b.rejected) or "none"))
    b.extra.update({"stride": stride, "split_block": block, "min_valid_fraction": min_valid,
                    "dropped_straddling_tiles": n_straddle, "scaling": scaling})


def _footprint(transform, r: int, c: int, h: int, w: int):
    from shapely.geometry import Polygon

    corners = [transform * (c, r), transform * (c + w, r), transform * (c + w, r + h), transform * (c, r + h)]
    return Polygon(corners)


# ----------------------------------------------------------------------------------------------------------
# classification helpers
# ----------------------------------------------------------------------------------------------------------
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


def _tile_derived_landcover(b: _Builder, fmt, ds_cfg, raw_dir: Path, parent_raw_dir, seed: int) -> None:
    import rasterio

    if parent_raw_dir is None:
        parent = ds_cfg.get("from")
        if not parent:
            raise DataError("derived_landcover needs 'from: <scenes dataset>' or parent_raw_dir")
        parent_raw_dir = raw_dir.parent / parent
    parent_raw_dir = Path(parent_raw_dir)
    cpath = parent_raw_dir / "classes.json"
    if not cpath.exists():
        raise DataError(f"{cpath} not found: the parent of a derived_landcover dataset must be a synthetic "
                        "scenes dataset (with *_labels.tif and classes.json)")
    classes = json.loads(cpath.read_text())["classes"]
    b.classes = list(classes)
    S = b.tile_size
    stride = int(ds_cfg.get("stride") or S)
    min_purity = float(ds_cfg.get("min_purity", 0.9))
    max_per_class = ds_cfg.get("max_per_class")
    label_files = sorted(parent_raw_dir.glob("*_labels.tif"))
    if not label_files:
        raise DataError(f"no *_labels.tif in {parent_raw_dir}")

    cands = []  # (scene_path, r, c, cls, purity)
    for lf in label_files:
        scene = lf.with_name(lf.name[: -len("_labels.tif")] + ".tif")
        if not scene.exists():
            b.reject(_rel(lf, parent_raw_dir), f"label raster without scene {scene.name}")
            continue
        try:
            with rasterio.open(lf) as src:
                lab = src.read(1)
        except Exception as e:  # noqa: BLE001
            b.reject(_rel(lf, parent_raw_dir), f"cannot read {lf.name}: {e}")
            continue
        H, W = lab.shape
        rows = np.arange(0, H - S + 1, stride)
        cols = np.arange(0, W - S + 1, stride)
        if len(rows) == 0 or len(cols) == 0:
            continue
        best = np.zeros((len(rows), len(cols)), np.int64)
        best_k = np.zeros((len(rows), len(cols)), np.int64)
        for k in range(len(classes)):
            ii = np.zeros((H + 1, W + 1), np.int32)
            ii[1:, 1:] = np.cumsum(np.cumsum(lab == k, axis=0, dtype=np.int32), axis=1)
            cnt = (ii[np.ix_(rows + S, cols + S)] - ii[np.ix_(rows, cols + S)] - ii[np.ix_(rows + S, cols)]
                   + ii[np.ix_(rows, cols)])
            better = cnt > best
            best = np.where(better, cnt, best)
            best_k = np.where(better, k, best_k)
        purity = best / float(S * S)
        for i, j in zip(*np.nonzero(purity >= min_purity)):
            cands.append((scene, int(rows[i]), int(cols[j]), int(best_k[i, j]), float(purity[i, j])))
    if not cands:
        raise DataError(f"no {S}px tile reaches min_purity={min_purity} in {parent_raw_dir}")

    rng = _seeded_rng(seed, b.name, "derived")
    chosen = []
    for k in range(len(classes)):
        ck = [x for x in cands if x[3] == k]
        order = rng.permutation(len(ck))
        if max_per_class is not None:
            order = order[: int(max_per_class)]
        chosen += [ck[i] for i in sorted(order)]
    splits = stratified_split([x[3] for x in chosen], float(ds_cfg.get("train_ratio", 0.8)),
                              float(ds_cfg.get("val_ratio", 0.0)), rng)
    by_scene: dict[Path, list] = {}
    for x, sp in zip(chosen, splits):
        by_scene.setdefault(x[0], []).append((x, sp))
    for scene, items in sorted(by_scene.items()):
        try:
            with rasterio.open(scene) as src:
                img, crs, tr = src.read(), src.crs, src.transform
            if img.dtype != np.uint8:
                raise DataError(f"expected uint8 synthetic scene, got {img.dtype}")
        except Exception as e:  # noqa: BLE001
            b.reject(_rel(scene, parent_raw_dir), f"cannot read {scene.name}: {e}")
            continue
        crs_s = crs.to_string() if crs else None
        for (_, r, c, k, pur), sp in items:
            b.add(np.ascontiguousarray(img[:, r:r + S, c:c + S]), {
                "tile_id": f"{scene.stem}_r{r:06d}_c{c:06d}", "source": scene.name, "row_off": r, "col_off": c,
                "height": S, "width": S, "crs": crs_s,
                "geometry": _footprint(tr, r, c, S, S) if crs else None,
                "label": k, "label_name": classes[k], "split": str(sp),
            })
    b.extra.update({"parent": str(parent_raw_dir), "min_purity": min_purity, "stride": stride})


def safe_extract(zip_path, dest, max_bytes: float = 50e9) -> Path:
    """Extract ``zip_path`` into ``dest`` refusing absolute paths, ``..``, links and oversized archives."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{zip_path} is not a readable zip archive: {e}") from e
    with zf:
        infos = zf.infolist()
        total = sum(i.file_size for i in infos)
        if total > max_bytes:
            raise DataError(f"{zip_path} would extract to {total} bytes (> limit {int(max_bytes)})")
        for info in infos:
            name = info.filename.replace("\\", "/")
            parts = PurePosixPath(name).parts
            if name.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
                raise DataError(f"unsafe path {info.filename!r} in {zip_path}")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                continue  # never materialise symlinks from archives
            target = dest.joinpath(*parts) if parts else dest
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return dest


RAR_TOOLS = ("bsdtar", "7z", "unrar")


def _extract_rar(path: Path, dest: Path) -> Path:
    """Extract a .rar with an external tool (bsdtar, 7z or unrar, the first on PATH): Python has no RAR decoder.

    With bsdtar the member names are checked first (no absolute paths, no ``..``), and bsdtar itself refuses
    to write through symlinks; any symlink that is extracted is removed afterwards.
    """
    import subprocess

    dest.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LC_ALL": os.environ.get("LC_ALL") or "C.UTF-8"}  # non-ASCII member names
    for tool in RAR_TOOLS:
        exe = shutil.which(tool)
        if not exe:
            continue
        if tool == "bsdtar":
            res = subprocess.run([exe, "-tf", str(path)], capture_output=True, text=True, env=env)
            if res.returncode != 0:
                raise DataError(f"bsdtar cannot read {path}: {res.stderr.strip()[-500:]}")
            for name in res.stdout.splitlines():
                parts = PurePosixPath(name.replace("\\", "/")).parts
                if name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts:
                    raise DataError(f"unsafe path {name!r} in {path}")
            cmd = [exe, "-xf", str(path), "-C", str(dest)]
        elif tool == "7z":
            cmd = [exe, "x", "-y", f"-o{dest}", str(path)]
        else:
            cmd = [exe, "x", "-o+", str(path), str(dest) + "/"]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        finally:
            for p in sorted(dest.rglob("*"), reverse=True):  # as safe_extract: no links survive, even on failure
                if p.is_symlink():
                    p.unlink()
        if res.returncode != 0:
            raise DataError(f"{tool} failed to extract {path}: {(res.stderr or res.stdout).strip()[-500:]}")
        return dest
    raise DataError(f"cannot extract {path}: no RAR extractor found on PATH (tried {', '.join(RAR_TOOLS)}); "
                    "install bsdtar (Debian/Ubuntu: apt-get install libarchive-tools), 7z (p7zip-full) or unrar")


def _find_class_root(root: Path, marker: str, fallback: bool = True) -> Path | None:
    """Directory whose sub-directories are the classes (one named ``marker``, else any if ``fallback``)."""
    for p in sorted(p for p in _walk(root) if p.name == marker) if marker else []:
        if p.is_dir() and any(c.is_dir() for c in p.iterdir()):
            return p
    if not fallback and marker:
        return None
    queue = [root]
    while queue:
        d = queue.pop(0)
        subs = sorted(c for c in d.iterdir() if c.is_dir() and not c.name.startswith((".", "__MACOSX")))
        with_images = [s for s in subs if any(f.suffix.lower() in IMAGE_SUFFIXES for f in s.iterdir()
                                              if f.is_file())]
        if len(with_images) >= 2:
            return d
        queue += subs
    return None


def _load_image(path: Path, S: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image with PIL -> (uint8 3 x S x S, original (height, width))."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        hw = (im.size[1], im.size[0])
        if im.mode != "RGB":
            im = im.convert("RGB")
        if im.size != (S, S):
            im = im.resize((S, S), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)), hw


def _decode_image(path: str, S: int) -> tuple[np.ndarray, dict]:
    """One image for :func:`geofm.data.parallel_shards.decode_shards` (runs in a worker process)."""
    tile, (h, w) = _load_image(Path(path), S)
    return tile, {"height": int(h), "width": int(w)}


def _extract_archives(b: _Builder, ds_cfg, raw_dir: Path) -> list[tuple[str, Path]]:
    """Extract the archives under ``raw_dir`` (zip, rar; directory links followed) into the scratch dir:
    ``(archive name, folder)`` each, or ``[("", raw_dir)]`` when there is none."""
    archives = sorted(p for p in _walk(raw_dir) if p.is_file() and p.suffix.lower() in (".zip", ".rar"))
    roots = []
    for i, z in enumerate(archives):
        dest = b.tmp / f"_extract{i}"
        if z.suffix.lower() == ".zip":
            safe_extract(z, dest, float(ds_cfg.get("max_extract_bytes", 50e9)))
        else:
            _extract_rar(z, dest)
        roots.append((z.name, dest))
    return roots or [("", raw_dir)]


def _collect_class_items(b: _Builder, fmt, marker, ds_cfg, raw_dir: Path) -> list[tuple[str, Path, str]]:
    """Extract the archives under ``raw_dir`` (zip, rar) and list ``(class_name, path, source)`` per image."""
    roots = _extract_archives(b, ds_cfg, raw_dir)
    items = []  # (class_name, path, source)
    found = [(zname, root, _find_class_root(root, marker, fallback=False)) for zname, root in roots]
    if not any(c for _, _, c in found):  # no archive has the canonical layout: accept any class folders
        found = [(zname, root, _find_class_root(root, marker, fallback=True)) for zname, root in roots]
    for zname, root, croot in found:
        if croot is None:
            b.reject(zname or str(raw_dir), f"{zname or raw_dir}: no <class>/<image> folder layout of {fmt}")
            continue
        for cdir in sorted(p for p in croot.iterdir() if p.is_dir()):
            for f in sorted(cdir.iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    src = f"{zname}/{_rel(f, root)}" if zname else _rel(f, raw_dir)
                    items.append((cdir.name, f, src))
    return items


def _tile_image_folders(b: _Builder, fmt, ds_cfg, raw_dir: Path, parent_raw_dir, seed: int) -> None:
    if fmt == "eurosat_ms_zip":
        return _tile_eurosat_ms(b, fmt, ds_cfg, raw_dir, parent_raw_dir, seed)
    if fmt == "millionaid_zip":
        from .millionaid import tile_millionaid

        return tile_millionaid(b, fmt, ds_cfg, raw_dir, parent_raw_dir, seed)
    marker = FOLDER_MARKERS[fmt]
    S = b.tile_size
    items = _collect_class_items(b, fmt, marker, ds_cfg, raw_dir)
    classes = sorted({c for c, _, _ in items})
    if not classes:
        raise DataError(f"no images found for format {fmt} under {raw_dir}: " +
                        "; ".join(r["reason"] for r in b.rejected))
    b.classes = classes
    cidx = {c: i for i, c in enumerate(classes)}
    # decoded in parallel processes (`workers`, default: every CPU this job may use), shard by shard, and
    # resumed per shard after an interrupted run (geofm.data.parallel_shards)
    from functools import partial

    from .parallel_shards import decode_shards, default_workers, shard_size

    per_shard = shard_size(3, S, b.shard_max_mb)
    groups = decode_shards([str(f) for _, f, _ in items], partial(_decode_image, S=S), per_shard, b.work_dir,
                           int(ds_cfg.get("workers") or default_workers()),
                           {"format": fmt, "tile_size": S, "sources": [src for _, _, src in items]})
    for k, (npy, metas) in enumerate(groups):
        rows = []
        for (cname, _, src), meta in zip(items[k * per_shard:(k + 1) * per_shard], metas):
            if not meta["ok"]:
                b.reject(src, f"cannot decode image {src}: {meta['reason']}")
                continue
            rows.append({"tile_id": Path(src).stem, "source": src, "row_off": 0, "col_off": 0,
                         "height": meta["height"], "width": meta["width"], "crs": None, "geometry": None,
                         "label": cidx[cname], "label_name": cname, "split": "train"})
        if rows:
            b.add_shard(npy, rows)
    if not b.rows:
        raise DataError("every image was rejected: " + "; ".join(f"{r['file']}: {r['reason']}"
                                                                for r in b.rejected[:20]))
    splits = stratified_split([r["label"] for r in b.rows], float(ds_cfg.get("train_ratio", 0.8)),
                              float(ds_cfg.get("val_ratio", 0.0)), _seeded_rng(seed, b.name, "split"))
    for r, sp in zip(b.rows, splits):
        r["split"] = str(sp)
    ids = [r["tile_id"] for r in b.rows]
    if len(set(ids)) != len(ids):
        for r in b.rows:
            r["tile_id"] = r["source"]


# ----------------------------------------------------------------------------------------------------------
# eurosat_ms_zip: 13-band Sentinel-2 GeoTIFFs, <Class>/<Class>_N.tif
# ----------------------------------------------------------------------------------------------------------
def _ms_scaling(ds_cfg: dict) -> tuple[str, tuple[float, float]]:
    mode = str(ds_cfg.get("scaling", "fixed"))
    if mode == "fixed":
        rng = ds_cfg.get("scale_range", [0, 10000])
    elif mode == "percentile":
        rng = ds_cfg.get("percentiles", [2, 98])
    else:
        raise DataError(f"scaling must be 'fixed' or 'percentile', got {mode!r}")
    if len(rng) != 2 or not float(rng[0]) < float(rng[1]):
        raise DataError(f"{'scale_range' if mode == 'fixed' else 'percentiles'} must be [low, high] with "
                        f"low < high, got {rng!r}")
    return mode, (float(rng[0]), float(rng[1]))


def _read_ms(path: Path, S: int, n_bands: int | None, select):
    """Read a multispectral GeoTIFF -> (float32 C x S x S in its own units, crs, transform, (h, w))."""
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(path) as src:
        if n_bands is not None and src.count != n_bands:
            raise DataError(f"{src.count} bands, expected {n_bands}")
        if select and max(select) > src.count:
            raise DataError(f"band_select {select} exceeds its {src.count} bands")
        indexes = [int(i) for i in select] if select else None
        shape = (len(indexes) if indexes else src.count, S, S)
        d = src.read(indexes, out_shape=shape, resampling=Resampling.bilinear) \
            if (src.height, src.width) != (S, S) else src.read(indexes)
        crs, tr, hw = src.crs, src.transform, (src.height, src.width)
    d = d.astype(np.float32)
    if not np.isfinite(d).all():
        d = np.nan_to_num(d)
    return d, crs, tr, hw


def _tile_eurosat_ms(b: _Builder, fmt, ds_cfg, raw_dir: Path, parent_raw_dir, seed: int) -> None:
    """EuroSAT_MS.zip / EuroSAT_allBands: 13-band uint16 Sentinel-2 GeoTIFFs in class folders.

    Reflectances are scaled per band to uint8: ``scaling: fixed`` (default) maps ``scale_range`` (default
    [0, 10000], i.e. reflectance 0..1) to 0..255; ``scaling: percentile`` uses the ``percentiles`` (default
    [2, 98]) of each band over the *train* split (a fixed pixel sample per image).  ``band_select`` (1-based)
    keeps a subset; ``bands`` (default 13) is the band count every file must have.
    """
    S = b.tile_size
    mode, rng = _ms_scaling(ds_cfg)
    select = ds_cfg.get("band_select")
    if select is not None and (isinstance(select, (int, str)) or not all(int(i) >= 1 for i in select)):
        raise DataError(f"band_select must be a list of 1-based band indices, got {select!r}")
    select = [int(i) for i in select] if select else None
    n_bands = ds_cfg.get("bands", 13)
    n_bands = None if n_bands is None else int(n_bands)
    items = _collect_class_items(b, fmt, None, ds_cfg, raw_dir)
    items = [it for it in items if it[1].suffix.lower() in TIFF_SUFFIXES]
    classes = sorted({c for c, _, _ in items})
    if not classes:
        raise DataError(f"no GeoTIFFs in class folders for format {fmt} under {raw_dir}: " +
                        "; ".join(r["reason"] for r in b.rejected))
    b.classes = classes
    cidx = {c: i for i, c in enumerate(classes)}
    sample_rng = _seeded_rng(seed, b.name, "ms-sample")
    n_sample = int(ds_cfg.get("percentile_sample", 256))
    good, samples = [], []  # pass 1: validate every file (and sample pixels for the percentiles)
    for cname, f, src in items:
        try:
            d, crs, tr, hw = _read_ms(f, S, n_bands, select)
        except Exception as e:  # noqa: BLE001 - GDAL raises many types for corrupt files
            b.reject(src, f"cannot read {src}: {type(e).__name__}: {e}")
            continue
        good.append((cname, f, src, crs, tr, hw))
        if mode == "percentile":
            flat = d.reshape(d.shape[0], -1)
            samples.append(flat[:, sample_rng.integers(0, flat.shape[1], size=min(n_sample, flat.shape[1]))])
    if not good:
        raise DataError("every image was rejected: " + "; ".join(f"{r['file']}: {r['reason']}"
                                                                for r in b.rejected[:20]))
    splits = stratified_split([cidx[g[0]] for g in good], float(ds_cfg.get("train_ratio", 0.8)),
                              float(ds_cfg.get("val_ratio", 0.0)), _seeded_rng(seed, b.name, "split"))
    if mode == "fixed":
        lo = np.full(1, rng[0], np.float32)
        hi = np.full(1, rng[1], np.float32)
    else:
        train = [s for s, sp in zip(samples, splits) if sp == "train"] or samples
        pix = np.concatenate(train, axis=1)
        lo = np.percentile(pix, rng[0], axis=1).astype(np.float32)
        hi = np.percentile(pix, rng[1], axis=1).astype(np.float32)
        hi = np.maximum(hi, lo + 1.0)
    scale = (255.0 / (hi - lo))[:, None, None]
    for (cname, f, src, crs, tr, hw), sp in zip(good, splits):  # pass 2: scale and store
        try:
            d, _, _, _ = _read_ms(f, S, n_bands, select)
        except Exception as e:  # noqa: BLE001 - changed since pass 1
            b.reject(src, f"cannot read {src}: {type(e).__name__}: {e}")
            continue
        tile = np.round(np.clip((d - lo[:, None, None]) * scale, 0, 255)).astype(np.uint8)
        b.add(tile, {"tile_id": Path(src).stem, "source": src, "row_off": 0, "col_off": 0, "height": hw[0],
                     "width": hw[1], "crs": crs.to_string() if crs else None,
                     "geometry": _footprint(tr, 0, 0, hw[0], hw[1]) if crs else None,
                     "label": cidx[cname], "label_name": cname, "split": str(sp)})
    names = EUROSAT_MS_BANDS if (b.bands == 13 and not select) else (
        [EUROSAT_MS_BANDS[i - 1] for i in select] if select and n_bands == 13 else None)
    b.extra["scaling"] = {"mode": mode, "low": [float(v) for v in np.broadcast_to(lo, (b.bands,))],
                          "high": [float(v) for v in np.broadcast_to(hi, (b.bands,))],
                          **({"percentiles": list(rng)} if mode == "percentile" else {})}
    if names:
        b.extra["band_names"] = names
    ids = [r["tile_id"] for r in b.rows]
    if len(set(ids)) != len(ids):
        for r in b.rows:
            r["tile_id"] = r["source"]
