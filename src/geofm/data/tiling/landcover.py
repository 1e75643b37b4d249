"""Format ``derived_landcover``: classification tiles cut from the synthetic scenes of a parent dataset
(``from:``), labelled by the majority class of its ``*_labels.tif`` raster where that class's share is
>= ``min_purity``; at most ``max_per_class`` per class (absent: all); stratified seeded split by
``train_ratio`` / ``val_ratio`` (the rest is test)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import DataError
from .archives import rel
from .builder import Builder, footprint, split_rng, stratified_split


@dataclass(frozen=True)
class Candidate:
    scene: Path
    row: int
    col: int
    label: int
    purity: float


def _candidates(b: Builder, label_files: list[Path], parent_raw_dir: Path, n_classes: int, stride: int,
                min_purity: float) -> list[Candidate]:
    """Every window whose majority class reaches ``min_purity`` (window class counts by integral images)."""
    import rasterio

    S = b.tile_size
    cands = []
    for lf in label_files:
        scene = lf.with_name(lf.name[: -len("_labels.tif")] + ".tif")
        if not scene.exists():
            b.reject(rel(lf, parent_raw_dir), f"label raster without scene {scene.name}")
            continue
        try:
            with rasterio.open(lf) as src:
                lab = src.read(1)
        except Exception as e:  # noqa: BLE001
            b.reject(rel(lf, parent_raw_dir), f"cannot read {lf.name}: {e}")
            continue
        H, W = lab.shape
        rows = np.arange(0, H - S + 1, stride)
        cols = np.arange(0, W - S + 1, stride)
        if len(rows) == 0 or len(cols) == 0:
            continue
        best = np.zeros((len(rows), len(cols)), np.int64)
        best_k = np.zeros((len(rows), len(cols)), np.int64)
        for k in range(n_classes):
            ii = np.zeros((H + 1, W + 1), np.int32)
            ii[1:, 1:] = np.cumsum(np.cumsum(lab == k, axis=0, dtype=np.int32), axis=1)
            cnt = (ii[np.ix_(rows + S, cols + S)] - ii[np.ix_(rows, cols + S)] - ii[np.ix_(rows + S, cols)]
                   + ii[np.ix_(rows, cols)])
            better = cnt > best
            best = np.where(better, cnt, best)
            best_k = np.where(better, k, best_k)
        purity = best / float(S * S)
        for i, j in zip(*np.nonzero(purity >= min_purity)):
            cands.append(Candidate(scene, int(rows[i]), int(cols[j]), int(best_k[i, j]), float(purity[i, j])))
    return cands


def tile_derived_landcover(b: Builder, cfg: dict, raw_dir: Path, parent_raw_dir, seed: int) -> None:
    import rasterio

    if parent_raw_dir is None:
        parent = cfg.get("from")
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
    stride = int(cfg.get("stride") or S)
    min_purity = float(cfg["min_purity"])
    max_per_class = cfg.get("max_per_class")
    label_files = sorted(parent_raw_dir.glob("*_labels.tif"))
    if not label_files:
        raise DataError(f"no *_labels.tif in {parent_raw_dir}")
    cands = _candidates(b, label_files, parent_raw_dir, len(classes), stride, min_purity)
    if not cands:
        raise DataError(f"no {S}px tile reaches min_purity={min_purity} in {parent_raw_dir}")

    rng = split_rng(seed, b.name, "derived")
    chosen: list[Candidate] = []
    for k in range(len(classes)):
        ck = [x for x in cands if x.label == k]
        order = rng.permutation(len(ck))
        if max_per_class is not None:
            order = order[: int(max_per_class)]
        chosen += [ck[i] for i in sorted(order)]
    splits = stratified_split([x.label for x in chosen], float(cfg["train_ratio"]), float(cfg["val_ratio"]), rng)
    by_scene: dict[Path, list] = {}
    for x, sp in zip(chosen, splits):
        by_scene.setdefault(x.scene, []).append((x, sp))
    for scene, items in sorted(by_scene.items()):
        try:
            with rasterio.open(scene) as src:
                img, crs, tr = src.read(), src.crs, src.transform
            if img.dtype != np.uint8:
                raise DataError(f"expected uint8 synthetic scene, got {img.dtype}")
        except Exception as e:  # noqa: BLE001
            b.reject(rel(scene, parent_raw_dir), f"cannot read {scene.name}: {e}")
            continue
        crs_s = crs.to_string() if crs else None
        for x, sp in items:
            r, c, k = x.row, x.col, x.label
            b.add(np.ascontiguousarray(img[:, r:r + S, c:c + S]), {
                "tile_id": f"{scene.stem}_r{r:06d}_c{c:06d}", "source": scene.name, "row_off": r, "col_off": c,
                "height": S, "width": S, "crs": crs_s,
                "geometry": footprint(tr, r, c, S, S) if crs else None,
                "label": k, "label_name": classes[k], "split": str(sp),
            })
    b.extra.update({"parent": str(parent_raw_dir), "min_purity": min_purity, "stride": stride})
