"""Tables: pure pandas on the readers' frames (no drawing), so each is testable on a small frame. The CSV tables
of ``geofm.plots.registry.TABLES`` and the series each paper-overlay figure draws (``*_series``) are computed
here; the figures only draw them.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from geofm.plots.names import PAPER, PLAN, PROJECT, display, model_order, strategy_order
from geofm.plots.readers import BASE_VARIANT, base_variant, prefetch_setting

NOT_AVAILABLE = "n/a"
SCALING_COLUMNS = ["source", "model", "strategy", "nodes", "images_per_s"]


# --------------------------------------------------------------------------- the CSV tables
def accuracy_table(ev: pd.DataFrame) -> pd.DataFrame:
    """One row per protocol x dataset x model x init; ``vs_random_p``: McNemar's exact p-value of the pretrained
    encoder against its random-init twin on the same test images (pretrained rows; empty for results written
    before the evaluation recorded it)."""
    cols = ["protocol", "dataset", "model", "display_name", "params", "init", "top1", "top5", "n_train",
            "n_test", "checkpoint_step", "vs_random_p"]
    if ev.empty:
        return pd.DataFrame(columns=cols)
    return ev.reindex(columns=cols).sort_values(["protocol", "dataset", "params", "model", "init"], ignore_index=True)


def profile_table(prof: pd.DataFrame) -> pd.DataFrame:
    """Every profile row without the ``ok`` helper column; a measured run whose device reports no reserved
    memory (the CPU: ``peak_reserved_gb`` null) says ``n/a`` there, an impossible one stays empty."""
    out = prof.drop(columns=["ok"]) if "ok" in prof.columns else prof.copy()
    if "ok" in prof.columns and "peak_reserved_gb" in out.columns:
        missing = prof["ok"].astype(bool) & prof["peak_reserved_gb"].isna()
        if missing.any():
            out["peak_reserved_gb"] = out["peak_reserved_gb"].astype(object).where(~missing, NOT_AVAILABLE)
    return out


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
               "strategies_ok": ";".join(strategy_order(ok["strategy"])),
               "strategies_impossible": ";".join(strategy_order(g.loc[~g["ok"], "strategy"]))}
        if len(ok):
            b = ok.loc[ok["images_per_s"].idxmax()]
            row.update(best_strategy=b["strategy"], images_per_s=b["images_per_s"], tflops=b["tflops"],
                       mfu=b["mfu"], peak_mem_gb=b["peak_mem_gb"])
        else:
            row.update(best_strategy=None, images_per_s=np.nan, tflops=np.nan, mfu=np.nan, peak_mem_gb=np.nan)
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def project_scaling(prof: pd.DataFrame) -> pd.DataFrame:
    """This project's base-variant measurements as weak-scaling points, ``model`` = display name."""
    prof = base_variant(prof)
    if prof.empty:
        return pd.DataFrame(columns=SCALING_COLUMNS)
    ok = prof[prof["ok"] & prof["images_per_s"].notna()].copy()
    ok["model"] = ok["display_name"]
    ok["source"] = PROJECT
    return ok[SCALING_COLUMNS]


def weak_scaling_efficiency(paper_ws: pd.DataFrame, prof: pd.DataFrame) -> pd.DataFrame:
    """Per (source, model, strategy): images/s per node relative to the smallest node count measured.

    ``efficiency = (ips / nodes) / (ips_base / nodes_base)``; ``ideal_images_per_s = ips_base · nodes /
    nodes_base``. Models are display names (``ViT-3B``) for both sources.
    """
    cols = ["source", "model", "strategy", "nodes", "images_per_s", "base_nodes", "base_images_per_s",
            "ideal_images_per_s", "efficiency"]
    parts = []
    if not paper_ws.empty:
        parts.append(paper_ws.assign(source=PAPER)[SCALING_COLUMNS])
    proj = project_scaling(prof)
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
    order = {m: i for i, m in enumerate(model_order(res["model"]))}
    res["_m"] = res["model"].map(order)
    return res.sort_values(["source", "_m", "strategy", "nodes"], ignore_index=True).drop(columns="_m")


