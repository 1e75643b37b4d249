"""The figures stage: every output of :mod:`geofm.plots.registry` (``results/figures/*.png`` and
``results/tables/*.csv``) from the inputs it names.

Inputs (all optional: a missing input gives a figure with a "no data" note, never a missing file), read by
:mod:`geofm.plots.readers`:

- ``{results}/eval/{protocol}/{model}/{dataset}.json`` (evaluate stage)
- ``{results}/pretrain/{model}/metrics.jsonl`` (pretrain stage; ``step, loss, lr, images_per_s, ...``)
- ``{results}/profile/{model}/{strategy}/{nodes}n.json`` (profile stage, base variant) and
  ``{nodes}n.{variant}.json`` (its variants: prefetch, compile, activation checkpointing, data, precision)
- ``{results}/plan/plan.csv`` (``geofm plan``)
- the paper's published Frontier measurements, ``geofm/plots/reference/*.csv`` (series ``"paper"``)

Every number drawn comes from these files, through the pure-pandas :mod:`geofm.plots.tables`; the plotting
code holds none. Each ``plot_*`` function returns a :class:`~geofm.plots.draw.Plotted` (path, the exact data
frame drawn, with a ``source`` column where two sources meet, and the legend labels).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from geofm.common.io import save_figure, write_csv  # noqa: E402
from geofm.plots import tables  # noqa: E402
from geofm.plots.draw import (Plotted, grouped_bars, hardware_note, legend_labels, merged_legend_entries,  # noqa: E402
                              no_data, stamp, today)
from geofm.plots.names import PAPER, PAPER_CITATION, PLAN, PROJECT, model_order, strategy_order  # noqa: E402
from geofm.plots.readers import BASE_VARIANT, base_variant, load_inputs, prefetch_setting  # noqa: E402
from geofm.plots.registry import FIGURES, TABLES  # noqa: E402
from geofm.plots.tables import (PAPER_NO_PREFETCH, paper_prefetch_series, peak_memory_column, peak_memory_series,  # noqa: E402
                                prefetch_option, prefetch_relative, variant_comparison, weak_scaling_series)


def plot_accuracy_vs_size(ev: pd.DataFrame, path) -> Plotted:
    """Top-1 vs encoder parameters (log x); hue = dataset, style = protocol · pretrained/random init."""
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    data = ev.dropna(subset=["top1", "params"]).copy() if not ev.empty else ev.copy()
    if data.empty:
        no_data(ax, "no evaluation results (results/eval/*/*/*.json)")
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
    stamp(fig, f"{PROJECT}; generated {today()}")
    labels = legend_labels(fig)
    return Plotted(save_figure(fig, path), data, labels)


def plot_loss_curves(metrics: pd.DataFrame, path) -> Plotted:
    """MAE reconstruction loss (and throughput when logged) vs step, one line per model."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    data = metrics.dropna(subset=["loss"]) if "loss" in metrics.columns and len(metrics) else metrics.iloc[0:0]
    if data.empty:
        for ax in axes:
            no_data(ax, "no pretraining metrics (results/pretrain/*/metrics.jsonl)")
    else:
        order = model_order(data["display_name"])
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
            no_data(axes[1], "images_per_s not logged")
    fig.suptitle("Pretraining (this project)")
    stamp(fig, f"{PROJECT}; generated {today()}")
    return Plotted(save_figure(fig, path), data, legend_labels(fig))


