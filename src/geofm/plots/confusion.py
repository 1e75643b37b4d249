"""Confusion-matrix table and heat map (written by the evaluate stage beside its JSON)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from geofm.common.io import save_figure, write_csv


def confusion_frame(cm: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Rows = true class, columns = predicted class, both labelled by class name."""
    cm = np.asarray(cm)
    df = pd.DataFrame(cm, index=pd.Index(list(classes), name="true"), columns=list(classes))
    df.columns.name = "predicted"
    return df


def write_confusion(cm: np.ndarray, classes: Sequence[str], csv_path, png_path, title: str = "") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = confusion_frame(cm, classes)
    out = [write_csv(csv_path, df, index=True)]
    n = len(classes)
    size = min(16.0, max(4.0, 0.45 * n + 2.5))
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    rows = df.sum(axis=1).replace(0, 1)
    frac = df.div(rows, axis=0)  # row-normalised: the diagonal is per-class recall
    sns.heatmap(frac, ax=ax, vmin=0, vmax=1, cmap="viridis", square=True,
                annot=df.values if n <= 12 else False, fmt="d", cbar_kws={"label": "fraction of true class"})
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    out.append(save_figure(fig, png_path))
    return out
