"""Class-folder formats: ``ucmerced_zip``, ``eurosat_zip``, ``aid_zip``, ``resisc45_rar`` and ``image_folder``.

Archives (zip, rar; an already extracted tree is accepted too) holding ``<class>/<image>`` folders, under the
format's own root where it has one (``UCMerced_LandUse/Images``, ``2750``, ``AID``, ``NWPU-RESISC45``: the
registry's ``class_root``), else the first folder with at least two class folders of images. Every image is
decoded with PIL (in parallel processes, resumable per shard: :mod:`geofm.data.parallel_shards`), resized
(bilinear) to ``tile_size``, labelled by its folder; stratified seeded split. Corrupt images are rejected,
not fatal.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .. import DataError
from .archives import extract_archives, rel, walk
from .builder import Builder, split_labelled

IMAGE_SUFFIXES = {".tif", ".tiff", ".jpg", ".jpeg", ".png", ".bmp"}


@dataclass(frozen=True)
class ClassItem:
    """One image of a class folder: its class, its file, and its name in the manifest (``source``)."""
    label_name: str
    path: Path
    source: str


def find_class_root(root: Path, marker: str | None, fallback: bool = True) -> Path | None:
    """Directory whose sub-directories are the classes (one named ``marker``, else any if ``fallback``)."""
    for p in sorted(p for p in walk(root) if p.name == marker) if marker else []:
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


def load_image(path: Path, S: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image with PIL -> (uint8 3 x S x S, original (height, width))."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        hw = (im.size[1], im.size[0])
        if im.mode in ("I", "F") or im.mode.startswith("I;"):  # 16/32-bit integers or floats: RGB would clip them
            raise ValueError(f"{im.mode} pixels (not 8-bit): an image folder holds 8-bit images; read "
                             "higher bit depths as GeoTIFF scenes (format geotiff_scenes, scaled per band)")
        if im.mode != "RGB":
            im = im.convert("RGB")
        if im.size != (S, S):
            im = im.resize((S, S), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)), hw


def decode_image(path: str, S: int) -> tuple[np.ndarray, dict]:
    """One image for :func:`geofm.data.parallel_shards.decode_shards` (runs in a worker process)."""
    tile, (h, w) = load_image(Path(path), S)
    return tile, {"height": int(h), "width": int(w)}


def collect_class_items(b: Builder, fmt: str, marker: str | None, cfg: dict, raw_dir: Path) -> list[ClassItem]:
    """Extract the archives under ``raw_dir`` (zip, rar) and list every image of its class folders."""
    roots = extract_archives(raw_dir, b.tmp, float(cfg["max_extract_bytes"]))
    items = []
    found = [(zname, root, find_class_root(root, marker, fallback=False)) for zname, root in roots]
    if not any(c for _, _, c in found):  # no archive has the canonical layout: accept any class folders
        found = [(zname, root, find_class_root(root, marker, fallback=True)) for zname, root in roots]
    for zname, root, croot in found:
        if croot is None:
            b.reject(zname or str(raw_dir), f"{zname or raw_dir}: no <class>/<image> folder layout of {fmt}")
            continue
        for cdir in sorted(p for p in croot.iterdir() if p.is_dir()):
            for f in sorted(cdir.iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    src = f"{zname}/{rel(f, root)}" if zname else rel(f, raw_dir)
                    items.append(ClassItem(cdir.name, f, src))
    return items


def decode_into(b: Builder, fmt: str, cfg: dict, items: list, row_of) -> None:
    """Decode the images ``items`` (each with ``.path`` and ``.source``) into ``b``'s shards in parallel
    processes (``workers``; absent: every CPU this job may use), shard by shard, resumed per shard after an
    interrupted run (:mod:`geofm.data.parallel_shards`); ``row_of(item, meta)`` is its manifest row."""
    from ..parallel_shards import decode_shards, default_workers, shard_size

    S = b.tile_size
    per_shard = shard_size(3, S, b.shard_max_mb)
    groups = decode_shards([str(it.path) for it in items], partial(decode_image, S=S), per_shard, b.work_dir,
                           int(cfg.get("workers") or default_workers()),
                           {"format": fmt, "tile_size": S, "sources": [it.source for it in items]})
    for k, (npy, metas) in enumerate(groups):
        rows = []
        for it, meta in zip(items[k * per_shard:(k + 1) * per_shard], metas):
            if not meta["ok"]:
                b.reject(it.source, f"cannot decode image {it.source}: {meta['reason']}")
                continue
            rows.append(row_of(it, meta))
        if rows:
            b.add_shard(npy, rows)


def class_index(b: Builder, items: list, spec, raw_dir: Path, what: str = "images") -> dict[str, int]:
    """Set ``b.classes`` to the sorted class names of ``items`` and return name -> label; none is an error
    naming the format, the folder and why each file was rejected."""
    classes = sorted({it.label_name for it in items})
    if not classes:
        raise DataError(f"no {what} found for format {spec.name} under {raw_dir}: " +
                        "; ".join(r["reason"] for r in b.rejected))
    if len(classes) < 2:
        raise DataError(f"only one class ({classes[0]}, {len(items)} {what}) found for format {spec.name} under "
                        f"{raw_dir}: scene classification needs at least two")
    b.classes = classes
    return {c: i for i, c in enumerate(classes)}


def tile_class_folders(b: Builder, cfg: dict, raw_dir: Path, seed: int, spec) -> None:
    items = collect_class_items(b, spec.name, spec.class_root, cfg, raw_dir)
    cidx = class_index(b, items, spec, raw_dir)

    def row_of(it: ClassItem, meta: dict) -> dict:
        return {"tile_id": Path(it.source).stem, "source": it.source, "row_off": 0, "col_off": 0,
                "height": meta["height"], "width": meta["width"], "crs": None, "geometry": None,
                "label": cidx[it.label_name], "label_name": it.label_name, "split": "train"}

    decode_into(b, spec.name, cfg, items, row_of)
    if not b.rows:
        raise DataError("every image was rejected: " + b.rejected_summary(20))
    split_labelled(b, b.rows, cfg, seed)
    b.unique_tile_ids()
