"""Format ``eurosat_ms_zip``: EuroSAT_MS.zip / EuroSAT_allBands (``<Class>/<Class>_N.tif``, 13-band uint16
Sentinel-2 GeoTIFFs with a CRS), read with rasterio and scaled per band to uint8.

``scaling: fixed`` maps ``scale_range`` (reflectance 0..1 as [0, 10000]) to 0..255; ``scaling: percentile``
uses the ``percentiles`` of each band over the *train* split (``percentile_sample`` pixels per image).
``band_select`` (1-based) keeps a subset; ``bands`` is the band count every file must have. The manifest
keeps each image's CRS and footprint.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import DataError
from .builder import Builder, footprint, split_rng, stratified_split
from .folders import ClassItem, class_index, collect_class_items
from .scenes import TIFF_SUFFIXES, band_selection

# Sentinel-2 band order of EuroSAT_MS / EuroSAT_allBands GeoTIFFs
EUROSAT_MS_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def ms_scaling(cfg: dict) -> tuple[str, tuple[float, float]]:
    mode = str(cfg["scaling"])
    if mode == "fixed":
        rng = cfg["scale_range"]
    elif mode == "percentile":
        rng = cfg["percentiles"]
    else:
        raise DataError(f"scaling must be 'fixed' or 'percentile', got {mode!r}")
    if len(rng) != 2 or not float(rng[0]) < float(rng[1]):
        raise DataError(f"{'scale_range' if mode == 'fixed' else 'percentiles'} must be [low, high] with "
                        f"low < high, got {rng!r}")
    return mode, (float(rng[0]), float(rng[1]))


def read_ms(path: Path, S: int, n_bands: int | None, select):
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


@dataclass(frozen=True)
class _Checked:
    """An image that passed the first read."""
    item: ClassItem
    crs: object
    transform: object
    hw: tuple[int, int]


def tile_eurosat_ms(b: Builder, cfg: dict, raw_dir: Path, seed: int, spec) -> None:
    S = b.tile_size
    mode, rng = ms_scaling(cfg)
    select = band_selection(cfg)
    n_bands = None if cfg.get("bands") is None else int(cfg["bands"])
    items = [it for it in collect_class_items(b, spec.name, spec.class_root, cfg, raw_dir)
             if it.path.suffix.lower() in TIFF_SUFFIXES]
    cidx = class_index(b, items, spec, raw_dir, "GeoTIFFs in class folders")
    sample_rng = split_rng(seed, b.name, "ms-sample")
    n_sample = int(cfg["percentile_sample"])
    good: list[_Checked] = []
    samples = []  # pass 1: validate every file (and sample pixels for the percentiles)
    for it in items:
        try:
            d, crs, tr, hw = read_ms(it.path, S, n_bands, select)
        except Exception as e:  # noqa: BLE001 - GDAL raises many types for corrupt files
            b.reject(it.source, f"cannot read {it.source}: {type(e).__name__}: {e}")
            continue
        good.append(_Checked(it, crs, tr, hw))
        if mode == "percentile":
            flat = d.reshape(d.shape[0], -1)
            samples.append(flat[:, sample_rng.integers(0, flat.shape[1], size=min(n_sample, flat.shape[1]))])
    if not good:
        raise DataError("every image was rejected: " + b.rejected_summary(20))
    splits = stratified_split([cidx[g.item.label_name] for g in good], float(cfg["train_ratio"]),
                              float(cfg["val_ratio"]), split_rng(seed, b.name, "split"))
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
    for g, sp in zip(good, splits):  # pass 2: scale and store
        src = g.item.source
        try:
            d, _, _, _ = read_ms(g.item.path, S, n_bands, select)
        except Exception as e:  # noqa: BLE001 - changed since pass 1
            b.reject(src, f"cannot read {src}: {type(e).__name__}: {e}")
            continue
        tile = np.round(np.clip((d - lo[:, None, None]) * scale, 0, 255)).astype(np.uint8)
        h, w = g.hw
        b.add(tile, {"tile_id": Path(src).stem, "source": src, "row_off": 0, "col_off": 0, "height": h,
                     "width": w, "crs": g.crs.to_string() if g.crs else None,
                     "geometry": footprint(g.transform, 0, 0, h, w) if g.crs else None,
                     "label": cidx[g.item.label_name], "label_name": g.item.label_name, "split": str(sp)})
    names = EUROSAT_MS_BANDS if (b.bands == 13 and not select) else (
        [EUROSAT_MS_BANDS[i - 1] for i in select] if select and n_bands == 13 else None)
    b.extra["scaling"] = {"mode": mode, "low": [float(v) for v in np.broadcast_to(lo, (b.bands,))],
                          "high": [float(v) for v in np.broadcast_to(hi, (b.bands,))],
                          **({"percentiles": list(rng)} if mode == "percentile" else {})}
    if names:
        b.extra["band_names"] = names
    b.unique_tile_ids()
