"""Fetch a dataset into ``resources/raw/{name}/`` and record it in ``download.json``.

:func:`fetch_dataset` ``(name, ds_cfg, raw_dir) -> Path`` (the path of ``download.json``) supports:

- ``source: synthetic`` -- :func:`geofm.data.demo.synthesize_scenes` (``n_scenes``, ``size``, ``bands``, ``seed``);
- ``source: local`` -- ``path:`` a file or directory (relative paths resolve against the CWD), verified in
  place and *linked* into ``raw_dir`` (a symlink), never copied: a by-hand dataset (MillionAID's ~230 GB
  tree, AID.zip) stays where it was put, and the download rule, which runs on the login node, only checks
  it (a file's checksum; a tree's file count and bytes, no hashing of every file);
- ``source: url`` -- ``url:`` over HTTP(S) with urllib; a ``path:`` override (local copy) takes precedence,
  then ``mirror:`` (falling back to ``url`` if the mirror fails).  Downloads go to ``<file>.part``, resume with
  ``Range`` requests, retry with exponential backoff (``retries``, ``backoff_s``), show a tqdm bar on a TTY,
  and are renamed into place atomically.  A 404 (or other 4xx) fails immediately with a :class:`DataError`
  naming the URL;
- ``source: derived`` -- nothing to fetch; ``download.json`` points at the parent dataset (``from:``).

An optional ``sha256:`` is verified for a single fetched file; on mismatch the file is moved to
``<file>.rejected`` and a :class:`DataError` names the file, the expected and the actual digest.
``download.json`` (``{"dataset", "source", "files": [{"path", "sha256", "bytes"}], ...}``) is written last,
atomically, so its presence means the download is complete.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..common.io import write_json
from . import DataError

DOWNLOAD_JSON = "download.json"
CHUNK = 1 << 20
USER_AGENT = "geofm-scale/0.1 (+urllib)"


def file_digest(path, algo: str, chunk: int = CHUNK) -> str:
    """Hex digest of a file's bytes with ``hashlib`` algorithm ``algo`` (``sha256``, ``md5``), read in chunks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path) -> str:
    return file_digest(path, "sha256")


def _verify_digest(path: Path, expected: str | None, algo: str) -> None:
    if not expected:
        return
    actual = file_digest(path, algo)
    if actual.lower() != str(expected).strip().lower():
        rejected = path.with_name(path.name + ".rejected")
        os.replace(path, rejected)
        raise DataError(f"{algo} mismatch for {path.name}: expected {expected}, got {actual} "
                        f"(file moved aside to {rejected})")


def _verify_checksums(path: Path, ds_cfg: dict) -> None:
    """``sha256:`` and/or ``md5:`` (the only checksum some datasets publish) from the config."""
    _verify_digest(path, ds_cfg.get("sha256"), "sha256")
    _verify_digest(path, ds_cfg.get("md5"), "md5")


def _link_local(src: Path, raw_dir: Path) -> tuple[Path, dict]:
    """Verify ``src`` in place and link it as ``raw_dir/<src name>`` (replacing an older link atomically);
    returns the link and what was checked."""
    if not src.exists():
        raise DataError(f"local path {src} does not exist")
    info: dict = {}
    if src.is_dir():
        n, size = 0, 0
        for root, _dirs, names in os.walk(src, followlinks=True):
            for nm in names:
                if nm == DOWNLOAD_JSON:
                    continue
                try:
                    size += os.stat(os.path.join(root, nm)).st_size
                except OSError as exc:
                    raise DataError(f"local directory {src}: cannot read {os.path.join(root, nm)}: {exc}") from exc
                n += 1
        if not n:
            raise DataError(f"local directory {src} is empty")
        info = {"n_files": n, "bytes": size}
    elif not os.access(src, os.R_OK):
        raise DataError(f"local file {src} is not readable")
    link = raw_dir / src.name
    if link.exists() and not link.is_symlink():
        raise DataError(f"{link} exists and is not a link: remove it (an older copy), the data stays at {src}")
    tmp = raw_dir / f".{src.name}.link-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(src, tmp, target_is_directory=src.is_dir())
    os.replace(tmp, link)
    return link, info