# --------------------------------------------------------------------------- series of the paper overlays
def weak_scaling_series(paper_ws: pd.DataFrame, prof: pd.DataFrame, plan: pd.DataFrame | None = None
                        ) -> tuple[pd.DataFrame, list[str]]:
    """(images/s vs nodes of every source, the models to draw). With a paper table, the models are the
    paper's and this project's points are those of the same display name; ``plan`` (``geofm plan``'s
    table) adds its fitting predictions for the (model, strategy) pairs the paper measured."""
    proj = project_scaling(prof)
    pl = pd.DataFrame(columns=SCALING_COLUMNS)
    if plan is not None and len(plan):
        q = plan[plan["fits"].astype(str).str.lower().isin(["true", "1"]) & plan["images_per_s"].notna()].copy()
        q["model"] = q["display_name"] if "display_name" in q.columns else q["model"].map(display)
        pl = q.assign(source=PLAN)[SCALING_COLUMNS]
        if not paper_ws.empty:  # the strategies the paper measured per model
            keys = set(zip(paper_ws["model"], paper_ws["strategy"]))
            pl = pl[[k in keys for k in zip(pl["model"], pl["strategy"])]]
    if not paper_ws.empty:
        paper = paper_ws.assign(source=PAPER)[SCALING_COLUMNS]
        models = model_order(paper["model"])
        proj = proj[proj["model"].isin(models)]
    else:
        paper = pd.DataFrame(columns=SCALING_COLUMNS)
        models = model_order(proj["model"])
    parts = [d for d in (paper, proj, pl) if len(d)]
    return (pd.concat(parts, ignore_index=True) if parts else paper), models


def peak_memory_series(paper_mem: pd.DataFrame, prof: pd.DataFrame) -> pd.DataFrame:
    """The paper's peak active memory per GCD and this project's peak memory per device of the same models
    (at each model and strategy's smallest node count), joined on (display model, strategy)."""
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
    parts = [d for d in (paper, proj) if len(d)]
    return pd.concat(parts, ignore_index=True) if parts else paper


def _option(backward_prefetch: pd.Series, limit_all_gathers: pd.Series) -> pd.Series:
    """The paper's option label: ``prefetch=<backward_prefetch>, limit_all_gathers=<true|false>``."""
    return ("prefetch=" + backward_prefetch.astype(str) + ", limit_all_gathers="
            + limit_all_gathers.astype(str).str.lower())


def paper_prefetch_series(paper_pf: pd.DataFrame, prof: pd.DataFrame) -> pd.DataFrame:
    """The paper's images/s per (strategy, prefetch option) of its prefetch study, and this project's runs of
    the same model and node count (with their option where the profile JSON records it)."""
    model, nodes = prefetch_setting()
    paper = pd.DataFrame(columns=["source", "strategy", "option", "images_per_s"])
    if not paper_pf.empty:
        paper = paper_pf.assign(option=_option(paper_pf["backward_prefetch"], paper_pf["limit_all_gathers"]))[
            ["source", "strategy", "option", "images_per_s", "backward_prefetch", "limit_all_gathers"]]
    proj = pd.DataFrame(columns=["source", "strategy", "option", "images_per_s"])
    if not prof.empty and model is not None:
        q = prof[prof["ok"] & (prof["display_name"] == model) & (prof["nodes"] == nodes)
                 & prof["images_per_s"].notna()]
        if len(q):
            opt = None
            if {"backward_prefetch", "limit_all_gathers"} <= set(q.columns):
                opt = _option(q["backward_prefetch"], q["limit_all_gathers"])
            proj = q.assign(source=PROJECT, option=opt)[["source", "strategy", "option", "images_per_s"]]
    parts = [d for d in (paper, proj) if len(d)]
    return pd.concat(parts, ignore_index=True) if parts else paper


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


def prefetch_relative(paper_pf: pd.DataFrame, prof: pd.DataFrame) -> pd.DataFrame:
    """images/s of each prefetch option relative to the *same source's* no-prefetch run of the same cell.

    Paper: per (strategy, limit_all_gathers), relative to ``backward_prefetch=NONE``. This project: per
    cell (model, strategy, nodes and every other setting equal), relative to ``backward_prefetch=0``; cells
    without a no-prefetch run have no baseline and are left out. Different hardware, same ratio.
    """
    cols = ["source", "model", "nodes", "strategy", "option", "limit_all_gathers", "variant", "images_per_s",
            "baseline_images_per_s", "relative"]
    parts = []
    model, nodes = prefetch_setting()
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


def peak_memory_column(prof: pd.DataFrame) -> str:
    """The memory the peak-memory figure draws: the device allocator's peak (``peak_mem_gb``) where any run
    measured one, else (CPU runs, which have no device allocator) the process's peak RSS (``peak_rss_gb``)."""
    if "peak_mem_gb" in prof.columns and prof["peak_mem_gb"].notna().any():
        return "peak_mem_gb"
    if "peak_rss_gb" in prof.columns and prof["peak_rss_gb"].notna().any():
        return "peak_rss_gb"
    return "peak_mem_gb"
