"""download.fetch_dataset: synthetic / local / derived sources and real HTTP against a local server."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from geofm.data import DataError
from geofm.data.download import fetch_dataset, sha256_file

BLOB = os.urandom(300_000)
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()
FAST = {"retries": 3, "backoff_s": 0.01, "timeout_s": 10}


def _record(path):
    return json.loads(path.read_text())


def test_synthetic_source(tmp_path):
    raw = tmp_path / "raw" / "demo"
    out = fetch_dataset("demo", {"source": "synthetic", "n_scenes": 2, "size": 64, "seed": 1}, raw)
    assert out == raw / "download.json"
    rec = _record(out)
    assert rec["dataset"] == "demo" and rec["source"] == "synthetic"
    paths = [f["path"] for f in rec["files"]]
    assert paths == sorted(["scene_000.tif", "scene_000_labels.tif", "scene_001.tif", "scene_001_labels.tif",
                            "classes.json"])
    for f in rec["files"]:
        assert sha256_file(raw / f["path"]) == f["sha256"] and (raw / f["path"]).stat().st_size == f["bytes"]


def test_local_file_dir_relative_and_derived(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"abc")
    (src / "sub" / "b.bin").write_bytes(b"defg")
    monkeypatch.chdir(tmp_path)
    rec = _record(fetch_dataset("d", {"source": "local", "path": "src"}, tmp_path / "raw_d"))
    # a by-hand tree is counted in place and linked, not copied (nor hashed file by file)
    assert rec["files"] == [{"path": "src", "n_files": 2, "bytes": 7}] and rec["linked"]
    link = tmp_path / "raw_d" / "src"
    assert link.is_symlink() and link.resolve() == src.resolve() and (link / "sub" / "b.bin").read_bytes() == b"defg"
    rec = _record(fetch_dataset("d", {"source": "local", "path": "src"}, tmp_path / "raw_d"))  # again: relinked
    assert link.is_symlink() and rec["files"][0]["n_files"] == 2
    rec = _record(fetch_dataset("f", {"source": "local", "path": "src/a.bin",
                                      "sha256": hashlib.sha256(b"abc").hexdigest()}, tmp_path / "raw_f"))
    assert rec["files"][0]["path"] == "a.bin" and (tmp_path / "raw_f" / "a.bin").is_symlink()
    # a checksum mismatch sets the link aside; the file itself stays where it is
    with pytest.raises(DataError, match="sha256 mismatch"):
        fetch_dataset("g", {"source": "local", "path": "src/a.bin", "sha256": "0" * 64}, tmp_path / "raw_g")
    assert (src / "a.bin").read_bytes() == b"abc" and not (tmp_path / "raw_g" / "a.bin").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        fetch_dataset("e", {"source": "local", "path": "empty"}, tmp_path / "raw_e")
    with pytest.raises(DataError, match="does not exist"):
        fetch_dataset("m", {"source": "local", "path": "missing.zip"}, tmp_path / "raw_m")
    rec = _record(fetch_dataset("lc", {"source": "derived", "from": "demo"}, tmp_path / "raw_lc"))
    assert rec == {"dataset": "lc", "source": "derived", "from": "demo", "files": []}


def test_url_download_and_path_override(http_server, tmp_path):
    http_server.files["/data/blob.bin"] = BLOB
    raw = tmp_path / "raw"
    rec = _record(fetch_dataset("x", {"source": "url", "url": http_server.base + "/data/blob.bin",
                                      "sha256": BLOB_SHA, **FAST}, raw))
    assert rec["files"] == [{"path": "blob.bin", "sha256": BLOB_SHA, "bytes": len(BLOB)}]
    assert (raw / "blob.bin").read_bytes() == BLOB and not (raw / "blob.bin.part").exists()
    # a local path override wins over the URL (which would 404 here)
    (tmp_path / "local.bin").write_bytes(b"xyz")
    rec = _record(fetch_dataset("y", {"source": "url", "url": http_server.base + "/nope.bin",
                                      "path": str(tmp_path / "local.bin")}, tmp_path / "raw_y"))
    assert rec["files"][0]["path"] == "local.bin"
    assert ("/nope.bin", None) not in http_server.requests


def test_resume_partial_file(http_server, tmp_path):
    http_server.files["/blob.bin"] = BLOB
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "blob.bin.part").write_bytes(BLOB[:100_000])
    fetch_dataset("x", {"source": "url", "url": http_server.base + "/blob.bin", "sha256": BLOB_SHA, **FAST}, raw)
    assert (raw / "blob.bin").read_bytes() == BLOB
    assert http_server.requests == [("/blob.bin", "bytes=100000-")]


def test_interrupted_transfer_is_resumed(http_server, tmp_path):
    http_server.files["/blob.bin"] = BLOB
    http_server.cut_first["/blob.bin"] = 120_000  # first response dies after 120 kB
    raw = tmp_path / "raw"
    fetch_dataset("x", {"source": "url", "url": http_server.base + "/blob.bin", "sha256": BLOB_SHA, **FAST}, raw)
    assert (raw / "blob.bin").read_bytes() == BLOB
    assert http_server.requests[0] == ("/blob.bin", None)
    assert http_server.requests[1] == ("/blob.bin", "bytes=120000-")


def test_server_ignoring_range_restarts_cleanly(http_server, tmp_path):
    http_server.files["/blob.bin"] = BLOB
    http_server.ignore_range = True
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "blob.bin.part").write_bytes(b"garbage" * 100)
    fetch_dataset("x", {"source": "url", "url": http_server.base + "/blob.bin", "sha256": BLOB_SHA, **FAST}, raw)
    assert (raw / "blob.bin").read_bytes() == BLOB


def test_wrong_sha256_is_rejected_and_set_aside(http_server, tmp_path):
    http_server.files["/blob.bin"] = BLOB
    raw = tmp_path / "raw"
    bad = "0" * 64
    with pytest.raises(DataError) as ei:
        fetch_dataset("x", {"source": "url", "url": http_server.base + "/blob.bin", "sha256": bad, **FAST}, raw)
    msg = str(ei.value)
    assert "blob.bin" in msg and bad in msg and BLOB_SHA in msg
    assert (raw / "blob.bin.rejected").read_bytes() == BLOB
    assert not (raw / "blob.bin").exists() and not (raw / "download.json").exists()


def test_md5_checked_when_that_is_all_a_dataset_publishes(http_server, tmp_path):
    import hashlib

    http_server.files["/blob.bin"] = BLOB
    good = hashlib.md5(BLOB).hexdigest()
    fetch_dataset("x", {"source": "url", "url": http_server.base + "/blob.bin", "md5": good, **FAST}, tmp_path / "ok")
    assert (tmp_path / "ok" / "download.json").exists()
    with pytest.raises(DataError, match=f"md5 mismatch for blob.bin: expected {'f' * 32}, got {good}"):
        fetch_dataset("x", {"source": "url", "url": http_server.base + "/blob.bin", "md5": "f" * 32, **FAST},
                      tmp_path / "bad")
    assert (tmp_path / "bad" / "blob.bin.rejected").exists()


def test_404_is_a_clear_error_without_retries(http_server, tmp_path):
    url = http_server.base + "/missing/file.zip"
    with pytest.raises(DataError, match="404") as ei:
        fetch_dataset("x", {"source": "url", "url": url, **FAST}, tmp_path / "raw")
    assert url in str(ei.value)
    assert len(http_server.requests) == 1
    assert not (tmp_path / "raw" / "download.json").exists()


def test_mirror_preferred_then_url_fallback(http_server, tmp_path):
    http_server.files["/main/blob.bin"] = BLOB
    cfg = {"source": "url", "url": http_server.base + "/main/blob.bin", "mirror": http_server.base + "/m/blob.bin",
           "sha256": BLOB_SHA, **FAST}
    rec = _record(fetch_dataset("x", cfg, tmp_path / "raw"))
    assert [p for p, _ in http_server.requests] == ["/m/blob.bin", "/main/blob.bin"]
    assert rec["url"].endswith("/main/blob.bin")


def test_connection_refused_retries_then_fails(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(DataError, match="after 3 attempts"):
        fetch_dataset("x", {"source": "url", "url": f"http://127.0.0.1:{port}/f.bin", "retries": 2,
                            "backoff_s": 0.01}, tmp_path / "raw")


def test_a_new_download_sets_aside_what_an_older_one_left(tmp_path, capsys):
    """The tile stage reads the whole raw folder, so a download leaves there only what it records: another
    local path's link goes (its data stays), surplus synthetic scenes move to ``<raw>.aside-<time>/``; a
    failed download leaves no record (the tile stage then reads nothing as downloaded)."""
    import zipfile

    from geofm.data.tiling import tile_dataset
    from test_bad_inputs import _eurosat

    src = tmp_path / "data"
    src.mkdir()
    _eurosat(src / "EuroSAT.zip", classes=("Forest", "River"), n=4)
    _eurosat(src / "EuroSAT-small.zip", classes=("Forest", "River"), n=2)
    raw = tmp_path / "raw" / "es"
    fetch_dataset("es", {"source": "local", "path": str(src / "EuroSAT.zip")}, raw)
    fetch_dataset("es", {"source": "local", "path": str(src / "EuroSAT-small.zip")}, raw)
    assert sorted(p.name for p in raw.iterdir()) == ["EuroSAT-small.zip", "download.json"]
    assert (src / "EuroSAT.zip").exists()  # only the link went
    stats = tile_dataset("es", {"format": "eurosat_zip", "tile_size": 16}, raw, tmp_path / "t")
    assert stats["n_tiles"] == 4  # the small archive's images, not both archives'
    # synthetic: 2 scenes, then 1 -> the second scene is set aside, not tiled
    syn = tmp_path / "raw" / "demo"
    fetch_dataset("demo", {"source": "synthetic", "n_scenes": 2, "size": 64, "seed": 1}, syn)
    capsys.readouterr()
    fetch_dataset("demo", {"source": "synthetic", "n_scenes": 1, "size": 64, "seed": 1}, syn)
    assert "scene_001.tif" not in {p.name for p in syn.iterdir()}
    (aside,) = syn.parent.glob("demo.aside-*")
    assert {"scene_001.tif", "scene_001_labels.tif"} <= {p.name for p in aside.iterdir()}
    assert str(aside) in capsys.readouterr().err
    # a checksum that fails: no record left behind
    with pytest.raises(DataError, match="sha256 mismatch"):
        fetch_dataset("es", {"source": "local", "path": str(src / "EuroSAT.zip"), "sha256": "0" * 64}, raw)
    assert not (raw / "download.json").exists()
    assert zipfile.is_zipfile(src / "EuroSAT.zip")