def _filename_for(url: str, ds_cfg: dict) -> str:
    name = ds_cfg.get("filename") or Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if not name or name in {".", ".."}:
        raise DataError(f"cannot derive a file name from URL {url}; set 'filename:' in the dataset config")
    return name


def _progress(total: int | None, initial: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=not sys.stderr.isatty(), leave=False)


def http_download(url: str, dst: Path, retries: int = 5, backoff_s: float = 1.0, timeout_s: float = 60.0) -> Path:
    """Download ``url`` to ``dst`` via ``dst.part`` with Range resume, retries and an atomic rename."""
    part = dst.with_name(dst.name + ".part")
    attempt = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                status = getattr(resp, "status", 200)
                if have and status == 206:
                    mode = "ab"
                    cr = resp.headers.get("Content-Range", "")
                    total = int(cr.rsplit("/", 1)[1]) if "/" in cr and cr.rsplit("/", 1)[1].isdigit() else None
                    if not cr.startswith(f"bytes {have}-"):
                        raise DataError(f"server sent unexpected Content-Range {cr!r} for {url} (asked {have}-)")
                else:  # server ignored Range (200): restart from scratch
                    mode, have = "wb", 0
                    cl = resp.headers.get("Content-Length")
                    total = int(cl) if cl and cl.isdigit() else None
                bar = _progress(total, have, dst.name)
                try:
                    with open(part, mode) as f:
                        while True:
                            block = resp.read(CHUNK)
                            if not block:
                                break
                            f.write(block)
                            if bar is not None:
                                bar.update(len(block))
                finally:
                    if bar is not None:
                        bar.close()
            size = part.stat().st_size
            if total is not None and size != total:
                raise ConnectionError(f"incomplete transfer of {url}: {size} of {total} bytes")
            os.replace(part, dst)
            return dst
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # our .part is bogus (e.g. larger than the file): start over
                part.unlink(missing_ok=True)
            elif e.code == 404:
                raise DataError(f"HTTP 404 Not Found: {url}") from e
            elif 400 <= e.code < 500 and e.code not in (408, 425, 429):
                raise DataError(f"HTTP {e.code} {e.reason} for {url}") from e
            err: Exception = e
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            # URLError covers refused connections / DNS; timeouts and resets are OSErrors.
            err = e
        except Exception as e:  # http.client.HTTPException (IncompleteRead, RemoteDisconnected, ...)
            import http.client

            if not isinstance(e, http.client.HTTPException):
                raise
            err = e
        attempt += 1
        if attempt > retries:
            raise DataError(f"download of {url} failed after {retries + 1} attempts: {err}") from err
        time.sleep(backoff_s * (2 ** (attempt - 1)))


def _fetch_url(ds_cfg: dict, raw_dir: Path) -> tuple[list[Path], str]:
    url = ds_cfg.get("url")
    mirror = ds_cfg.get("mirror")
    if not url and not mirror:
        raise DataError("source 'url' needs a 'url:' (or 'mirror:' / 'path:')")
    dst = raw_dir / _filename_for(url or mirror, ds_cfg)
    expected = ds_cfg.get("sha256")
    if dst.exists() and expected and sha256_file(dst) == str(expected).strip().lower():
        return [dst], url or mirror  # already complete and verified
    retries, backoff, timeout = int(ds_cfg["retries"]), float(ds_cfg["backoff_s"]), float(ds_cfg["timeout_s"])
    candidates = [u for u in (mirror, url) if u]
    errors = []
    for u in candidates:
        try:
            http_download(u, dst, retries=retries, backoff_s=backoff, timeout_s=timeout)
            return [dst], u
        except DataError as e:
            errors.append(str(e))
            part = dst.with_name(dst.name + ".part")
            if u != candidates[-1]:
                part.unlink(missing_ok=True)  # the next candidate may serve different bytes
    raise DataError("; ".join(errors))