def _profile_bars(prof: pd.DataFrame, path, y: str, ylabel: str, title: str, yerr: str | None,
                  note: str = "") -> Plotted:
    data = prof.copy()
    nodes = sorted(data["nodes"].dropna().unique()) if len(data) else []
    fig, axes = plt.subplots(1, max(1, len(nodes)), figsize=(max(6, 4.5 * len(nodes)), 4.5), squeeze=False,
                             layout="constrained")
    axes = axes[0]
    if not nodes:
        no_data(axes[0], "no profile results (results/profile/*/*/*n.json)")
    else:
        strategies = strategy_order(data["strategy"])
        palette = dict(zip(strategies, sns.color_palette("tab10", len(strategies))))
        for ax, n in zip(axes, nodes):
            sub = data[data["nodes"] == n]
            models = model_order(sub["display_name"])
            okd = sub[sub["ok"]]
            centres = grouped_bars(ax, okd, "display_name", "strategy", y, x_order=models, hue_order=strategies,
                                   yerr=yerr, palette=palette)
            for _, r in sub[~sub["ok"]].iterrows():  # impossible configurations: a marked slot
                ax.plot(centres[(r["display_name"], r["strategy"])], 0, marker="x", color="crimson",
                        markersize=8, clip_on=False, linestyle="none",
                        label="impossible (see profile.csv)")
            ax.set_title(f"{int(n)} node{'s' if n != 1 else ''}")
            ax.set_xlabel("model")
        axes[0].set_ylabel(ylabel)
        handles, labels = merged_legend_entries(axes)
        fig.legend(handles, labels, title="strategy", fontsize=8, loc="outside right center")
    fig.suptitle(title)
    notes = [n for n in (hardware_note(data), note) if n]
    stamp(fig, f"{PROJECT}; generated {today()}" + "".join(f"; {n}" for n in notes))
    return Plotted(save_figure(fig, path), data, legend_labels(fig))


def plot_throughput_per_strategy(prof: pd.DataFrame, path) -> Plotted:
    """images/s of each base-variant profile run: the median over the timed steps (the profile JSON's
    ``images_per_s``), the error bar its standard deviation (``images_per_s_std``)."""
    return _profile_bars(prof, path, "images_per_s", "images/s",
                         "Training throughput per sharding strategy (this project)", "images_per_s_std")


def reserved_note(prof: pd.DataFrame) -> str:
    """"peak_reserved_gb: n/a (CPU)" where measured runs report no reserved memory (the CPU has no caching
    allocator: its peak memory is the process's peak RSS); "" otherwise."""
    if prof.empty or "peak_reserved_gb" not in prof.columns:
        return ""
    q = prof[prof["ok"].astype(bool) & prof["peak_reserved_gb"].isna()]
    if q.empty:
        return ""
    where = sorted({str(d) for d in q["device"].dropna()}) if "device" in q.columns else []
    return f"peak_reserved_gb: {tables.NOT_AVAILABLE}" + (f" ({', '.join(where)})" if where else "")


def plot_peak_memory(prof: pd.DataFrame, path) -> Plotted:
    """Peak memory per device (``peak_mem_gb``, the allocator's peak) of each base-variant profile run; the
    footer says where the reserved memory is n/a. Runs without a device allocator (CPU) have no such peak:
    where no run has one, the process's peak RSS (``peak_rss_gb``) is drawn instead, labelled as such."""
    col = peak_memory_column(prof)
    if col == "peak_rss_gb":
        return _profile_bars(prof, path, col, "peak process RSS per rank (GB)",
                             "Peak memory per sharding strategy (this project; CPU: process RSS, "
                             "no device allocator)", None, reserved_note(prof))
    return _profile_bars(prof, path, col, "peak memory per device (GB)",
                         "Peak device memory per sharding strategy (this project)", None, reserved_note(prof))


