"""The figures stage: ``results/figures/*.png`` and ``results/tables/*.csv``.

Inputs (all optional: a missing input gives a figure with a "no data" note, never a missing file):

- ``{results}/eval/{protocol}/{model}/{dataset}.json`` (evaluate stage)
- ``{results}/pretrain/{model}/metrics.jsonl`` (pretrain stage; ``step, loss, lr, images_per_s, ...``)
- ``{results}/profile/{model}/{strategy}/{nodes}n.json`` (profile stage, base variant) and
  ``{nodes}n.{variant}.json`` (its variants: prefetch, compile, activation checkpointing, data, precision)
- the paper's published Frontier measurements, ``geofm/plots/reference/*.csv`` (series ``"paper"``)

Every number drawn comes from these files; the plotting code holds none. Each ``plot_*`` function
returns a :class:`Plotted` (path, the exact data frame drawn with a ``source`` column where two sources
meet, and the legend labels) so tests and callers can check what was drawn.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from geofm.plots.io import save_figure, write_csv  # noqa: E402

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
PAPER = "paper"
PROJECT = "this project"
PLAN = "plan"
PAPER_CITATION = "Tsaris et al., IPDPSW 2024 (OLCF Frontier, MI250X)"

FIGURE_FILES = {
    "accuracy_vs_size": "accuracy_vs_size.png",
    "loss_curves": "loss_curves.png",
    "throughput_per_strategy": "throughput_per_strategy.png",
    "peak_memory": "peak_memory.png",
    "paper_weak_scaling": "paper_weak_scaling.png",
    "paper_peak_memory": "paper_peak_memory.png",
    "paper_prefetch_vit5b": "paper_prefetch_vit5b.png",
    "prefetch_comparison": "prefetch_comparison.png",
    "compile_ac_comparison": "compile_ac_comparison.png",
    "plan_weak_scaling": "plan_weak_scaling.png",
}
TABLE_FILES = {
    "accuracy": "accuracy.csv",
    "profile": "profile.csv",
    "best_strategy": "best_strategy.csv",
    "weak_scaling_efficiency": "weak_scaling_efficiency.csv",
}
REFERENCE_FILES = {
    "weak_scaling": "frontier_weak_scaling_ips.csv",
    "peak_memory": "frontier_peak_memory_gb.csv",
    "prefetch": "frontier_prefetch_vit5b_8nodes_ips.csv",
}


@dataclass
class Plotted:
    path: Path
    data: pd.DataFrame
    labels: list[str] = field(default_factory=list)


def _warn(msg: str) -> None:
    print(f"geofm figures: {msg}", file=sys.stderr)


# --------------------------------------------------------------------------- names
def display(model: str) -> str:
    """Registry display name (``vit_3b`` → ``ViT-3B``); unknown names pass through."""
    try:
        from geofm.models.registry import display_name

        return display_name(model)
    except (KeyError, ImportError):
        return str(model)


def param_count(model: str, image_size: int = 224, in_chans: int = 3) -> float:
    try:
        from geofm.models.registry import count_params

        return float(count_params(model, image_size=image_size, in_chans=in_chans))
    except (KeyError, ImportError, ValueError):
        return float("nan")


_HYBRID = re.compile(r"^HYBRID_(\d+)GPUS?$", re.IGNORECASE)


def canonical_strategy(name: str) -> str:
    """``HYBRID_1GPUs``/``hybrid_2gpu`` → ``HYBRID_1GPU``/``HYBRID_2GPUs`` (the paper's spelling)."""
    s = str(name).strip()
    m = _HYBRID.match(s)
    if m:
        k = int(m.group(1))
        return f"HYBRID_{k}GPU" + ("s" if k > 1 else "")
    return s.upper()


def _strategy_order(names) -> list[str]:
    def key(s):
        m = _HYBRID.match(s)
        base = ["DDP", "NO_SHARD", "SHARD_GRAD_OP", "FULL_SHARD"]
        return (len(base), int(m.group(1))) if m else (base.index(s) if s in base else len(base) + 1, 0)

    return sorted(set(names), key=key)


def _model_order(names) -> list[str]:
    """Display names ordered by registry parameter count (unknown names last, alphabetical)."""
    try:
        from geofm.models.registry import MODELS, count_params

        size = {spec.display: count_params(k) for k, spec in MODELS.items()}
    except ImportError:
        size = {}
    return sorted(set(names), key=lambda n: (size.get(n, float("inf")), n))


# --------------------------------------------------------------------------- loaders
def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        _warn(f"skipping unreadable {path}: {e}")
        return None


def load_eval_results(results) -> pd.DataFrame:
    """One row per (protocol, model, dataset, init) from ``eval/*/*/*.json``."""
    rows = []
    for path in sorted(Path(results).glob("eval/*/*/*.json")):
        rec = _read_json(path)
        if not isinstance(rec, dict) or "pretrained" not in rec:
            continue
        settings = rec.get("settings") or {}
        model = rec.get("model", path.parent.name)
        image_size = int(settings.get("image_size") or 224)
        in_chans = int(settings.get("in_chans") or 3)
        for init, label in (("pretrained", "pretrained"), ("random_init", "random init")):
            r = rec.get(init)
            if not isinstance(r, dict):
                continue
            rows.append({
                "protocol": rec.get("protocol", path.parent.parent.name), "model": model,
                "display_name": display(model), "params": param_count(model, image_size, in_chans),
                "dataset": rec.get("dataset", path.stem), "init": label,
                "top1": r.get("top1"), "top5": r.get("top5"), "n_train": r.get("n_train"),
                "n_test": r.get("n_test"), "checkpoint_step": rec.get("checkpoint_step"),
                "image_size": image_size, "path": str(path)})
    cols = ["protocol", "model", "display_name", "params", "dataset", "init", "top1", "top5", "n_train",
            "n_test", "checkpoint_step", "image_size", "path"]
    return pd.DataFrame(rows, columns=cols)


def load_pretrain_metrics(results) -> pd.DataFrame:
    """All ``pretrain/*/metrics.jsonl`` lines, with ``model`` and ``display_name`` columns."""
    frames = []
    for path in sorted(Path(results).glob("pretrain/*/metrics.jsonl")):
        rows, bad = [], 0
        try:
            lines = path.read_text().splitlines()
        except OSError as e:
            _warn(f"skipping unreadable {path}: {e}")
            continue
        for line in lines:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(rec, dict) and "step" in rec:
                rows.append(rec)
        if bad:
            _warn(f"{path}: skipped {bad} malformed line(s)")
        if rows:
            df = pd.DataFrame(rows)
            df["model"] = path.parent.name
            df["display_name"] = display(path.parent.name)
            frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["model", "display_name", "step", "loss"])
    return pd.concat(frames, ignore_index=True)


