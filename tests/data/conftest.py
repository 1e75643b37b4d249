"""Shared fixtures for the data-stage tests: real test data location, small synthetic scenes, HTTP server."""

from __future__ import annotations

import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

try:  # allow running before `pip install -e .`
    import geofm.data  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO / "src"))


def _shared_data_dir() -> Path | None:
    for cand in (os.environ.get("GEOFM_SHARED_DATA"), REPO / "shared" / "data", REPO.parent / "shared" / "data",
                 Path("/work/shared/data")):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = _shared_data_dir()
    if d is None:
        pytest.skip("real test data (shared/data) not found; set GEOFM_SHARED_DATA to its directory")
    return d


@pytest.fixture(scope="session")
def shared_file(shared_data):
    """``shared_file(rel)`` -> path under shared/data, skipping the test when that file is absent."""

    def get(rel: str) -> Path:
        p = shared_data / rel
        if not p.exists():
            pytest.skip(f"{p} is absent from shared/data")
        return p

    return get


@pytest.fixture(scope="session")
def scenes_dir(tmp_path_factory) -> Path:
    """Two 256 px synthetic scenes (+ label rasters, classes.json)."""
    from geofm.data.demo import synthesize_scenes

    d = tmp_path_factory.mktemp("raw_scenes")
    synthesize_scenes(d, n_scenes=2, size=256, bands=3, seed=0)
    return d


@pytest.fixture(scope="session")
def scene_tiles(scenes_dir, tmp_path_factory) -> Path:
    """geotiff_scenes tiles (32 px, stride 32, split blocks of 64 px) of ``scenes_dir``."""
    from geofm.data.tiling import tile_dataset

    out = tmp_path_factory.mktemp("tiles") / "demo"
    tile_dataset("demo", {"format": "geotiff_scenes", "tile_size": 32, "split_block": 64}, scenes_dir, out, seed=0)
    return out


class _Server:
    """Serves ``files`` (url path -> bytes) with Range support; can cut a response short / count requests."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut_first: dict[str, int] = {}  # path -> bytes to send before dropping the first full response
        self.requests: list[tuple[str, str | None]] = []
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.files.get(self.path)
                if body is None:
                    msg = b"not found"
                    self.send_response(404)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                    self.send_header("Accept-Ranges", "bytes")
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                cut = server.cut_first.pop(self.path, None)
                if cut is not None and start == 0:
                    self.wfile.write(payload[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def http_server():
    s = _Server()
    s.thread.start()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()
