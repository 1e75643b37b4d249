"""Synthetic scenes: deterministic, georeferenced, full size, five structurally different classes."""

from __future__ import annotations

import json

import numpy as np
import rasterio

from geofm.data.demo import CLASSES, synthesize_scenes


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src.crs, src.transform, src.profile


def test_deterministic_and_georeferenced(tmp_path):
    a = synthesize_scenes(tmp_path / "a", n_scenes=2, size=256, seed=3)
    b = synthesize_scenes(tmp_path / "b", n_scenes=2, size=256, seed=3)
    c = synthesize_scenes(tmp_path / "c", n_scenes=1, size=256, seed=4)
    assert [p.name for p in a] == ["scene_000.tif", "scene_000_labels.tif", "scene_001.tif",
                                   "scene_001_labels.tif", "classes.json"]
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
    assert not np.array_equal(_read(a[0])[0], _read(c[0])[0])

    img0, crs0, tr0, prof0 = _read(a[0])
    img1, crs1, tr1, _ = _read(a[2])
    lab0, lcrs, ltr, lprof = _read(a[1])
    assert crs0.to_epsg() == 32633 and crs1.to_epsg() == 32633 and lcrs == crs0
    assert (tr0.a, -tr0.e) == (10.0, 10.0) and ltr == tr0
    assert (tr0.c, tr0.f) != (tr1.c, tr1.f)  # different origin per scene
    assert img0.dtype == np.uint8 and img0.shape == (3, 256, 256) and lab0.shape == (1, 256, 256)
    assert prof0["tiled"] and prof0["compress"] == "deflate"
    assert json.loads(a[-1].read_text())["classes"] == CLASSES
    assert lab0.max() < len(CLASSES)


def test_full_size_scene_classes_and_textures(tmp_path):
    files = synthesize_scenes(tmp_path, n_scenes=1, size=2048, bands=4, seed=0)  # speed: not a test's business
    img, crs, tr, _ = _read(files[0])
    lab = _read(files[1])[0][0]
    assert img.shape == (4, 2048, 2048)
    counts = np.bincount(lab.ravel(), minlength=len(CLASSES)) / lab.size
    assert (counts > 0.02).all(), counts  # all five classes cover a real area

    # Structure, not only colour: high-frequency energy and stripe orientation differ between classes.
    g = img[:3].astype(np.float32).mean(0)
    gx = np.abs(np.diff(g, axis=1))[:-1, :]
    gy = np.abs(np.diff(g, axis=0))[:, :-1]
    inner = lab[:-1, :-1]
    energy = {c: float((gx + gy)[inner == k].mean()) for k, c in enumerate(CLASSES)}
    for c in CLASSES[1:]:
        assert energy["water"] < 0.5 * energy[c], energy
    # The mean colour alone does not identify the textures: forest is much rougher than its mean suggests.
    assert energy["forest"] > 2 * energy["water"]


def test_colour_is_not_a_class_cue(tmp_path):
    """Every class's regions take colours from one shared palette: the mean colours of the classes overlap,
    so a colour-only classifier cannot identify the land cover (the texture has to)."""
    files = synthesize_scenes(tmp_path, n_scenes=2, size=1024, bands=3, seed=0)
    per_class = {k: [] for k in range(len(CLASSES))}
    for img_path, lab_path in ((files[0], files[1]), (files[2], files[3])):
        img, lab = _read(img_path)[0].astype(np.float32), _read(lab_path)[0][0]
        S = 64
        for r in range(0, lab.shape[0], S):
            for c in range(0, lab.shape[1], S):
                w = lab[r:r + S, c:c + S]
                k = int(np.bincount(w.ravel()).argmax())
                if (w == k).mean() > 0.9:
                    per_class[k].append(img[:, r:r + S, c:c + S].mean(axis=(1, 2)))
    means = {k: np.array(v) for k, v in per_class.items() if len(v) >= 5}
    assert len(means) >= 4
    # Brightness ranges of the classes overlap pairwise (with fixed class colours water and bare soil
    # were ~150 grey levels apart).
    bright = {k: m.mean(1) for k, m in means.items()}
    for a in bright:
        for b in bright:
            lo = max(np.percentile(bright[a], 10), np.percentile(bright[b], 10))
            hi = min(np.percentile(bright[a], 90), np.percentile(bright[b], 90))
            assert hi > lo, (CLASSES[a], CLASSES[b])
