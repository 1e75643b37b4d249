"""Readers: every result file and reference table the figures use, loaded into one data frame per input kind
(``geofm.plots.registry.INPUTS``). A missing or unreadable file is skipped with a note on stderr, never fatal:
the figures stage draws "no data" instead.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd

from geofm.config import PROFILE_VARIANT_KEYS
from geofm.plots.names import PAPER, canonical_strategy, display, param_count

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
# the paper's tables (input kind ``paper_<key>``)
REFERENCE_FILES = {
    "weak_scaling": "frontier_weak_scaling_ips.csv",
    "peak_memory": "frontier_peak_memory_gb.csv",
    "prefetch": "frontier_prefetch_vit5b_8nodes_ips.csv",
}
BASE_VARIANT = "base"
# the settings a profile variant may change (the schema's list; the profile JSON records them all, for every variant)
VARIANT_SETTINGS = list(PROFILE_VARIANT_KEYS)
PROFILE_COLUMNS = ["model", "display_name", "strategy", "nodes", "variant", *VARIANT_SETTINGS, "world_size",
                   "images_per_s", "images_per_s_std", "tflops", "mfu", "peak_mem_gb", "peak_reserved_gb",
                   "comm_share", "status", "ok", "path"]
_PROFILE_NUMERIC = ["nodes", "world_size", "images_per_s", "images_per_s_std", "tflops", "mfu", "peak_rss_gb", "peak_mem_gb",
                    "peak_reserved_gb"]
_PROFILE_FILE = re.compile(r"^(\d+)n(?:\.([a-z][a-z0-9_]*))?\.json$")
EVAL_COLUMNS = ["protocol", "model", "display_name", "params", "dataset", "init", "top1", "top5", "n_train",
                "n_test", "checkpoint_step", "image_size", "vs_random_p", "path"]


def warn(msg: str) -> None:
    print(f"geofm figures: {msg}", file=sys.stderr)


def _read_json(path: Path):
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        warn(f"skipping unreadable {path}: {e}")
        return None
    if not isinstance(rec, dict):
        warn(f"skipping {path}: a {type(rec).__name__}, not a result record")
        return None
    return rec


def _dataset_label(rec: dict, path: Path) -> str:
    """The dataset, with its train ratio where the evaluation re-split at one (``ucmerced (50% train)``)."""
    ds = rec.get("dataset", path.stem)
    return f"{ds} ({rec['train_ratio']:.0%} train)" if rec.get("train_ratio") else ds


def load_eval_results(results) -> pd.DataFrame:
    """One row per (protocol, model, dataset, init) from ``eval/*/*/*.json``; ``params`` at the encoder shape
    the evaluation recorded (``settings.image_size`` / ``in_chans``)."""
    rows = []
    for path in sorted(Path(results).glob("eval/*/*/*.json")):
        rec = _read_json(path)
        if not isinstance(rec, dict) or "pretrained" not in rec:
            continue
        settings = rec.get("settings") or {}
        shape = {k: int(settings[k]) for k in ("image_size", "in_chans") if settings.get(k)}
        model = rec.get("model", path.parent.name)
        params = param_count(model, **shape)
        for init, label in (("pretrained", "pretrained"), ("random_init", "random init")):
            r = rec.get(init)
            if not isinstance(r, dict):
                continue
            rows.append({
                "protocol": rec.get("protocol", path.parent.parent.name), "model": model,
                "display_name": display(model), "params": params, "dataset": _dataset_label(rec, path),
                "init": label, "top1": r.get("top1"), "top5": r.get("top5"), "n_train": r.get("n_train"),
                "n_test": r.get("n_test"), "checkpoint_step": rec.get("checkpoint_step"),
                "image_size": shape.get("image_size"),
                # McNemar's exact p of the pretrained encoder against its random-init twin, on the pretrained row
                "vs_random_p": (rec.get("vs_random_init") or {}).get("mcnemar_p") if init == "pretrained" else None,
                "path": str(path)})
    return pd.DataFrame(rows, columns=EVAL_COLUMNS)


def load_pretrain_metrics(results) -> pd.DataFrame:
    """All ``pretrain/*/metrics.jsonl`` lines, with ``model`` and ``display_name`` columns."""
    frames = []
    for path in sorted(Path(results).glob("pretrain/*/metrics.jsonl")):
        rows, bad = [], 0
        try:
            lines = path.read_text().splitlines()
        except OSError as e:
            warn(f"skipping unreadable {path}: {e}")
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
            warn(f"{path}: skipped {bad} malformed line(s)")
        if rows:
            df = pd.DataFrame(rows)
            df["model"] = path.parent.name
            df["display_name"] = display(path.parent.name)
            frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["model", "display_name", "step", "loss"])
    return pd.concat(frames, ignore_index=True)