BASE_VARIANT = "base"
# the settings a profile variant may change (the profile JSON records them all, for every variant)
VARIANT_SETTINGS = ["backward_prefetch", "forward_prefetch", "compile", "activation_checkpointing", "data",
                    "precision"]
PROFILE_COLUMNS = ["model", "display_name", "strategy", "nodes", "variant", *VARIANT_SETTINGS, "world_size",
                   "images_per_s", "images_per_s_std", "tflops", "mfu", "peak_mem_gb", "peak_reserved_gb",
                   "comm_share", "status", "ok", "path"]
_PROFILE_FILE = re.compile(r"^(\d+)n(?:\.([a-z][a-z0-9_]*))?\.json$")


def load_profile(results) -> pd.DataFrame:
    """One row per ``profile/{model}/{strategy}/{nodes}n[.{variant}].json``; ``ok`` is ``status == "ok"``;
    ``variant`` is ``base`` for ``{nodes}n.json``."""
    rows = []
    for path in sorted(Path(results).glob("profile/*/*/*n*.json")):
        m = _PROFILE_FILE.match(path.name)
        if not m:
            continue
        rec = _read_json(path)
        if not isinstance(rec, dict):
            continue
        row = dict(rec)
        row.setdefault("model", path.parent.parent.name)
        row.setdefault("strategy", path.parent.name)
        row.setdefault("nodes", int(m.group(1)))
        row.setdefault("variant", m.group(2) or BASE_VARIANT)
        if isinstance(row.get("variant_settings"), dict):
            row["variant_settings"] = json.dumps(row["variant_settings"], sort_keys=True)
        row["strategy"] = canonical_strategy(row["strategy"])
        row["display_name"] = display(row["model"])
        row["status"] = str(row.get("status", "ok"))
        row["ok"] = row["status"] == "ok"
        row["path"] = str(path)
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in PROFILE_COLUMNS:
        if c not in df.columns:
            df[c] = pd.Series(dtype=object)
    extra = [c for c in df.columns if c not in PROFILE_COLUMNS]
    df = df[PROFILE_COLUMNS + extra]
    for c in ("nodes", "world_size", "images_per_s", "images_per_s_std", "tflops", "mfu", "peak_mem_gb",
              "peak_reserved_gb"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    if not len(df):
        return df
    df["variant"] = df["variant"].fillna(BASE_VARIANT).astype(str)
    df["_v"] = df["variant"] != BASE_VARIANT
    return df.sort_values(["display_name", "strategy", "nodes", "_v", "variant"], ignore_index=True).drop(columns="_v")


def base_variant(prof: pd.DataFrame) -> pd.DataFrame:
    """The base variant's runs only (the model × strategy × nodes grid without variants)."""
    if prof.empty or "variant" not in prof.columns:
        return prof
    return prof[prof["variant"].fillna(BASE_VARIANT) == BASE_VARIANT]


def load_reference(which: str, reference_dir=None) -> pd.DataFrame:
    """A published-measurement table (``weak_scaling | peak_memory | prefetch``), ``source="paper"``."""
    path = Path(reference_dir or REFERENCE_DIR) / REFERENCE_FILES[which]
    if not path.exists():
        _warn(f"reference table {path} missing")
        return pd.DataFrame()
    df = pd.read_csv(path)
    if "strategy" in df.columns:
        df["strategy"] = df["strategy"].map(canonical_strategy)
    df["source"] = PAPER
    return df


def prefetch_setting(reference_dir=None) -> tuple[str | None, int | None]:
    """(display model, nodes) of the prefetch study, parsed from its file name
    (``frontier_prefetch_vit5b_8nodes_ips.csv`` → ``("ViT-5B", 8)``)."""
    m = re.search(r"prefetch_([a-z0-9]+)_(\d+)nodes", REFERENCE_FILES["prefetch"])
    if not m:
        return None, None
    tag, nodes = m.group(1), int(m.group(2))
    try:
        from geofm.models.registry import MODELS

        for key, spec in MODELS.items():
            if key.replace("_", "") == tag:
                return spec.display, nodes
    except ImportError:
        pass
    return tag, nodes


def load_plan(results) -> pd.DataFrame:
    """``{results}/plan/plan.csv`` (``geofm plan``); empty when absent."""
    path = Path(results) / "plan" / "plan.csv"
    if not path.exists():
        return pd.DataFrame(columns=["model", "display_name", "strategy", "nodes", "images_per_s", "fits", "status"])
    df = pd.read_csv(path)
    df["strategy"] = df["strategy"].map(canonical_strategy)
    return df


def with_impossible_cells(prof: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """Add a row for every base-grid cell of ``cfg`` that has no profile result because the memory model kept
    it out of the DAG (``geofm.perf.plan.cell_feasibility``): its status says "impossible: needs ~X GB of Y"."""
    pr = (cfg or {}).get("profile") or {}
    if not pr.get("models"):
        return prof
    try:
        from geofm.perf.plan import cell_feasibility
    except ImportError:
        return prof
    have = set()
    if len(prof):
        b = base_variant(prof)
        have = {(m, canonical_strategy(st), int(n)) for m, st, n in zip(b["model"], b["strategy"], b["nodes"])}
    rows = []
    for m in pr["models"]:
        for st in pr["strategies"]:
            for n in pr["nodes"]:
                if (m, canonical_strategy(st), int(n)) in have:
                    continue
                status, need = cell_feasibility(cfg, m, st, int(n))
                if status != "ok":
                    rows.append({"model": m, "display_name": display(m), "strategy": canonical_strategy(st),
                                 "nodes": int(n), "variant": BASE_VARIANT, "status": status, "ok": False,
                                 "predicted_peak_mem_gb": need, "path": "not run (geofm plan: impossible)"})
    if not rows:
        return prof
    add = pd.DataFrame(rows)
    out = pd.concat([prof, add], ignore_index=True) if len(prof) else add
    for c in PROFILE_COLUMNS:
        if c not in out.columns:
            out[c] = pd.Series(dtype=object)
    out["ok"] = out["ok"].astype(bool)
    return out


# --------------------------------------------------------------------------- tables
def accuracy_table(ev: pd.DataFrame) -> pd.DataFrame:
    cols = ["protocol", "dataset", "model", "display_name", "params", "init", "top1", "top5", "n_train",
            "n_test", "checkpoint_step"]
    if ev.empty:
        return pd.DataFrame(columns=cols)
    return ev[cols].sort_values(["protocol", "dataset", "params", "model", "init"], ignore_index=True)


def best_strategy(prof: pd.DataFrame) -> pd.DataFrame:
    """Per (model, nodes): the strategy with the highest images/s among the base variant's runs whose
    status is ok (variants change more than the strategy, so they do not compete here)."""
    cols = ["model", "display_name", "nodes", "best_strategy", "images_per_s", "tflops", "mfu", "peak_mem_gb",
            "strategies_ok", "strategies_impossible"]
    prof = base_variant(prof)
    if prof.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (model, nodes), g in prof.groupby(["model", "nodes"], sort=True):
        ok = g[g["ok"] & g["images_per_s"].notna()]
        row = {"model": model, "display_name": display(model), "nodes": nodes,
               "strategies_ok": ";".join(_strategy_order(ok["strategy"])),
               "strategies_impossible": ";".join(_strategy_order(g.loc[~g["ok"], "strategy"]))}
        if len(ok):
            b = ok.loc[ok["images_per_s"].idxmax()]
            row.update(best_strategy=b["strategy"], images_per_s=b["images_per_s"], tflops=b["tflops"],
                       mfu=b["mfu"], peak_mem_gb=b["peak_mem_gb"])
        else:
            row.update(best_strategy=None, images_per_s=np.nan, tflops=np.nan, mfu=np.nan, peak_mem_gb=np.nan)
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def _project_scaling(prof: pd.DataFrame) -> pd.DataFrame:
    cols = ["source", "model", "strategy", "nodes", "images_per_s"]
    prof = base_variant(prof)
    if prof.empty:
        return pd.DataFrame(columns=cols)
    ok = prof[prof["ok"] & prof["images_per_s"].notna()].copy()
    ok["model"] = ok["display_name"]
    ok["source"] = PROJECT
    return ok[cols]


def weak_scaling_efficiency(paper_ws: pd.DataFrame, prof: pd.DataFrame) -> pd.DataFrame:
    """Per (source, model, strategy): images/s per node relative to the smallest node count measured.

    ``efficiency = (ips / nodes) / (ips_base / nodes_base)``; ``ideal_images_per_s = ips_base · nodes /
    nodes_base``. Models are display names (``ViT-3B``) for both sources.
    """
    cols = ["source", "model", "strategy", "nodes", "images_per_s", "base_nodes", "base_images_per_s",
            "ideal_images_per_s", "efficiency"]
    parts = []
    if not paper_ws.empty:
        parts.append(paper_ws.assign(source=PAPER)[["source", "model", "strategy", "nodes", "images_per_s"]])
    proj = _project_scaling(prof)
    if not proj.empty:
        parts.append(proj)
    if not parts:
        return pd.DataFrame(columns=cols)
    df = pd.concat(parts, ignore_index=True)
    df["nodes"] = pd.to_numeric(df["nodes"])
    df["images_per_s"] = pd.to_numeric(df["images_per_s"], errors="coerce")
    out = []
    for _, g in df.groupby(["source", "model", "strategy"], sort=False):
        g = g.sort_values("nodes")
        base = g.iloc[0]
        g = g.assign(base_nodes=base["nodes"], base_images_per_s=base["images_per_s"])
        g["ideal_images_per_s"] = g["base_images_per_s"] * g["nodes"] / g["base_nodes"]
        g["efficiency"] = g["images_per_s"] / g["ideal_images_per_s"]
        out.append(g)
    res = pd.concat(out, ignore_index=True)[cols]
    order = {m: i for i, m in enumerate(_model_order(res["model"]))}
    res["_m"] = res["model"].map(order)
    return res.sort_values(["source", "_m", "strategy", "nodes"], ignore_index=True).drop(columns="_m")


# --------------------------------------------------------------------------- drawing helpers
def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no data\n{what}", ha="center", va="center", transform=ax.transAxes, fontsize=11,
            color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])


