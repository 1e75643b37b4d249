"""Bad input a real user produces: one short error naming the file (or a rejection listed and said on the
console), never a silent wrong result. Generated data only (EuroSAT's official zip layout: 2750/<Class>/)."""
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from geofm.data import DataError
from geofm.data.tiling import tile_dataset


def _png(value=100, mode="RGB", size=24) -> bytes:
    buf = io.BytesIO()
    if mode == "I;16":
        Image.fromarray(np.full((size, size), value, dtype=np.uint16)).save(buf, "PNG")
    else:
        Image.new(mode, (size, size), value if mode == "L" else (value, 50, 20)).save(buf, "PNG")
    return buf.getvalue()


def _eurosat(path, classes=("Forest", "River"), n=4, extra=()):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for c in classes:
            for i in range(n):
                zf.writestr(f"2750/{c}/{c}_{i}.png", _png(30 * i + 10))
        for name, data in extra:
            zf.writestr(name, data)


def test_a_single_class_is_an_error_not_a_perfect_score(tmp_path):
    (tmp_path / "raw").mkdir()
    _eurosat(tmp_path / "raw" / "EuroSAT.zip", classes=("River",))
    with pytest.raises(DataError, match=r"only one class \(River, 4 images\).*at least two"):
        tile_dataset("es", {"format": "eurosat_zip", "tile_size": 16}, tmp_path / "raw", tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_a_damaged_zip_member_names_the_archive_and_the_member(tmp_path):
    (tmp_path / "raw").mkdir()
    z = tmp_path / "raw" / "EuroSAT.zip"
    _eurosat(z)
    data = bytearray(z.read_bytes())
    with zipfile.ZipFile(z) as zf:  # flip bytes inside the compressed data of one member
        info = zf.getinfo("2750/River/River_2.png")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for k in range(start + 5, start + min(40, info.compress_size - 5)):
        data[k] ^= 0xFF
    z.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"EuroSAT\.zip is damaged: member '2750/River/River_2\.png'"):
        tile_dataset("es", {"format": "eurosat_zip", "tile_size": 16}, tmp_path / "raw", tmp_path / "t")


def test_16_bit_images_are_rejected_not_clipped(tmp_path, capsys):
    """PIL's convert("RGB") clips 16-bit values to 255: such images are rejected with the reason, listed in
    rejected.csv and said on the console by the tile stage."""
    from geofm.data.stages import run_tile

    from geofm.data.download import fetch_dataset

    _eurosat(tmp_path / "EuroSAT.zip", extra=[("2750/River/River_9.png", _png(40000, "I;16"))])
    ds = {"kind": "classification", "source": "local", "path": str(tmp_path / "EuroSAT.zip"),
          "format": "eurosat_zip", "tile_size": 16}
    cfg = {"results": str(tmp_path / "r"), "resources": str(tmp_path), "image_size": 16, "seed": 0,
           "datasets": {"ds": ds}}
    with pytest.raises(DataError, match=r"download\.json is missing: run the download stage for 'ds' first"):
        run_tile(cfg, "ds")
    fetch_dataset("ds", ds, tmp_path / "raw" / "ds")
    out = run_tile(cfg, "ds")
    import json

    stats = json.loads((out / "stats.json").read_text())
    assert stats["n_tiles"] == 8
    (rej,) = stats["rejected"]
    assert rej["file"].endswith("River_9.png") and "not 8-bit" in rej["reason"]
    assert "River_9.png" in (out / "rejected.csv").read_text()
    err = capsys.readouterr().err
    assert "1 input(s) rejected" in err and "rejected.csv" in err and "River_9.png" in err, err
