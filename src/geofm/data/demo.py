"""Deterministic synthetic satellite scenes for the demo pipeline and tests.

:func:`synthesize_scenes` writes georeferenced, tiled+deflate uint8 GeoTIFFs (EPSG:32633, 10 m pixels,
a different origin per scene).  Each scene is a mosaic of organic (domain-warped Voronoi) regions of
five land-cover classes whose textures differ in *structure*; colour is deliberately *not* a class cue:
every region draws its base spectrum from one palette shared by all classes (a random material's
spectrum times per-band gains and a brightness factor), and each scene gets its own illumination
(per-band gain, haze) plus a smooth illumination field.  So a classifier must recognise the texture,
which is what makes the demo's pretrained-vs-random-init comparison meaningful (with class colours a
randomly initialised encoder already separates the classes perfectly).

- ``water``: smooth, with faint low-frequency ripples;
- ``forest``: high-frequency blobby canopy texture;
- ``fields``: parcels with oriented stripes (orientation, period and crop colour vary per parcel);
- ``built_up``: a street grid with rectangular roofs of varying size and colour;
- ``bare_soil``: wavy dune ridges and fine grain.

Beside each ``scene_XXX.tif`` a single-band ``scene_XXX_labels.tif`` (same grid, class index per pixel)
is written, plus one ``classes.json`` for the directory.  Everything is vectorised numpy: separable
matrix-product upsampling for smooth noise, lookup tables for per-region / per-parcel parameters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..common.io import atomic_path, write_json
from ..common.seeding import sequence_rng

CLASSES = ["water", "forest", "fields", "built_up", "bare_soil"]
PIXEL_SIZE = 10.0
CRS = "EPSG:32633"

# Base reflectance-like colours (R, G, B, NIR, SWIR1, SWIR2, ...) in 0..1 per class.
_SPECTRA = np.array(
    [
        [0.08, 0.16, 0.30, 0.04, 0.02, 0.01],  # water
        [0.10, 0.30, 0.12, 0.55, 0.25, 0.12],  # forest
        [0.45, 0.55, 0.25, 0.60, 0.40, 0.30],  # fields (modulated per parcel)
        [0.55, 0.53, 0.52, 0.35, 0.40, 0.38],  # built-up
        [0.78, 0.66, 0.45, 0.50, 0.65, 0.60],  # bare soil / desert
    ],
    dtype=np.float32,
)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation matrix (n_out x n_in) mapping a coarse 1-D grid onto n_out samples."""
    pos = np.linspace(0, n_in - 1, n_out, dtype=np.float64)
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 2)
    w = (pos - i0).astype(np.float32)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    m[rows, i0] = 1.0 - w
    m[rows, i0 + 1] = w
    return m


def smooth_noise(rng: np.random.Generator, size: int, cell: float, octaves: int = 1) -> np.ndarray:
    """Smooth value noise in [-1, 1]-ish of shape (size, size) with feature size ``cell`` pixels.

    Bilinear upsampling of a random coarse grid, done as ``Wy @ G @ Wx.T`` (fast BLAS matmuls).
    """
    out = np.zeros((size, size), dtype=np.float32)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        g = max(2, int(np.ceil(size / max(cell, 1.0))) + 1)
        grid = rng.uniform(-1, 1, (g, g)).astype(np.float32)
        wy = _interp_matrix(size, g)
        wx = _interp_matrix(size, g)
        out += amp * (wy @ grid @ wx.T)
        total += amp
        amp *= 0.5
        cell /= 2.0
    return out / total


