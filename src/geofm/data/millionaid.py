"""MillionAID as it is published: the hierarchical ``train/`` tree, a ``test/`` tree (hierarchical where its
labels are released, flat where they are withheld), and the two archives under TorchGeo's names.

Official layout (Long et al., "On Creating Benchmark Dataset for Aerial Image Interpretation: Reviews,
Guidances and Million-AID", IEEE JSTARS 14, 2021; the tree TorchGeo's ``MillionAID`` dataset reads,
torchgeo/datasets/millionaid.py)::

    train/<level 1>/<level 2>/<image>.jpg              e.g. train/water_area/beach/P0060208.jpg
    train/<level 1>/<level 2>/<level 3>/<image>.jpg    e.g. train/agriculture_land/arable_land/dry_field/P0335343.jpg
    test/...                                          the same, or test/<image>.jpg (labels withheld)

The 51 scene classes are the leaves of a three-level category tree (8 first-level, 28 second-level
nodes), so a leaf lies 2 or 3 folders below ``train/``. Published totals: 1,000,848 images, 51 leaf
classes (the project page, https://captain-whu.github.io/DiRS/, and the paper). TorchGeo names the archives
``train.zip`` (md5 ``1b40503cafa9b0601653ca36cd788852``) and ``test.zip`` (md5
``51a63ee3eeb1351889eacff349a983d8``); each unpacks to its ``train/`` or ``test/`` folder.

What the tiler makes of it (format ``millionaid_zip``, or ``image_folder`` pointing at such a tree):

- the **pretraining set** is every image found, labelled or not, in both folders; ``stats.json`` says so
  with ``"pretrain_split": null`` (pretraining reads every split of the tiles);
- the **labelled set** is every image in a leaf folder, one class per leaf, named by its path under the
  split folder (``agriculture_land/arable_land/dry_field``); unlabelled images have label ``-1``;
- an image anywhere else (one folder deep, or deeper than 3) is rejected with its reason;
- counts are checked against ``expected_images`` (default 1,000,848) and ``expected_classes`` (51): a
  shortfall is reported (``stats.json: count_check`` and the log) with numbers, and below
  ``min_count_fraction`` of the expected images (default 0.99) or with classes missing it is an error.
  Generated or partial copies set these keys.

Images with the same file name in different folders stay distinct: the manifest's ``source`` (and
``tile_id``) is the path inside the release.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from . import DataError
from .tiling.archives import rel
from .tiling.folders import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

LEAF_DEPTHS = (2, 3)  # folders between the split folder and an image, for a labelled image
SPLIT_DIRS = ("train", "test")
# the archive names and md5s TorchGeo publishes (torchgeo/datasets/millionaid.py, MillionAID.md5s)
TORCHGEO_ARCHIVES = {"train.zip": "1b40503cafa9b0601653ca36cd788852", "test.zip": "51a63ee3eeb1351889eacff349a983d8"}


def _split_roots(root: Path, archive: str = "") -> list[tuple[str, Path]]:
    """The ``train``/``test`` folders under ``root`` (shallowest first); an archive named ``train.zip`` or
    ``test.zip`` that unpacked without its top folder is that split itself."""
    found: list[tuple[str, Path]] = []
    queue = [root]
    while queue:
        d = queue.pop(0)
        subs = sorted(c for c in d.iterdir() if c.is_dir() and not c.name.startswith((".", "__MACOSX")))
        for s in subs:
            if s.name.lower() in SPLIT_DIRS:
                found.append((s.name.lower(), s))
            else:
                queue.append(s)
        if found:
            return found
    stem = Path(archive).stem.lower()
    if stem in SPLIT_DIRS:
        return [(stem, root)]
    return []


@dataclass(frozen=True)
class ReleaseItem:
    """One image of the release: its leaf class path (None: unlabelled), file, manifest name, split folder."""
    label_name: str | None
    path: Path
    source: str
    folder: str


def collect_items(reject, roots: list[tuple[str, Path]], raw_dir: Path) -> list[ReleaseItem]:
    """Every image of the release.

    ``roots``: ``(archive name or "", directory it was unpacked to / the raw directory)``; ``reject(file,
    reason)`` records what cannot be used.
    """
    items = []
    for zname, root in roots:
        splits = _split_roots(root, zname)
        if not splits:
            reject(zname or str(raw_dir), f"{zname or raw_dir}: no train/ or test/ folder of the MillionAID release")
            continue
        for split, sdir in splits:
            for dirpath, dirnames, filenames in os.walk(sdir):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__MACOSX")))
                for fn in sorted(filenames):
                    f = Path(dirpath) / fn
                    if f.suffix.lower() not in IMAGE_SUFFIXES or fn.startswith("."):
                        continue
                    under = f.relative_to(sdir)
                    inside = f.relative_to(root).as_posix()
                    src = f"{zname}/{inside}" if zname else rel(f, raw_dir)
                    depth = len(under.parts) - 1
                    if depth == 0:
                        items.append(ReleaseItem(None, f, src, split))
                    elif depth in LEAF_DEPTHS:
                        items.append(ReleaseItem("/".join(under.parts[:-1]), f, src, split))
                    else:
                        reject(src, f"{src}: {depth} folder(s) below {split}/, a MillionAID leaf class lies "
                                    f"{' or '.join(map(str, LEAF_DEPTHS))} below it")
    return items


def check_counts(name: str, n_images: int, classes: list[str], cfg: dict) -> dict:
    """Compare what was found with ``expected_images`` / ``expected_classes`` (schema defaults: the published
    totals); returns the ``count_check`` record, raises :class:`DataError` below ``min_count_fraction`` or
    with fewer classes than expected."""
    exp_n = int(cfg["expected_images"])
    exp_c = int(cfg["expected_classes"])
    frac = float(cfg["min_count_fraction"])
    rec = {"images": int(n_images), "expected_images": exp_n, "classes": len(classes), "expected_classes": exp_c,
           "min_count_fraction": frac, "shortfall": max(0, exp_n - int(n_images))}
    msg = (f"dataset {name!r}: {n_images:,} images in {len(classes)} leaf classes; the release has {exp_n:,} "
           f"images in {exp_c} classes")
    if n_images < exp_n or len(classes) != exp_c:
        log.warning("%s (%s images missing)", msg, f"{rec['shortfall']:,}")
    if n_images < frac * exp_n:
        raise DataError(f"{msg}: {n_images / max(exp_n, 1):.1%} is below min_count_fraction={frac} "
                        "(an incomplete copy? set expected_images / min_count_fraction for a subset)")
    if len(classes) < exp_c:
        raise DataError(f"{msg}: {exp_c - len(classes)} leaf classes missing")
    return rec


def tile_millionaid(b, cfg: dict, raw_dir: Path, seed: int) -> None:
    """The tiler of format ``millionaid_zip`` (registered in :mod:`geofm.data.tiling.registry`)."""
    from .tiling.archives import extract_archives
    from .tiling.builder import split_labelled
    from .tiling.folders import decode_into

    roots = extract_archives(raw_dir, b.tmp, float(cfg["max_extract_bytes"]))
    items = collect_items(b.reject, roots, raw_dir)
    if not items:
        raise DataError(f"no MillionAID images under {raw_dir}: " + "; ".join(r["reason"] for r in b.rejected[:5]))
    classes = sorted({it.label_name for it in items if it.label_name is not None})
    b.extra["count_check"] = check_counts(b.name, len(items), classes, cfg)
    b.classes = classes
    cidx = {c: i for i, c in enumerate(classes)}

    def row_of(it: ReleaseItem, meta: dict) -> dict:
        return {"tile_id": it.source, "source": it.source, "row_off": 0, "col_off": 0, "height": meta["height"],
                "width": meta["width"], "crs": None, "geometry": None,
                "label": -1 if it.label_name is None else cidx[it.label_name], "label_name": it.label_name or "",
                "split": "train"}

    # ~1M images: decoded in parallel processes, shard by shard, resumed per shard after an interrupted run
    decode_into(b, "millionaid_zip", cfg, items, row_of)
    labelled = [r for r in b.rows if r["label"] >= 0]
    if not labelled:
        raise DataError(f"dataset {b.name!r}: no image in a leaf class folder under {raw_dir}")
    split_labelled(b, labelled, cfg, seed)
    n_unlab = len(b.rows) - len(labelled)
    b.extra.update({"pretrain_split": None, "labelled": len(labelled), "unlabelled": n_unlab,
                    "folders": {k: sum(1 for it in items if it.folder == k) for k in SPLIT_DIRS}})
    log.info("%s: %d images (%d labelled in %d classes, %d unlabelled)", b.name, len(b.rows), len(labelled),
             len(classes), n_unlab)
