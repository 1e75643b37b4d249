"""Atomic writers: every output is written to a temporary file in its own folder, then ``os.replace``-d onto
its name, so a crashed or killed job never leaves a half-written file that Snakemake (or a resume) would
trust. The one place that does this; everything else calls these functions."""
from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Iterator


def tmp_path(path: Path) -> Path:
    """The temporary name used for ``path`` (same folder, hidden, unique per process and host: Slurm jobs on
    several nodes may write the same file of a shared file system at once, e.g. the workflow's merged config)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path, mkdir: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            if tmp.is_dir() and not tmp.is_symlink():
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


def write_bytes(path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path, obj, indent: int | None = 2, sort_keys: bool = False, newline: bool = True, **kw) -> Path:
    """JSON (NaN allowed, as Python writes it), indented by default, with a final newline."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=True, **kw)
    return write_text(path, text + ("\n" if newline else ""))


def write_csv(path, df, index: bool = False, **kw) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=index, **kw)
    return Path(path)


def save_torch(path, obj) -> Path:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_numpy(path, array) -> Path:
    """``np.save`` to exactly ``path`` (the temporary name is given a file object, so no ``.npy`` is appended)."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
    return Path(path)


def save_figure(fig, path, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically (format from the final suffix) and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return Path(path)