def _legend_labels(fig) -> list[str]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return [t.get_text() for leg in legends for t in leg.get_texts()]


def _stamp(fig, text: str) -> None:
    fig.text(0.01, -0.01, text, ha="left", va="top", fontsize=7, color="0.4")


def _hardware_note(prof: pd.DataFrame) -> str:
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


def _today() -> str:
    return _dt.datetime.now().strftime("%Y-%m-%d %H:%M")


def _grouped_bars(ax, df: pd.DataFrame, x: str, hue: str, y: str, *, x_order, hue_order, yerr: str | None = None,
                  palette=None, label_prefix: str = "") -> dict:
    """Grouped bars; returns ``{(x, hue): bar centre}`` so other series can be overlaid."""
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


# --------------------------------------------------------------------------- figures
def plot_accuracy_vs_size(ev: pd.DataFrame, path) -> Plotted:
    """Top-1 vs encoder parameters (log x); hue = dataset, style = protocol · pretrained/random init."""
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    data = ev.dropna(subset=["top1", "params"]).copy() if not ev.empty else ev.copy()
    if data.empty:
        _no_data(ax, "no evaluation results (results/eval/*/*/*.json)")
    else:
        from matplotlib.lines import Line2D

        data = data.sort_values("params")
        hue_order = sorted(data["dataset"].unique())
        style_order = sorted(data["protocol"].unique())
        inits = [("pretrained", "-", 1.0), ("random init", "--", 0.55)]
        for init, ls, alpha in inits:
            sub = data[data["init"] == init]
            if len(sub):
                sns.lineplot(data=sub, x="params", y="top1", hue="dataset", hue_order=hue_order, style="protocol",
                             style_order=style_order, markers=True, dashes=False, linestyle=ls, alpha=alpha,
                             ax=ax, errorbar=None, legend=init == "pretrained" or not (data["init"] == "pretrained").any())
        handles, labels = ax.get_legend_handles_labels()
        for init, ls, alpha in inits:
            if (data["init"] == init).any():
                handles.append(Line2D([], [], color="0.3", linestyle=ls, alpha=alpha))
                labels.append(init)
        ax.set_xscale("log")
        ax.set_xlabel("encoder parameters")
        ax.set_ylabel("top-1 accuracy")
        ax.set_ylim(0, 1.02)
        for _, r in data.drop_duplicates("model").iterrows():
            ax.annotate(r["display_name"], (r["params"], 0.02), fontsize=7, rotation=90, ha="center",
                        va="bottom", color="0.4")
        ax.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("Scene classification accuracy vs model size (frozen encoder)")
    _stamp(fig, f"{PROJECT}; generated {_today()}")
    labels = _legend_labels(fig)
    return Plotted(save_figure(fig, path), data, labels)