def _region_labels(rng: np.random.Generator, size: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Domain-warped Voronoi class map (uint8, size x size; every class is present) and the map of region
    (Voronoi site) indices (int32, same shape)."""
    coarse = max(32, size // 8)
    n_sites = max(2 * n_classes, int(round(6 * (size / 512) ** 2)) + n_classes)
    sites = rng.uniform(0, coarse, (n_sites, 2)).astype(np.float32)
    site_cls = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n_sites - n_classes)])
    rng.shuffle(site_cls)
    # Warped full-resolution coordinates mapped into the coarse Voronoi grid.
    warp = size / 10.0
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
    wy = yy + warp * smooth_noise(rng, size, size / 6, octaves=3)
    wx = xx + warp * smooth_noise(rng, size, size / 6, octaves=3)
    scale = coarse / size
    cy = np.clip((wy * scale).astype(np.int32), 0, coarse - 1)
    cx = np.clip((wx * scale).astype(np.int32), 0, coarse - 1)
    # Nearest site on the coarse grid (coarse^2 x n_sites distances: cheap).
    gy, gx = np.meshgrid(np.arange(coarse, dtype=np.float32) + 0.5, np.arange(coarse, dtype=np.float32) + 0.5,
                         indexing="ij")
    d = (gy[..., None] - sites[:, 0]) ** 2 + (gx[..., None] - sites[:, 1]) ** 2
    coarse_site = np.argmin(d, axis=-1).astype(np.int32)
    site = coarse_site[cy, cx]
    return site_cls[site].astype(np.uint8), site


def _render(rng: np.random.Generator, labels: np.ndarray, bands: int, regions: np.ndarray | None = None) -> np.ndarray:
    """Render a (bands, H, W) float32 image in 0..1 from a class map with structured textures.

    Colour is a nuisance, not the class: every region (``regions``: Voronoi site per pixel) takes its base
    spectrum from a *shared* palette (the spectrum of a randomly drawn material, with per-band gains and
    a brightness factor), whatever its class; a scene-wide illumination (per-band gain, additive haze) and a
    smooth spatial illumination field vary on top.  What identifies a class is its spatial structure.
    """
    size = labels.shape[0]
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
    spectra = np.concatenate([_SPECTRA, rng.uniform(0.1, 0.6, (len(CLASSES), max(0, bands - 6))).astype(np.float32)],
                             axis=1)[:, :bands]
    if regions is None:
        regions = labels.astype(np.int32)
    n_reg = int(regions.max()) + 1
    material = rng.integers(0, len(spectra), n_reg)
    gain = rng.uniform(0.75, 1.25, (n_reg, bands)).astype(np.float32) * rng.uniform(0.6, 1.3, (n_reg, 1)).astype(
        np.float32)
    reg_col = np.clip(spectra[material] * gain, 0.02, 0.9)
    img = np.ascontiguousarray(np.moveaxis(reg_col[regions], -1, 0))  # (bands, H, W)
    # Scene illumination (per-band gain, haze) and a smooth illumination field.
    img *= rng.uniform(0.85, 1.15, (bands, 1, 1)).astype(np.float32)
    img *= 1.0 + 0.15 * smooth_noise(rng, size, size / 3, octaves=2)
    haze = float(rng.uniform(0.0, 0.08))
    grain = rng.standard_normal((size, size)).astype(np.float32)

    # Water: faint low-frequency ripples, very little grain.
    m = labels == 0
    ripple = 0.02 * np.sin((xx + 12 * smooth_noise(rng, size, 64)) * (2 * np.pi / 23.0))
    img[:, m] += ripple[m]

    # Forest: blobby high-frequency canopy (crowns ~4-6 px) with dark gaps.
    m = labels == 1
    canopy = smooth_noise(rng, size, 4, octaves=2)
    img[:, m] = img[:, m] * (0.55 + 0.9 * np.clip(canopy[m] + 0.4, 0, 1)) + 0.06 * canopy[m]

    # Fields: parcels on a warped grid; per-parcel stripe orientation, period and crop colour.
    m = labels == 2
    parcel = 96
    py = ((yy + 20 * smooth_noise(rng, size, 256)) // parcel).astype(np.int32)
    px = ((xx + 20 * smooth_noise(rng, size, 256)) // parcel).astype(np.int32)
    npc = size // parcel + 3
    pid = (np.clip(py + 1, 0, npc - 1) * npc + np.clip(px + 1, 0, npc - 1))[m]
    theta = rng.uniform(0, np.pi, npc * npc).astype(np.float32)
    period = rng.uniform(4, 14, npc * npc).astype(np.float32)
    crop = rng.uniform(0.55, 1.35, (npc * npc, bands)).astype(np.float32)
    phase = (xx[m] * np.cos(theta[pid]) + yy[m] * np.sin(theta[pid])) * (2 * np.pi / period[pid])
    stripes = 0.85 + 0.3 * (np.sin(phase) > 0)
    img[:, m] *= crop[pid].T * stripes[None]
    # Dark parcel boundaries (tracks / hedges).
    edge = ((yy % parcel) < 2) | ((xx % parcel) < 2)
    img[:, m & edge] *= 0.6

    # Built-up: street grid + bright rectangular roofs of per-block size and colour.
    m = labels == 3
    block = 40
    by, bx = (yy // block).astype(np.int32), (xx // block).astype(np.int32)
    oy, ox = yy % block, xx % block
    nb = size // block + 1
    bid = (by * nb + bx)[m]
    roof_h = rng.uniform(10, 30, nb * nb).astype(np.float32)
    roof_w = rng.uniform(10, 30, nb * nb).astype(np.float32)
    roof_col = rng.uniform(0.9, 1.6, (nb * nb, bands)).astype(np.float32)
    road = (oy[m] < 5) | (ox[m] < 5)
    roof = (oy[m] >= 8) & (oy[m] < 8 + roof_h[bid]) & (ox[m] >= 8) & (ox[m] < 8 + roof_w[bid])
    fac = np.where(road, 0.45, np.where(roof, 1.0, 0.75))[None] * np.where(roof[None], roof_col[bid].T, 1.0)
    img[:, m] *= fac

    # Bare soil / desert: wavy dune ridges (sawtooth) + fine grain.
    m = labels == 4
    dune_phase = (yy * 0.8 + xx * 0.6 + 40 * smooth_noise(rng, size, 128, octaves=2)) / 30.0
    dunes = dune_phase - np.floor(dune_phase)
    img[:, m] *= 0.85 + 0.25 * dunes[m] + 0.04 * grain[m]

    img += haze + 0.004 * grain[None]
    return np.clip(img, 0.0, 1.0)


def synthesize_scenes(out_dir, n_scenes: int = 3, size: int = 2048, bands: int = 3, seed: int = 0) -> list[Path]:
    """Write ``n_scenes`` synthetic georeferenced scenes (+ label rasters + classes.json) into ``out_dir``.

    Returns every file written: ``[scene_000.tif, scene_000_labels.tif, ..., classes.json]``.
    Output is byte-for-byte deterministic for a given (n_scenes, size, bands, seed).
    """
    import rasterio
    from rasterio.transform import from_origin

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if size < 32 or bands < 1 or n_scenes < 1:
        raise ValueError(f"synthesize_scenes: need size >= 32, bands >= 1, n_scenes >= 1 (got {size}, {bands}, "
                         f"{n_scenes})")
    block = max(16, (min(256, size // 2) // 16) * 16)  # < size so GDAL really writes tiles
    written: list[Path] = []
    for i in range(n_scenes):
        rng = sequence_rng(seed, i, size, bands)
        labels, regions = _region_labels(rng, size, len(CLASSES))
        img = np.round(_render(rng, labels, bands, regions) * 255.0).astype(np.uint8)
        # Scenes are placed on a diagonal, 1.5 scene-widths apart, on a 10 m grid in UTM 33N.
        x0 = 300000.0 + i * 1.5 * size * PIXEL_SIZE
        y0 = 5600000.0 - i * 0.75 * size * PIXEL_SIZE
        transform = from_origin(x0, y0, PIXEL_SIZE, PIXEL_SIZE)
        profile = dict(driver="GTiff", width=size, height=size, dtype="uint8", crs=CRS, transform=transform,
                       tiled=True, blockxsize=block, blockysize=block, compress="deflate")
        stem = f"scene_{i:03d}"
        for path, arr, kw in (
            (out_dir / f"{stem}.tif", img, dict(count=bands, photometric="RGB" if bands == 3 else "MINISBLACK")),
            (out_dir / f"{stem}_labels.tif", labels[None], dict(count=1)),
        ):
            with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile, **kw) as dst:
                dst.write(arr)
                if arr.shape[0] == 1:
                    dst.set_band_description(1, "land cover class index (see classes.json)")
            written.append(path)
    classes_path = out_dir / "classes.json"
    write_json(classes_path, {"classes": CLASSES, "label_raster_suffix": "_labels.tif", "crs": CRS,
                              "pixel_size": PIXEL_SIZE})
    written.append(classes_path)
    return written