def plot_paper_weak_scaling(paper_ws: pd.DataFrame, prof: pd.DataFrame, path, plan: pd.DataFrame | None = None,
                            ) -> Plotted:
    """images/s vs nodes (log-log), a panel per paper model, a line per strategy, the ideal linear line
    from the best strategy at the smallest node count, and this project's measurements of the same
    models as black markers; with ``plan`` (``geofm plan``'s table) its predictions as a third series
    (dashed, × markers) for the strategies the paper measured."""
    data, models = weak_scaling_series(paper_ws, prof, plan)
    paper, proj, pl = (data[data["source"] == s] for s in (PAPER, PROJECT, PLAN))
    ncols = min(3, max(1, len(models)))
    nrows = max(1, int(np.ceil(len(models) / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.8 * nrows), squeeze=False,
                             layout="constrained")
    flat = axes.ravel()
    if data.empty:
        no_data(flat[0], "no paper reference table and no profile results")
    strategies = strategy_order(data["strategy"]) if len(data) else []
    palette = dict(zip(strategies, sns.color_palette("tab10", len(strategies))))
    for ax, model in zip(flat, models):
        p = paper[paper["model"] == model]
        for s in strategy_order(p["strategy"]):
            g = p[p["strategy"] == s].sort_values("nodes")
            ax.plot(g["nodes"], g["images_per_s"], marker="o", markersize=3, color=palette[s], label=f"{PAPER}: {s}")
        if len(p):
            n0 = p["nodes"].min()
            base = p[p["nodes"] == n0]["images_per_s"].max()
            xs = np.array(sorted(p["nodes"].unique()), dtype=float)
            ax.plot(xs, base * xs / n0, color="0.3", linestyle="--", linewidth=1, label="ideal linear (paper)")
        q = proj[proj["model"] == model]
        for s in strategy_order(q["strategy"]):
            g = q[q["strategy"] == s].sort_values("nodes")
            ax.plot(g["nodes"], g["images_per_s"], marker="*", markersize=10, linestyle=":", color="black",
                    markerfacecolor=palette.get(s, "black"), label=f"{PROJECT}: {s}")
        q = pl[pl["model"] == model]
        for s in strategy_order(q["strategy"]):
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
    handles, labels = merged_legend_entries(flat)
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
    stamp(fig, note + f"; generated {today()}")
    return Plotted(save_figure(fig, path), data, legend_labels(fig))


def plot_paper_peak_memory(paper_mem: pd.DataFrame, prof: pd.DataFrame, path) -> Plotted:
    """Peak active memory per GCD from the paper (bars), this project's peak memory per device for the
    same model and strategy as black markers (at its smallest node count)."""
    fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
    data = peak_memory_series(paper_mem, prof)
    paper, proj = (data[data["source"] == s] for s in (PAPER, PROJECT))
    if data.empty:
        no_data(ax, "no paper reference table and no profile results")
    else:
        models = model_order(data["model"])
        strategies = strategy_order(data["strategy"])
        centres = grouped_bars(ax, paper, "model", "strategy", "peak_mem_gb", x_order=models,
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
    stamp(fig, f"{PAPER}: {PAPER_CITATION} (per GCD); {PROJECT}: per device, smallest node count; "
                f"generated {today()}")
    return Plotted(save_figure(fig, path), data, legend_labels(fig))


def plot_paper_prefetch(paper_pf: pd.DataFrame, prof: pd.DataFrame, path) -> Plotted:
    """Paper: ViT-5B images/s per strategy under FSDP backward-prefetch / limit_all_gathers options.
    This project's own measurement of the same model, node count and strategy is overlaid (black marker,
    at the matching option when the profile JSON records ``backward_prefetch``/``limit_all_gathers``)."""
    model, nodes = prefetch_setting()
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    data = paper_prefetch_series(paper_pf, prof)
    paper, proj = (data[data["source"] == s] for s in (PAPER, PROJECT))
    if data.empty:
        no_data(ax, "no prefetch reference table")
    else:
        strategies = strategy_order(data["strategy"])
        options = list(dict.fromkeys(paper["option"])) if len(paper) else []
        palette = dict(zip(options, sns.color_palette("Paired", len(options))))
        centres = grouped_bars(ax, paper, "strategy", "option", "images_per_s", x_order=strategies,
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
    stamp(fig, f"{PAPER}: {PAPER_CITATION}; generated {today()}")
    return Plotted(save_figure(fig, path), data, legend_labels(fig))


def plot_prefetch_comparison(paper_pf: pd.DataFrame, prof: pd.DataFrame, path) -> Plotted:
    """Backward prefetch vs none, as a speed-up over each source's own no-prefetch baseline: the paper's
    FSDP1 options (bars, ViT-5B on 8 Frontier nodes) and this project's FSDP2 prefetch depths (markers,
    whatever model and node count it profiled with a ``backward_prefetch: 0`` variant)."""
    data = prefetch_relative(paper_pf, prof)
    fig, ax = plt.subplots(figsize=(9.5, 4.8), layout="constrained")
    paper = data[data["source"] == PAPER]
    paper = paper[paper["option"].str.upper() != PAPER_NO_PREFETCH].copy()
    proj = data[data["source"] == PROJECT]
    proj = proj[proj["option"] != prefetch_option(0)]
    if paper.empty and proj.empty:
        no_data(ax, "no paper prefetch table and no profile with a backward_prefetch: 0 variant")
    else:
        strategies = strategy_order(list(paper["strategy"]) + list(proj["strategy"]))
        paper["series"] = paper["option"] + ", limit_all_gathers=" + paper["limit_all_gathers"].astype(str)
        options = list(dict.fromkeys(paper["series"]))
        palette = dict(zip(options, sns.color_palette("Paired", len(options))))
        grouped_bars(ax, paper, "strategy", "series", "relative", x_order=strategies, hue_order=options,
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
    model, nodes = prefetch_setting()
    ax.set_title(f"Backward prefetch vs none (paper: {model or '?'} on {nodes or '?'} nodes, FSDP1; "
                 f"{PROJECT}: FSDP2)")
    note = hardware_note(base_variant(prof)) if not prof.empty else ""
    stamp(fig, f"{PAPER}: {PAPER_CITATION}; {PROJECT}: " + (note or "no prefetch variants profiled")
           + f"; generated {today()}")
    return Plotted(save_figure(fig, path), data, legend_labels(fig))


def plot_compile_ac_comparison(prof: pd.DataFrame, path) -> Plotted:
    """images/s (median, ± std) and peak memory per device for every variant of the cells profiled under
    more than one (compile, activation checkpointing, prefetch, data, precision); impossible runs as ×."""
    data = variant_comparison(prof)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    if data.empty:
        for ax in axes:
            no_data(ax, "no cell profiled under more than one variant (profile.variants)")
    else:
        labels = list(dict.fromkeys(data.sort_values("variant", key=lambda v: v != BASE_VARIANT)["variant_label"]))
        cells = list(dict.fromkeys(data["cell"]))
        palette = dict(zip(labels, sns.color_palette("tab10", len(labels))))
        okd = data[data["ok"].astype(bool)]
        for ax, y, yl, err in ((axes[0], "images_per_s", "images/s", "images_per_s_std"),
                               (axes[1], "peak_mem_gb", "peak memory per device (GB)", None)):
            centres = grouped_bars(ax, okd, "cell", "variant_label", y, x_order=cells, hue_order=labels,
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
    note = hardware_note(prof) if not prof.empty else ""
    stamp(fig, f"{PROJECT}; generated {today()}" + (f"; {note}" if note else ""))
    return Plotted(save_figure(fig, path), data, legend_labels(fig))


# --------------------------------------------------------------------------- stage entry point
def run_figures(cfg: dict, out_dir_figures, out_dir_tables, reference_dir=None) -> list[Path]:
    """Write every table of :data:`~geofm.plots.registry.TABLES` (computed by :mod:`geofm.plots.tables`) and
    every figure of :data:`~geofm.plots.registry.FIGURES` (drawn by this module) from the results under
    ``cfg["results"]``; returns their paths, tables first."""
    figs, tabs = Path(out_dir_figures), Path(out_dir_tables)
    sns.set_theme(style="whitegrid", context="paper")
    data = load_inputs(cfg, reference_dir)
    written = []
    for spec in TABLES.values():
        fn = getattr(tables, spec.function)
        written.append(write_csv(tabs / spec.file, fn(**{arg: data[kind] for arg, kind in spec.reads.items()})))
    for spec in FIGURES.values():
        fn = globals()[spec.function]
        plotted = fn(**{arg: data[kind] for arg, kind in spec.reads.items()}, path=figs / spec.file)
        written.append(plotted.path)
    return written
