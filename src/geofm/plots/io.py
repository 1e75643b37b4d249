"""Atomic writers shared by the evaluate and figures stages (tmp file in the same folder, then
``os.replace``), so a crashed run never leaves a half-written output that Snakemake would trust."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def write_json(path, obj) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n")
    os.replace(tmp, path)
    return path


def write_csv(path, df: pd.DataFrame, index: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    df.to_csv(tmp, index=index)
    os.replace(tmp, path)
    return path


def save_figure(fig, path, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically (format from the final suffix) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path