def fetch_dataset(name: str, ds_cfg: dict, raw_dir) -> Path:
    """Fetch dataset ``name`` into ``raw_dir``; returns the path of the written ``download.json``.
    ``ds_cfg`` is its ``datasets.<name>`` entry (its defaults are filled here, as load_config does)."""
    from ..config import dataset_defaults

    ds_cfg = dataset_defaults(dict(ds_cfg))
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    source = ds_cfg.get("source")
    record: dict = {"dataset": name, "source": source}
    manifest = raw_dir / DOWNLOAD_JSON
    # until this fetch succeeds the folder's content is not what the old record says (a failed checksum sets
    # the file aside): no record, so nothing downstream reads the folder as downloaded
    manifest.unlink(missing_ok=True)
    if source == "derived":
        parent = ds_cfg.get("from")
        if not parent:
            raise DataError(f"dataset {name!r}: source 'derived' needs 'from: <scenes dataset>'")
        record.update({"from": parent, "files": []})
        write_json(manifest, record)
        return manifest

    if source == "synthetic":
        from .demo import synthesize_scenes

        if "seed" not in ds_cfg:
            raise DataError(f"dataset {name!r}: a synthetic source needs a 'seed' (run_download passes the study's)")
        files = synthesize_scenes(raw_dir, n_scenes=int(ds_cfg["n_scenes"]), size=int(ds_cfg["size"]),
                                  bands=int(ds_cfg["bands"]), seed=int(ds_cfg["seed"]))
        record["params"] = {k: ds_cfg.get(k) for k in ("n_scenes", "size", "bands", "seed") if k in ds_cfg}
    elif source == "local" or (source == "url" and ds_cfg.get("path")):
        if not ds_cfg.get("path"):
            raise DataError(f"dataset {name!r}: source 'local' needs 'path:'")
        src = Path(ds_cfg["path"]).expanduser()
        src = src if src.is_absolute() else Path.cwd() / src
        link, info = _link_local(src.resolve(), raw_dir)
        record["origin"] = str(src.resolve())
        record["linked"] = True
        if source == "url":
            record["url"] = ds_cfg.get("url")
        if info:  # a tree: counted, not hashed
            record["files"] = [{"path": link.name, **info}]
            _set_aside_stale(raw_dir, {link.name})
            write_json(manifest, record)
            return manifest
        _verify_checksums(link, ds_cfg)
        files = [link]
    elif source == "url":
        files, used = _fetch_url(ds_cfg, raw_dir)
        record["url"] = used
        _verify_checksums(files[0], ds_cfg)
    else:
        raise DataError(f"dataset {name!r}: unknown source {source!r} (synthetic, local, url, derived)")

    record["files"] = [{"path": f.relative_to(raw_dir).as_posix(), "sha256": sha256_file(f),
                        "bytes": f.stat().st_size} for f in sorted(files)]
    _set_aside_stale(raw_dir, {f.relative_to(raw_dir).parts[0] for f in files})
    write_json(manifest, record)
    return manifest


def _set_aside_stale(raw_dir: Path, keep: set[str]) -> None:
    """What an earlier download left in ``raw_dir`` and this one did not write (another local path, another
    URL's file, surplus synthetic scenes): the tile stage reads the whole folder, so it would tile them too.
    Links go (the data they point at stays where it is); files and folders are moved to
    ``<raw_dir>.aside-<time>-<unique>/``, never deleted, with a line on stderr naming it."""
    aside = None
    for p in sorted(raw_dir.iterdir()):
        if p.name in keep or p.name == DOWNLOAD_JSON or p.name.startswith("."):
            continue
        if p.is_symlink():
            p.unlink()
            continue
        if aside is None:  # a new folder each time: nothing set aside earlier is overwritten
            import tempfile

            aside = Path(tempfile.mkdtemp(prefix=f"{raw_dir.name}.aside-{time.strftime('%Y%m%dT%H%M%S')}-",
                                          dir=raw_dir.parent))
        os.replace(p, aside / p.name)
    if aside is not None:
        print(f"geofm download: moved what an earlier download left in {raw_dir} (not part of this one) to "
              f"{aside}", file=sys.stderr)