def _profile_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows in :data:`PROFILE_COLUMNS` order (then any other recorded key), numbers numeric: a null, missing
    or "n/a" value (``peak_reserved_gb`` on the CPU) becomes NaN."""
    df = pd.DataFrame(rows)
    for c in PROFILE_COLUMNS:
        if c not in df.columns:
            df[c] = pd.Series(dtype=object)
    extra = [c for c in df.columns if c not in PROFILE_COLUMNS]
    df = df[PROFILE_COLUMNS + extra]
    for c in _PROFILE_NUMERIC:
        if c in df.columns:  # peak_rss_gb: recorded from this version on
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


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
    df = _profile_frame(rows)
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


def with_impossible_cells(prof: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """Add a row for every base-grid cell of ``cfg["profile"]`` that has no profile result because the memory
    model kept it out of the DAG (``geofm.perf.plan.cell_feasibility``): its status says "impossible: needs
    ~X GB of Y"."""
    from geofm.perf.plan import cell_feasibility

    pr = cfg["profile"]
    if not all(k in pr for k in ("models", "strategies", "nodes")):  # no profile grid in this study
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


def load_reference(which: str, reference_dir=None) -> pd.DataFrame:
    """A published-measurement table (``weak_scaling | peak_memory | prefetch``), ``source="paper"``; empty
    when the file is absent."""
    path = Path(reference_dir or REFERENCE_DIR) / REFERENCE_FILES[which]
    if not path.exists():
        warn(f"reference table {path} missing")
        return pd.DataFrame()
    df = pd.read_csv(path)
    if "strategy" in df.columns:
        df["strategy"] = df["strategy"].map(canonical_strategy)
    df["source"] = PAPER
    return df


def prefetch_setting() -> tuple[str | None, int | None]:
    """(display model, nodes) of the paper's prefetch study, parsed from its file name
    (``frontier_prefetch_vit5b_8nodes_ips.csv`` → ``("ViT-5B", 8)``)."""
    from geofm.models.registry import MODELS

    m = re.search(r"prefetch_([a-z0-9]+)_(\d+)nodes", REFERENCE_FILES["prefetch"])
    if not m:
        return None, None
    tag, nodes = m.group(1), int(m.group(2))
    for key, spec in MODELS.items():
        if key.replace("_", "") == tag:
            return spec.display, nodes
    return tag, nodes


def load_plan(results) -> pd.DataFrame:
    """``{results}/plan/plan.csv`` (``geofm plan``); empty when absent."""
    path = Path(results) / "plan" / "plan.csv"
    if not path.exists():
        return pd.DataFrame(columns=["model", "display_name", "strategy", "nodes", "images_per_s", "fits", "status"])
    df = pd.read_csv(path)
    df["strategy"] = df["strategy"].map(canonical_strategy)
    return df


def load_inputs(cfg: dict, reference_dir=None) -> dict[str, pd.DataFrame]:
    """Every input kind of ``geofm.plots.registry.INPUTS``, read from ``cfg["results"]`` (and the reference
    tables from ``reference_dir``, default the package's copy)."""
    results = Path(cfg["results"])
    prof = with_impossible_cells(load_profile(results), cfg)
    data = {"eval": load_eval_results(results), "pretrain": load_pretrain_metrics(results), "profile": prof,
            "profile_base": base_variant(prof), "plan": load_plan(results)}
    data.update({f"paper_{k}": load_reference(k, reference_dir) for k in REFERENCE_FILES})
    return data
