"""Drawing helpers shared by the figures: the returned :class:`Plotted`, grouped bars, the "no data" panel,
merged legends and the footer stamp. Matplotlib runs headless (Agg)."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


@dataclass
class Plotted:
    """What a figure function drew: its file, the exact data frame drawn (with a ``source`` column where two
    sources meet) and its legend labels, so tests and callers can check the drawing against its inputs."""

    path: Path
    data: pd.DataFrame
    labels: list[str] = field(default_factory=list)


def no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no data\n{what}", ha="center", va="center", transform=ax.transAxes, fontsize=11,
            color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])


def legend_labels(fig) -> list[str]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return [t.get_text() for leg in legends for t in leg.get_texts()]


def merged_legend_entries(axes) -> tuple[list, list[str]]:
    """(handles, labels) of all ``axes``, each label once (first handle wins), for one figure legend."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    return handles, labels


def stamp(fig, text: str) -> None:
    fig.text(0.01, -0.01, text, ha="left", va="top", fontsize=7, color="0.4")


def today() -> str:
    return _dt.datetime.now().strftime("%Y-%m-%d %H:%M")


def hardware_note(prof: pd.DataFrame) -> str:
    """Devices and measurement times recorded in the profile rows (for the footer); "" when none."""
    bits = []
    for col in ("device", "device_name", "hardware", "hostname"):
        if col in prof.columns:
            vals = sorted({str(v) for v in prof[col].dropna()})
            if vals:
                bits.append(f"{col}: {', '.join(vals[:4])}")
    for col in ("timestamp", "date", "time"):
        if col in prof.columns:
            vals = sorted(str(v) for v in prof[col].dropna())
            if vals:
                bits.append(f"measured {vals[0]} … {vals[-1]}" if len(vals) > 1 else f"measured {vals[0]}")
                break
    return "; ".join(bits)


def grouped_bars(ax, df: pd.DataFrame, x: str, hue: str, y: str, *, x_order, hue_order, yerr: str | None = None,
                 palette=None, label_prefix: str = "") -> dict:
    """Grouped bars; returns ``{(x, hue): bar centre}`` so other series can be overlaid. A missing or NaN
    ``y`` leaves its slot empty; a missing or NaN ``yerr`` draws no error bar."""
    n = max(1, len(hue_order))
    width = 0.8 / n
    colors = palette or dict(zip(hue_order, sns.color_palette("tab10", n)))
    centres = {}
    for j, h in enumerate(hue_order):
        sub = df[df[hue] == h]
        xs, ys, es = [], [], []
        for i, xv in enumerate(x_order):
            pos = i - 0.4 + width * (j + 0.5)
            centres[(xv, h)] = pos
            r = sub[sub[x] == xv]
            if len(r) and pd.notna(r[y].iloc[0]):
                xs.append(pos)
                ys.append(float(r[y].iloc[0]))
                es.append(float(r[yerr].iloc[0]) if yerr and yerr in r and pd.notna(r[yerr].iloc[0]) else 0.0)
        if xs:
            ax.bar(xs, ys, width=width * 0.95, color=colors[h], label=f"{label_prefix}{h}",
                   yerr=es if yerr else None, capsize=2 if yerr else 0)
    ax.set_xlim(-0.5, len(x_order) - 0.5)
    ax.set_xticks(range(len(x_order)))
    ax.set_xticklabels(x_order, rotation=30, ha="right")
    return centres