def plot_loss_curves(metrics: pd.DataFrame, path) -> Plotted:
    """MAE reconstruction loss (and throughput when logged) vs step, one line per model."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    data = metrics.dropna(subset=["loss"]) if "loss" in metrics.columns and len(metrics) else metrics.iloc[0:0]
    if data.empty:
        for ax in axes:
            _no_data(ax, "no pretraining metrics (results/pretrain/*/metrics.jsonl)")
    else:
        order = _model_order(data["display_name"])
        sns.lineplot(data=data, x="step", y="loss", hue="display_name", hue_order=order, ax=axes[0],
                     errorbar=None)
        axes[0].set_title("MAE loss")
        axes[0].legend(title="model", fontsize=8)
        if "images_per_s" in data.columns and data["images_per_s"].notna().any():
            sns.lineplot(data=data.dropna(subset=["images_per_s"]), x="step", y="images_per_s",
                         hue="display_name", hue_order=order, ax=axes[1], errorbar=None, legend=False)
            axes[1].set_title("training throughput")
            axes[1].set_ylabel("images/s")
        else:
            _no_data(axes[1], "images_per_s not logged")
    fig.suptitle("Pretraining (this project)")
    _stamp(fig, f"{PROJECT}; generated {_today()}")
    return Plotted(save_figure(fig, path), data, _legend_labels(fig))


def _profile_bars(prof: pd.DataFrame, path, y: str, ylabel: str, title: str, yerr: str | None) -> Plotted:
    data = prof.copy()
    nodes = sorted(data["nodes"].dropna().unique()) if len(data) else []
    fig, axes = plt.subplots(1, max(1, len(nodes)), figsize=(max(6, 4.5 * len(nodes)), 4.5), squeeze=False,
                             layout="constrained")
    axes = axes[0]
    if not nodes:
        _no_data(axes[0], "no profile results (results/profile/*/*/*n.json)")
    else:
        strategies = _strategy_order(data["strategy"])
        palette = dict(zip(strategies, sns.color_palette("tab10", len(strategies))))
        for ax, n in zip(axes, nodes):
            sub = data[data["nodes"] == n]
            models = _model_order(sub["display_name"])
            okd = sub[sub["ok"]]
            centres = _grouped_bars(ax, okd, "display_name", "strategy", y, x_order=models, hue_order=strategies,
                                    yerr=yerr, palette=palette)
            for _, r in sub[~sub["ok"]].iterrows():  # impossible configurations: a marked slot
                ax.plot(centres[(r["display_name"], r["strategy"])], 0, marker="x", color="crimson",
                        markersize=8, clip_on=False, linestyle="none",
                        label="impossible (see profile.csv)")
            ax.set_title(f"{int(n)} node{'s' if n != 1 else ''}")
            ax.set_xlabel("model")
        axes[0].set_ylabel(ylabel)
        handles, labels = [], []
        for ax in axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        fig.legend(handles, labels, title="strategy", fontsize=8, loc="outside right center")
    fig.suptitle(title)
    note = _hardware_note(data)
    _stamp(fig, f"{PROJECT}; generated {_today()}" + (f"; {note}" if note else ""))
    return Plotted(save_figure(fig, path), data, _legend_labels(fig))


def plot_throughput_per_strategy(prof: pd.DataFrame, path) -> Plotted:
    return _profile_bars(prof, path, "images_per_s", "images/s", "Training throughput per sharding strategy "
                         "(this project)", "images_per_s_std")


def plot_peak_memory(prof: pd.DataFrame, path) -> Plotted:
    return _profile_bars(prof, path, "peak_mem_gb", "peak memory per device (GB)",
                         "Peak device memory per sharding strategy (this project)", None)


def plot_paper_weak_scaling(paper_ws: pd.DataFrame, prof: pd.DataFrame, path, plan: pd.DataFrame | None = None,
                            ) -> Plotted:
    """images/s vs nodes (log-log), a panel per paper model, a line per strategy, the ideal linear line
    from the best strategy at the smallest node count, and this project's measurements of the same
    models as black markers; with ``plan`` (``geofm plan``'s table) its predictions as a third series
    (dashed, × markers) for the strategies the paper measured."""
    proj = _project_scaling(prof)
    pl = pd.DataFrame(columns=["source", "model", "strategy", "nodes", "images_per_s"])
    if plan is not None and len(plan):
        q = plan[plan["fits"].astype(str).str.lower().isin(["true", "1"]) & plan["images_per_s"].notna()].copy()
        q["model"] = q["display_name"] if "display_name" in q.columns else q["model"].map(display)
        pl = q.assign(source=PLAN)[["source", "model", "strategy", "nodes", "images_per_s"]]
        if not paper_ws.empty:  # the strategies the paper measured per model
            keys = set(zip(paper_ws["model"], paper_ws["strategy"]))
            pl = pl[[k in keys for k in zip(pl["model"], pl["strategy"])]]
    if not paper_ws.empty:
        paper = paper_ws.assign(source=PAPER)[["source", "model", "strategy", "nodes", "images_per_s"]]
        models = _model_order(paper["model"])
        proj = proj[proj["model"].isin(models)]
    else:
        paper = pd.DataFrame(columns=["source", "model", "strategy", "nodes", "images_per_s"])
        models = _model_order(proj["model"])
    data = pd.concat([d for d in (paper, proj, pl) if len(d)], ignore_index=True) \
        if len(paper) or len(proj) or len(pl) else paper
    ncols = min(3, max(1, len(models)))
    nrows = max(1, int(np.ceil(len(models) / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.8 * nrows), squeeze=False,
                             layout="constrained")
    flat = axes.ravel()
    if data.empty:
        _no_data(flat[0], "no paper reference table and no profile results")
    strategies = _strategy_order(data["strategy"]) if len(data) else []
    palette = dict(zip(strategies, sns.color_palette("tab10", len(strategies))))
    for ax, model in zip(flat, models):
        p = paper[paper["model"] == model]
        for s in _strategy_order(p["strategy"]):
            g = p[p["strategy"] == s].sort_values("nodes")
            ax.plot(g["nodes"], g["images_per_s"], marker="o", markersize=3, color=palette[s], label=f"{PAPER}: {s}")
        if len(p):
            n0 = p["nodes"].min()
            base = p[p["nodes"] == n0]["images_per_s"].max()
            xs = np.array(sorted(p["nodes"].unique()), dtype=float)
            ax.plot(xs, base * xs / n0, color="0.3", linestyle="--", linewidth=1, label="ideal linear (paper)")
        q = proj[proj["model"] == model]
        for s in _strategy_order(q["strategy"]):
            g = q[q["strategy"] == s].sort_values("nodes")
            ax.plot(g["nodes"], g["images_per_s"], marker="*", markersize=10, linestyle=":", color="black",
                    markerfacecolor=palette.get(s, "black"), label=f"{PROJECT}: {s}")
        q = pl[pl["model"] == model]
        for s in _strategy_order(q["strategy"]):
            g = q[q["strategy"] == s].sort_values("nodes")
            ax.plot(g["nodes"], g["images_per_s"], marker="x", markersize=4, linestyle="--", linewidth=1,
                    color=palette.get(s, "0.5"), alpha=0.8, label=f"{PLAN}: {s}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(model)
        ax.set_xlabel("nodes")
        ax.set_ylabel("images/s")
    for ax in flat[len(models):]:
        ax.set_visible(False)
    handles, labels = [], []
    for ax in flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, fontsize=8, loc="outside right center")
    fig.suptitle("Weak scaling of MAE pretraining" + (": paper, this project and geofm plan's prediction"
                                                      if plan is not None else ""))
    note = f"{PAPER}: {PAPER_CITATION}"
    note += (f"; {PROJECT}: {len(proj)} measurement(s) of paper models" if len(proj)
             else f"; {PROJECT}: no profile of a paper model to overlay")
    if plan is not None:
        clusters = sorted({str(c) for c in plan.get("cluster", pd.Series(dtype=object)).dropna()})
        note += (f"; {PLAN}: geofm plan predictions ({', '.join(clusters)})" if len(pl)
                 else f"; {PLAN}: no prediction for these models")
    _stamp(fig, note + f"; generated {_today()}")
    return Plotted(save_figure(fig, path), data, _legend_labels(fig))


def plot_paper_peak_memory(paper_mem: pd.DataFrame, prof: pd.DataFrame, path) -> Plotted:
    """Peak active memory per GCD from the paper (bars), this project's peak memory per device for the
    same model and strategy as black markers (at its smallest node count)."""
    fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
    paper = pd.DataFrame(columns=["source", "model", "strategy", "peak_mem_gb"])
    if not paper_mem.empty:
        paper = paper_mem.rename(columns={"peak_active_memory_gb_per_gcd": "peak_mem_gb"}).assign(source=PAPER)[
            ["source", "model", "strategy", "peak_mem_gb"]]
    proj = pd.DataFrame(columns=["source", "model", "strategy", "peak_mem_gb", "nodes"])
    if not prof.empty:
        q = prof[prof["ok"] & prof["peak_mem_gb"].notna()]
        q = q.sort_values("nodes").drop_duplicates(["display_name", "strategy"])
        proj = q.assign(source=PROJECT, model=q["display_name"])[["source", "model", "strategy", "peak_mem_gb",
                                                                   "nodes"]]
        if len(paper):
            proj = proj[proj["model"].isin(set(paper["model"]))]
    data = pd.concat([d for d in (paper, proj) if len(d)], ignore_index=True) if len(paper) or len(proj) \
        else paper
    if data.empty:
        _no_data(ax, "no paper reference table and no profile results")
    else:
        models = _model_order(data["model"])
        strategies = _strategy_order(data["strategy"])
        centres = _grouped_bars(ax, paper, "model", "strategy", "peak_mem_gb", x_order=models,
                                hue_order=strategies, label_prefix=f"{PAPER}: ")
        first = True
        for _, r in proj.iterrows():
            ax.plot(centres[(r["model"], r["strategy"])], r["peak_mem_gb"], marker="D", color="black",
                    linestyle="none", markersize=6, label=PROJECT if first else None)
            first = False
        ax.set_ylabel("peak memory per GCD / device (GB)")
        ax.set_xlabel("model")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("Peak memory per sharding strategy")
    _stamp(fig, f"{PAPER}: {PAPER_CITATION} (per GCD); {PROJECT}: per device, smallest node count; "
                f"generated {_today()}")
    return Plotted(save_figure(fig, path), data, _legend_labels(fig))


def plot_paper_prefetch(paper_pf: pd.DataFrame, prof: pd.DataFrame, path, reference_dir=None) -> Plotted:
    """Paper: ViT-5B images/s per strategy under FSDP backward-prefetch / limit_all_gathers options.
    This project's own measurement of the same model, node count and strategy is overlaid (black marker,
    at the matching option when the profile JSON records ``backward_prefetch``/``limit_all_gathers``)."""
    model, nodes = prefetch_setting(reference_dir)
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    paper = pd.DataFrame(columns=["source", "strategy", "option", "images_per_s"])
    if not paper_pf.empty:
        paper = paper_pf.assign(
            option="prefetch=" + paper_pf["backward_prefetch"].astype(str) + ", limit_all_gathers="
                   + paper_pf["limit_all_gathers"].astype(str).str.lower())[
            ["source", "strategy", "option", "images_per_s", "backward_prefetch", "limit_all_gathers"]]
    proj = pd.DataFrame(columns=["source", "strategy", "option", "images_per_s"])
    if not prof.empty and model is not None:
        q = prof[prof["ok"] & (prof["display_name"] == model) & (prof["nodes"] == nodes)
                 & prof["images_per_s"].notna()]
        if len(q):
            opt = None
            if {"backward_prefetch", "limit_all_gathers"} <= set(q.columns):
                opt = ("prefetch=" + q["backward_prefetch"].astype(str) + ", limit_all_gathers="
                       + q["limit_all_gathers"].astype(str).str.lower())
            proj = q.assign(source=PROJECT, option=opt)[["source", "strategy", "option", "images_per_s"]]
    data = pd.concat([d for d in (paper, proj) if len(d)], ignore_index=True) if len(paper) or len(proj) \
        else paper
    if data.empty:
        _no_data(ax, "no prefetch reference table")
    else:
        strategies = _strategy_order(data["strategy"])
        options = list(dict.fromkeys(paper["option"])) if len(paper) else []
        palette = dict(zip(options, sns.color_palette("Paired", len(options))))
        centres = _grouped_bars(ax, paper, "strategy", "option", "images_per_s", x_order=strategies,
                                hue_order=options, palette=palette, label_prefix=f"{PAPER}: ")
        first = True
        for _, r in proj.iterrows():
            xpos = centres.get((r["strategy"], r["option"]), strategies.index(r["strategy"]))
            ax.plot(xpos, r["images_per_s"], marker="D", color="black", linestyle="none", markersize=7,
                    label=PROJECT if first else None)
            first = False
        ax.set_ylabel("images/s")
        ax.set_xlabel("strategy")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(f"FSDP prefetch options, {model or '?'} on {nodes or '?'} nodes")
    _stamp(fig, f"{PAPER}: {PAPER_CITATION}; generated {_today()}")
    return Plotted(save_figure(fig, path), data, _legend_labels(fig))


# --------------------------------------------------------------------------- profile variants
PAPER_NO_PREFETCH = "NONE"
# settings that must match for two runs to differ "only in prefetch"
_PREFETCH_PEERS = ["model", "strategy", "nodes", "forward_prefetch", "compile", "activation_checkpointing", "data",
                   "precision"]


def prefetch_option(backward_prefetch) -> str:
    """This project's FSDP2 backward-prefetch depth, named against the paper's FSDP1 options."""
    try:
        k = int(backward_prefetch)
    except (TypeError, ValueError):
        return f"backward_prefetch={backward_prefetch}"
    if k == 0:
        return "backward_prefetch=0 (none, ~NONE)"
    if k == 1:
        return "backward_prefetch=1 (FSDP2 implicit, ~BACKWARD_PRE)"
    return f"backward_prefetch={k} (explicit, no paper counterpart)"


def prefetch_relative(paper_pf: pd.DataFrame, prof: pd.DataFrame, reference_dir=None) -> pd.DataFrame:
    """images/s of each prefetch option relative to the *same source's* no-prefetch run of the same cell.

    Paper: per (strategy, limit_all_gathers), relative to ``backward_prefetch=NONE``. This project: per
    cell (model, strategy, nodes and every other setting equal), relative to ``backward_prefetch=0``; cells
    without a no-prefetch run have no baseline and are left out. Different hardware, same ratio.
    """
    cols = ["source", "model", "nodes", "strategy", "option", "limit_all_gathers", "variant", "images_per_s",
            "baseline_images_per_s", "relative"]
    parts = []
    model, nodes = prefetch_setting(reference_dir)
    if not paper_pf.empty:
        pp = paper_pf.copy()
        pp["limit_all_gathers"] = pp["limit_all_gathers"].astype(str).str.lower()
        pp["images_per_s"] = pd.to_numeric(pp["images_per_s"], errors="coerce")
        for (strat, lag), g in pp.groupby(["strategy", "limit_all_gathers"], sort=False):
            base = g[g["backward_prefetch"].astype(str).str.upper() == PAPER_NO_PREFETCH]["images_per_s"]
            if base.empty:
                continue
            b = float(base.iloc[0])
            for _, r in g.iterrows():
                parts.append({"source": PAPER, "model": model, "nodes": nodes, "strategy": strat,
                              "option": str(r["backward_prefetch"]), "limit_all_gathers": lag, "variant": None,
                              "images_per_s": r["images_per_s"], "baseline_images_per_s": b,
                              "relative": r["images_per_s"] / b})
    if not prof.empty and "backward_prefetch" in prof.columns:
        q = prof[prof["ok"] & prof["images_per_s"].notna()].copy()
        q["bp"] = pd.to_numeric(q["backward_prefetch"], errors="coerce")
        q = q[q["bp"].notna()]
        for c in _PREFETCH_PEERS:
            if c not in q.columns:
                q[c] = None
        q["_cell"] = ["|".join(map(str, t)) for t in q[_PREFETCH_PEERS].itertuples(index=False)]
        for _, g in q.groupby("_cell", sort=True):
            base = g[g["bp"] == 0]
            if base.empty or len(g) < 2:
                continue
            b = float(base["images_per_s"].iloc[0])
            for _, r in g.sort_values("bp").iterrows():
                parts.append({"source": PROJECT, "model": r["display_name"], "nodes": r["nodes"],
                              "strategy": r["strategy"], "option": prefetch_option(r["bp"]),
                              "limit_all_gathers": None, "variant": r.get("variant"),
                              "images_per_s": r["images_per_s"], "baseline_images_per_s": b,
                              "relative": r["images_per_s"] / b})
    return pd.DataFrame(parts, columns=cols)


def plot_prefetch_comparison(paper_pf: pd.DataFrame, prof: pd.DataFrame, path, reference_dir=None) -> Plotted:
    """Backward prefetch vs none, as a speed-up over each source's own no-prefetch baseline: the paper's
    FSDP1 options (bars, ViT-5B on 8 Frontier nodes) and this project's FSDP2 prefetch depths (markers,
    whatever model and node count it profiled with a ``backward_prefetch: 0`` variant)."""
    data = prefetch_relative(paper_pf, prof, reference_dir)
    fig, ax = plt.subplots(figsize=(9.5, 4.8), layout="constrained")
    paper = data[data["source"] == PAPER]
    paper = paper[paper["option"].str.upper() != PAPER_NO_PREFETCH].copy()
    proj = data[data["source"] == PROJECT]
    proj = proj[proj["option"] != prefetch_option(0)]
    if paper.empty and proj.empty:
        _no_data(ax, "no paper prefetch table and no profile with a backward_prefetch: 0 variant")
    else:
        strategies = _strategy_order(list(paper["strategy"]) + list(proj["strategy"]))
        paper["series"] = paper["option"] + ", limit_all_gathers=" + paper["limit_all_gathers"].astype(str)
        options = list(dict.fromkeys(paper["series"]))
        palette = dict(zip(options, sns.color_palette("Paired", len(options))))
        _grouped_bars(ax, paper, "strategy", "series", "relative", x_order=strategies, hue_order=options,
                      palette=palette, label_prefix=f"{PAPER}: ")
        markers = ["D", "o", "^", "s", "v", "P"]
        pm = {o: markers[i % len(markers)] for i, o in enumerate(dict.fromkeys(proj["option"]))}
        cells = list(dict.fromkeys(proj["model"].astype(str) + ", " + proj["nodes"].astype(int).astype(str) + " node(s)"))
        colors = dict(zip(cells, ["black", "dimgray", "saddlebrown", "purple", "teal"] * 4))
        seen = set()
        for _, r in proj.iterrows():
            cell = f"{r['model']}, {int(r['nodes'])} node(s)"
            lab = f"{PROJECT}: {cell}, {r['option']}"
            ax.plot(strategies.index(r["strategy"]), r["relative"], marker=pm[r["option"]], color=colors[cell],
                    linestyle="none", markersize=8, label=None if lab in seen else lab)
            seen.add(lab)
        ax.axhline(1.0, color="0.3", linestyle="--", linewidth=1, label="no prefetch (each source's own baseline)")
        ax.set_ylabel("images/s relative to no prefetch")
        ax.set_xlabel("strategy")
        lo = float(np.nanmin(np.r_[paper["relative"].to_numpy(float), proj["relative"].to_numpy(float), 1.0]))
        hi = float(np.nanmax(np.r_[paper["relative"].to_numpy(float), proj["relative"].to_numpy(float), 1.0]))
        pad = max(0.05, (hi - lo) * 0.15)
        ax.set_ylim(max(0.0, lo - pad), hi + pad)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    model, nodes = prefetch_setting(reference_dir)
    ax.set_title(f"Backward prefetch vs none (paper: {model or '?'} on {nodes or '?'} nodes, FSDP1; "
                 f"{PROJECT}: FSDP2)")
    note = _hardware_note(base_variant(prof)) if not prof.empty else ""
    _stamp(fig, f"{PAPER}: {PAPER_CITATION}; {PROJECT}: " + (note or "no prefetch variants profiled")
           + f"; generated {_today()}")
    return Plotted(save_figure(fig, path), data, _legend_labels(fig))


def _variant_label(r) -> str:
    if r["variant"] == BASE_VARIANT:
        return BASE_VARIANT
    try:
        own = json.loads(r["variant_settings"]) if isinstance(r.get("variant_settings"), str) else {}
    except ValueError:
        own = {}
    bits = ", ".join(f"{k}={v}" for k, v in own.items())
    return f"{r['variant']} ({bits})" if bits else str(r["variant"])


def variant_comparison(prof: pd.DataFrame) -> pd.DataFrame:
    """Rows of the cells (model, strategy, nodes) that were profiled under more than one variant."""
    cols = ["cell", "model", "display_name", "strategy", "nodes", "variant", "variant_label", "images_per_s",
            "images_per_s_std", "peak_mem_gb", "peak_reserved_gb", "comm_share", "status", "ok"]
    if prof.empty or "variant" not in prof.columns:
        return pd.DataFrame(columns=cols)
    d = prof.copy()
    d["cell"] = [f"{m} {st} {int(n)}n" if pd.notna(n) else f"{m} {st}"
                 for m, st, n in zip(d["display_name"], d["strategy"], d["nodes"])]
    n = d.groupby("cell")["variant"].transform("nunique")
    d = d[n > 1].copy()
    if d.empty:
        return pd.DataFrame(columns=cols)
    if "variant_settings" not in d.columns:
        d["variant_settings"] = None
    d["variant_label"] = d.apply(_variant_label, axis=1)
    for c in cols:
        if c not in d.columns:
            d[c] = None
    return d[cols].reset_index(drop=True)


def plot_compile_ac_comparison(prof: pd.DataFrame, path) -> Plotted:
    """images/s (median, ± std) and peak memory per device for every variant of the cells profiled under
    more than one (compile, activation checkpointing, prefetch, data, precision); impossible runs as ×."""
    data = variant_comparison(prof)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    if data.empty:
        for ax in axes:
            _no_data(ax, "no cell profiled under more than one variant (profile.variants)")
    else:
        labels = list(dict.fromkeys(data.sort_values("variant", key=lambda v: v != BASE_VARIANT)["variant_label"]))
        cells = list(dict.fromkeys(data["cell"]))
        palette = dict(zip(labels, sns.color_palette("tab10", len(labels))))
        okd = data[data["ok"].astype(bool)]
        for ax, y, yl, err in ((axes[0], "images_per_s", "images/s", "images_per_s_std"),
                               (axes[1], "peak_mem_gb", "peak memory per device (GB)", None)):
            centres = _grouped_bars(ax, okd, "cell", "variant_label", y, x_order=cells, hue_order=labels,
                                    yerr=err, palette=palette)
            for _, r in data[~data["ok"].astype(bool)].iterrows():
                ax.plot(centres[(r["cell"], r["variant_label"])], 0, marker="x", color="crimson", markersize=8,
                        clip_on=False, linestyle="none", label="impossible (see profile.csv)")
            ax.set_ylabel(yl)
            ax.set_xlabel("model, strategy, nodes")
        axes[0].set_title("throughput per variant")
        axes[1].set_title("peak memory per variant")
        handles, labs = [], []
        for ax in axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labs:
                    handles.append(h)
                    labs.append(lab)
        fig.legend(handles, labs, title="variant", fontsize=8, loc="outside right center")
    fig.suptitle("Profile variants: torch.compile, activation checkpointing, prefetch, data (this project)")
    note = _hardware_note(prof) if not prof.empty else ""
    _stamp(fig, f"{PROJECT}; generated {_today()}" + (f"; {note}" if note else ""))
    return Plotted(save_figure(fig, path), data, _legend_labels(fig))


# --------------------------------------------------------------------------- stage entry point
def run_figures(cfg: dict, out_dir_figures, out_dir_tables, reference_dir=None) -> list[Path]:
    """Write every figure of :data:`FIGURE_FILES` and table of :data:`TABLE_FILES`; returns their paths."""
    results = Path(cfg.get("results", "results"))
    figs, tabs = Path(out_dir_figures), Path(out_dir_tables)
    sns.set_theme(style="whitegrid", context="paper")
    ev = load_eval_results(results)
    metrics = load_pretrain_metrics(results)
    prof = with_impossible_cells(load_profile(results), cfg)
    plan = load_plan(results)
    paper_ws = load_reference("weak_scaling", reference_dir)
    paper_mem = load_reference("peak_memory", reference_dir)
    paper_pf = load_reference("prefetch", reference_dir)
    base = base_variant(prof)

    written = [
        write_csv(tabs / TABLE_FILES["accuracy"], accuracy_table(ev)),
        write_csv(tabs / TABLE_FILES["profile"], prof.drop(columns=["ok"]) if "ok" in prof.columns else prof),
        write_csv(tabs / TABLE_FILES["best_strategy"], best_strategy(prof)),
        write_csv(tabs / TABLE_FILES["weak_scaling_efficiency"], weak_scaling_efficiency(paper_ws, prof)),
    ]
    jobs = [
        ("accuracy_vs_size", lambda p: plot_accuracy_vs_size(ev, p)),
        ("loss_curves", lambda p: plot_loss_curves(metrics, p)),
        ("throughput_per_strategy", lambda p: plot_throughput_per_strategy(base, p)),
        ("peak_memory", lambda p: plot_peak_memory(base, p)),
        ("paper_weak_scaling", lambda p: plot_paper_weak_scaling(paper_ws, base, p)),
        ("paper_peak_memory", lambda p: plot_paper_peak_memory(paper_mem, base, p)),
        ("paper_prefetch_vit5b", lambda p: plot_paper_prefetch(paper_pf, base, p, reference_dir)),
        ("prefetch_comparison", lambda p: plot_prefetch_comparison(paper_pf, prof, p, reference_dir)),
        ("compile_ac_comparison", lambda p: plot_compile_ac_comparison(prof, p)),
        ("plan_weak_scaling", lambda p: plot_paper_weak_scaling(paper_ws, base, p, plan)),
    ]
    for name, fn in jobs:
        written.append(fn(figs / FIGURE_FILES[name]).path)
    return written
