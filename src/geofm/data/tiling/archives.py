"""Raw inputs: walking a raw directory (directory links followed) and extracting archives safely.

Zip members are checked before anything is written (no absolute paths, no ``..``, no drive letters, no
links, a size limit); ``.rar`` archives go through an external tool (Python has no RAR decoder), with the
member names checked first where the tool can list them, and every extracted link removed.
"""
from __future__ import annotations

import os
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from .. import DataError

ARCHIVE_SUFFIXES = (".zip", ".rar")
RAR_TOOLS = ("bsdtar", "7z", "unrar")


def walk(root: Path):
    """Every path under ``root``, following directory links (a by-hand dataset is linked into raw_dir;
    ``Path.rglob`` does not descend into links before Python 3.13)."""
    for d, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for n in sorted(dirs + files):
            yield Path(d) / n


def rel(p: Path, root: Path) -> str:
    """``p`` relative to ``root`` (POSIX), or ``p`` itself when outside it."""
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def _unsafe(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts


def safe_extract(zip_path, dest, max_bytes: float | None = None) -> Path:
    """Extract ``zip_path`` into ``dest`` refusing absolute paths, ``..``, links and archives that would
    extract to more than ``max_bytes`` (None: the schema's ``max_extract_bytes`` default)."""
    if max_bytes is None:
        from ...config import dataset_default

        max_bytes = float(dataset_default("max_extract_bytes"))
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{zip_path} is not a readable zip archive: {e}") from e
    with zf:
        infos = zf.infolist()
        total = sum(i.file_size for i in infos)
        if total > max_bytes:
            raise DataError(f"{zip_path} would extract to {total} bytes (> limit {int(max_bytes)})")
        for info in infos:
            name = info.filename.replace("\\", "/")
            parts = PurePosixPath(name).parts
            if _unsafe(name):
                raise DataError(f"unsafe path {info.filename!r} in {zip_path}")
            if stat.S_ISLNK(info.external_attr >> 16):
                continue  # never materialise symlinks from archives
            target = dest.joinpath(*parts) if parts else dest
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
                target.unlink(missing_ok=True)
                raise DataError(f"{zip_path} is damaged: member {info.filename!r} does not decompress ({e}); "
                                "fetch the archive again") from None
    return dest


def extract_rar(path: Path, dest: Path) -> Path:
    """Extract a .rar with an external tool (bsdtar, 7z or unrar, the first on PATH): Python has no RAR decoder.

    With bsdtar the member names are checked first (no absolute paths, no ``..``), and bsdtar itself refuses
    to write through symlinks; any symlink that is extracted is removed afterwards.
    """
    import subprocess

    dest.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LC_ALL": os.environ.get("LC_ALL") or "C.UTF-8"}  # non-ASCII member names
    for tool in RAR_TOOLS:
        exe = shutil.which(tool)
        if not exe:
            continue
        if tool == "bsdtar":
            res = subprocess.run([exe, "-tf", str(path)], capture_output=True, text=True, env=env)
            if res.returncode != 0:
                raise DataError(f"bsdtar cannot read {path}: {res.stderr.strip()[-500:]}")
            for name in res.stdout.splitlines():
                if _unsafe(name):
                    raise DataError(f"unsafe path {name!r} in {path}")
            cmd = [exe, "-xf", str(path), "-C", str(dest)]
        elif tool == "7z":
            cmd = [exe, "x", "-y", f"-o{dest}", str(path)]
        else:
            cmd = [exe, "x", "-o+", str(path), str(dest) + "/"]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        finally:
            for p in sorted(dest.rglob("*"), reverse=True):  # as safe_extract: no links survive, even on failure
                if p.is_symlink():
                    p.unlink()
        if res.returncode != 0:
            raise DataError(f"{tool} failed to extract {path}: {(res.stderr or res.stdout).strip()[-500:]}")
        return dest
    raise DataError(f"cannot extract {path}: no RAR extractor found on PATH (tried {', '.join(RAR_TOOLS)}); "
                    "install bsdtar (Debian/Ubuntu: apt-get install libarchive-tools), 7z (p7zip-full) or unrar")


def extract_archives(raw_dir: Path, scratch: Path, max_bytes: float) -> list[tuple[str, Path]]:
    """Extract the archives under ``raw_dir`` (zip, rar; directory links followed) into ``scratch``:
    ``(archive name, folder)`` each, or ``[("", raw_dir)]`` when there is none."""
    archives = sorted(p for p in walk(raw_dir) if p.is_file() and p.suffix.lower() in ARCHIVE_SUFFIXES)
    roots = []
    for i, z in enumerate(archives):
        dest = scratch / f"_extract{i}"
        if z.suffix.lower() == ".zip":
            safe_extract(z, dest, max_bytes)
        else:
            extract_rar(z, dest)
        roots.append((z.name, dest))
    return roots or [("", raw_dir)]
