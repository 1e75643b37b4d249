"""Format ``geotiff_scenes``: georeferenced GeoTIFF scenes cut into windows with spatially disjoint splits.

Every ``*.tif``/``*.tiff`` under ``raw_dir`` (recursively, ignoring ``*_labels.tif``) is one scene; or
``band_files: [glob, ...]`` (relative to ``raw_dir``) lists files on one grid to stack band-wise into a single
scene (e.g. Landsat ``l8_B*.tif``); optional ``band_select: [1-based indices]`` picks bands. Windows of
``tile_size`` every ``stride`` px (absent: ``tile_size``) are kept when their valid fraction (nodata / mask
aware) is >= ``min_valid_fraction``. uint8 stays as is; other dtypes are scaled per band with the scene's 2-98
percentiles. Splits are spatially disjoint: the scene is cut into ``split_block`` px blocks (absent: 8 x
``tile_size``), whole blocks are assigned (seeded) to train/val/test (``val_fraction``, ``test_fraction``),
and a tile that would straddle blocks of two different splits is dropped. Files without a CRS, unreadable
or truncated files are recorded in ``rejected`` (DataError when every file is rejected).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import DataError
from .archives import rel, walk
from .builder import Builder, assign_blocks, footprint, split_rng

TIFF_SUFFIXES = {".tif", ".tiff"}


def band_selection(cfg: dict) -> list[int] | None:
    """``band_select`` as 1-based ints (None: every band); a clear error for anything else."""
    select = cfg.get("band_select")
    if select is not None and (isinstance(select, (int, str)) or not all(int(i) >= 1 for i in select)):
        raise DataError(f"band_select must be a list of 1-based band indices, got {select!r}")
    return [int(i) for i in select] if select else None


def find_scene_files(raw_dir: Path, band_files) -> list[list[Path]]:
    """The scenes under ``raw_dir``: each a list of files stacked band-wise (one file, or ``band_files``)."""
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
    files = sorted(p for p in walk(raw_dir) if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES
                   and not p.name.lower().endswith(("_labels.tif", "_labels.tiff")) and not p.name.startswith("."))
    return [[p] for p in files]


@dataclass
class Scene:
    files: list[Path]
    width: int
    height: int
    count: int  # bands over all files
    dtype: str
    crs: object
    transform: object
    nodata_aware: bool  # some band has a mask or nodata: windows are checked for validity
    key: str  # the files relative to raw_dir, "+"-joined


@dataclass
class _FileMeta:
    width: int
    height: int
    count: int
    dtype: str
    crs: object
    transform: object
    masked: bool
    one_dtype: bool


def open_scene(files: list[Path], raw_dir: Path) -> tuple[Scene | None, str | None]:
    """Validate a (stack of) GeoTIFF(s). Returns (Scene, None) or (None, reason)."""
    import rasterio
    from rasterio.enums import MaskFlags

    metas: list[_FileMeta] = []
    for f in files:
        try:
            with rasterio.open(f) as src:
                metas.append(_FileMeta(src.width, src.height, src.count, src.dtypes[0], src.crs, src.transform,
                                       any(fl != [MaskFlags.all_valid] for fl in src.mask_flag_enums),
                                       len(set(src.dtypes)) == 1))
        except Exception as e:  # noqa: BLE001 - any GDAL failure means unusable file
            return None, f"cannot open {rel(f, raw_dir)}: {e}"
    for f, m in zip(files, metas):
        if m.crs is None:
            return None, f"{rel(f, raw_dir)} has no CRS (not georeferenced)"
        if not m.one_dtype:
            return None, f"{rel(f, raw_dir)} mixes band data types"
    first = metas[0]
    for f, m in zip(files[1:], metas[1:]):
        if (m.width, m.height) != (first.width, first.height) or m.crs != first.crs or \
                not m.transform.almost_equals(first.transform):
            return None, f"{rel(f, raw_dir)} is not on the grid of {rel(files[0], raw_dir)}"
        if m.dtype != first.dtype:
            return None, f"{rel(f, raw_dir)} has dtype {m.dtype}, {rel(files[0], raw_dir)} has {first.dtype}"
    key = "+".join(rel(f, raw_dir) for f in files)
    return Scene(files, first.width, first.height, sum(m.count for m in metas), first.dtype, first.crs,
                 first.transform, any(m.masked for m in metas), key), None


def read_stack(srcs, window=None, out_shape=None):
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


def window_fractions(valid: np.ndarray, cols: np.ndarray, S: int) -> np.ndarray:
    """Valid fraction of each S x S window starting at the given columns of an S-row strip."""
    cs = np.concatenate([[0], np.cumsum(valid.sum(axis=0))])
    return (cs[cols + S] - cs[cols]) / float(S * S)


def _open_scenes(b: Builder, raw_dir: Path, band_files, select) -> list[Scene]:
    S = b.tile_size
    groups = find_scene_files(raw_dir, band_files)
    if not groups:
        raise DataError(f"no GeoTIFF found under {raw_dir}")
    scenes: list[Scene] = []
    for files in groups:
        sc, reason = open_scene(files, raw_dir)
        if sc is None:
            b.reject("+".join(rel(f, raw_dir) for f in files), reason)
        elif sc.width < S or sc.height < S:
            b.reject(sc.key, f"{sc.key} is {sc.width}x{sc.height}, smaller than tile_size {S}")
        elif select and max(select) > sc.count:
            b.reject(sc.key, f"{sc.key} has {sc.count} bands, 'band_select' is {list(select)}")
        elif scenes and (len(select) if select else sc.count) != (len(select) if select else scenes[0].count):
            b.reject(sc.key, f"{sc.key} has {sc.count} bands but {scenes[0].key} has {scenes[0].count}")
        else:
            scenes.append(sc)
    if not scenes:
        raise DataError("every input GeoTIFF was rejected: " + b.rejected_summary())
    return scenes


def _valid_windows(b: Builder, scenes: list[Scene], stride: int, min_valid: float) -> dict[str, list]:
    """Pass 1: the windows of each scene that are valid enough (mask only); drops scenes with none."""
    import rasterio
    from rasterio.windows import Window

    S = b.tile_size
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
                    fr = window_fractions(valid, cols, S)
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
    return kept


def _blocks_of(r: int, c: int, S: int, block: int):
    return [(br, bc) for br in range(r // block, (r + S - 1) // block + 1)
            for bc in range(c // block, (c + S - 1) // block + 1)]


def _cut_scene(sc: Scene, windows: list, block_split: dict, select, S: int, block: int):
    """Pass 2 for one scene: (tiles as (row, col, split, tile), straddling windows dropped, scaling or None)."""
    import rasterio
    from rasterio.windows import Window

    pending, n_straddle, scaling = [], 0, None
    srcs = [rasterio.open(f) for f in sc.files]
    try:
        lo = hi = None
        if sc.dtype != "uint8":
            f = min(1.0, 1024.0 / max(sc.width, sc.height))
            shape = (max(1, int(sc.height * f)), max(1, int(sc.width * f)))
            d, v = read_stack(srcs, out_shape=shape)
            if not v.any():
                raise DataError("no valid pixels")
            px = d[:, v].astype(np.float64)
            lo, hi = np.percentile(px, 2, axis=1), np.percentile(px, 98, axis=1)
            hi = np.where(hi > lo, hi, lo + 1.0)
            scaling = {"p2": lo.tolist(), "p98": hi.tolist()}
        by_row: dict[int, list[int]] = {}
        for r, c in windows:
            by_row.setdefault(r, []).append(c)
        for r, cs in sorted(by_row.items()):
            d, valid = read_stack(srcs, window=Window(0, r, sc.width, S))
            if select:
                d = d[[i - 1 for i in select]]
            if lo is not None:
                lo_s = lo if not select else lo[[i - 1 for i in select]]
                hi_s = hi if not select else hi[[i - 1 for i in select]]
                d = np.clip((d.astype(np.float32) - lo_s[:, None, None]) * (255.0 / (hi_s - lo_s))[:, None, None],
                            0, 255)
                d = np.round(np.nan_to_num(d)).astype(np.uint8)
            d = np.where(valid[None], d, 0).astype(np.uint8)
            for c in cs:
                splits = {block_split[(sc.key, br, bc)] for br, bc in _blocks_of(r, c, S, block)}
                if len(splits) > 1:
                    n_straddle += 1
                    continue
                pending.append((r, c, splits.pop(), np.ascontiguousarray(d[:, :, c:c + S])))
    finally:
        for s in srcs:
            s.close()
    return pending, n_straddle, scaling


def tile_geotiff_scenes(b: Builder, cfg: dict, raw_dir: Path, seed: int) -> None:
    S = b.tile_size
    stride = int(cfg.get("stride") or S)
    min_valid = float(cfg["min_valid_fraction"])
    block = int(cfg.get("split_block") or 8 * S)
    if block < S:
        raise DataError(f"split_block ({block}) must be >= tile_size ({S})")
    fracs = (float(cfg["val_fraction"]), float(cfg["test_fraction"]))
    select = band_selection(cfg)
    scenes = _open_scenes(b, raw_dir, cfg.get("band_files"), select)
    kept = _valid_windows(b, scenes, stride, min_valid)
    all_blocks = [(sc.key, *blk) for sc in scenes for r, c in kept[sc.key] for blk in _blocks_of(r, c, S, block)]
    block_split = assign_blocks(all_blocks, fracs, split_rng(seed, b.name, "blocks"))

    # Pass 2: read strips, scale, cut tiles; a scene is committed only if it was read completely.
    n_straddle = 0
    scaling = {}
    for sc in scenes:
        try:
            pending, dropped, sc_scaling = _cut_scene(sc, kept[sc.key], block_split, select, S, block)
        except Exception as e:  # noqa: BLE001 - truncated / corrupt data
            b.reject(sc.key, f"cannot read {sc.key}: {e}")
            continue
        n_straddle += dropped
        if sc_scaling is not None:
            scaling[sc.key] = sc_scaling
        if not pending:
            b.reject(sc.key, f"{sc.key}: no {S}px tile left (every valid window straddles blocks of two splits; "
                             "a larger split_block keeps them)")
            continue
        crs = sc.crs.to_string()
        stem = sc.key.rsplit(".", 1)[0].replace("/", "_").replace("+", "_")
        for r, c, split, tile in pending:
            b.add(tile, {
                "tile_id": f"{stem}_r{r:06d}_c{c:06d}", "source": sc.key, "row_off": r, "col_off": c,
                "height": S, "width": S, "crs": crs, "geometry": footprint(sc.transform, r, c, S, S),
                "label": -1, "label_name": "", "split": split,
            })
    if not b.rows:
        raise DataError(f"no tile of {S}px passed min_valid_fraction={min_valid}; rejected: " +
                        (b.rejected_summary() or "none"))
    b.extra.update({"stride": stride, "split_block": block, "min_valid_fraction": min_valid,
                    "dropped_straddling_tiles": n_straddle, "scaling": scaling})
