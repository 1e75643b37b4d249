import json
from pathlib import Path

import pandas as pd
import pytest

from geofm.plots import figures as F
from geofm.plots import readers as R
from geofm.plots import tables as T
from geofm.plots.names import canonical_strategy
from geofm.plots.registry import FIGURES, TABLES

REF = R.REFERENCE_DIR


def study(root: Path) -> dict:
    """The keys of a validated config the figures stage reads: the results folder and the profile grid
    (none here: no cell is added as impossible)."""
    return {"results": str(root), "profile": {}}


def write_results(root: Path):
    # evaluation JSONs: two models, two protocols, one dataset
    for proto in ("knn", "linprobe"):
        for model, acc in (("demo_tiny", 0.6), ("vit_base", 0.8)):
            d = root / "eval" / proto / model
            d.mkdir(parents=True, exist_ok=True)
            rec = {"protocol": proto, "model": model, "dataset": "ucm",
                   "pretrained": {"top1": acc, "top5": 0.95, "per_class": {"a": acc}, "n_train": 10, "n_test": 5},
                   "random_init": {"top1": acc / 3, "top5": 0.5, "per_class": {"a": 0.2}, "n_train": 10, "n_test": 5},
                   "checkpoint_step": 50, "config": {}, "settings": {"image_size": 32, "in_chans": 3}}
            if model == "vit_base":  # demo_tiny's stand for results written before the comparison existed
                rec["vs_random_init"] = {"mcnemar_p": 0.01 if proto == "knn" else 0.2}
            (d / "ucm.json").write_text(json.dumps(rec))
    # pretraining metrics, with one malformed line
    d = root / "pretrain" / "demo_tiny"
    d.mkdir(parents=True)
    lines = [json.dumps({"step": s, "loss": 1.0 / (s + 1), "lr": 1e-3, "images_per_s": 100 + s, "tflops": 0.1,
                         "mfu": 0.01, "peak_mem_gb": 0.5}) for s in range(5)]
    (d / "metrics.jsonl").write_text("\n".join(lines + ["{not json"]) + "\n")
    # profile: vit_base (a paper model) on 1 and 2 nodes, plus an impossible config and a demo model
    def prof(model, strategy, nodes, ips, status="ok"):
        p = root / "profile" / model / strategy / f"{nodes}n.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        rec = {"model": model, "strategy": strategy, "nodes": nodes, "world_size": nodes * 2,
               "images_per_s": ips, "images_per_s_std": ips / 50 if ips else None, "tflops": 1.0, "mfu": 0.3,
               "peak_mem_gb": 2.0 + nodes, "status": status}
        p.write_text(json.dumps(rec))
    prof("vit_base", "DDP", 1, 500.0)
    prof("vit_base", "DDP", 2, 900.0)
    prof("vit_base", "FULL_SHARD", 1, 450.0)
    prof("vit_base", "NO_SHARD", 1, None, status="impossible: out of memory")
    prof("demo_tiny", "HYBRID_2GPUs", 1, 3000.0)
    prof("vit_5b", "FULL_SHARD", 8, 123.0)


def write_variants(root: Path):
    """Variants of two cells (as profile.variants writes them: {nodes}n.{variant}.json)."""
    def rec(model, strategy, nodes, variant, ips, status="ok", **settings):
        p = root / "profile" / model / strategy / (f"{nodes}n.{variant}.json" if variant != "base" else f"{nodes}n.json")
        p.parent.mkdir(parents=True, exist_ok=True)
        base = {"backward_prefetch": 1, "forward_prefetch": 0, "compile": False, "activation_checkpointing": 0,
                "data": "synthetic", "precision": "bf16"}
        r = {"model": model, "strategy": strategy, "nodes": nodes, "world_size": nodes * 8, "variant": variant,
             "variant_settings": settings, **base, **settings, "images_per_s": ips,
             "images_per_s_std": ips / 50 if ips else None, "tflops": 1.0, "mfu": 0.3, "peak_mem_gb": 40.0,
             "status": status, "device": "MI250X_GCD"}
        p.write_text(json.dumps(r))
    rec("vit_5b", "FULL_SHARD", 8, "base", 123.0)
    rec("vit_5b", "FULL_SHARD", 8, "noprefetch", 100.0, backward_prefetch=0)
    rec("vit_5b", "FULL_SHARD", 8, "prefetch2", 110.0, backward_prefetch=2)
    rec("vit_5b", "HYBRID_2GPUs", 8, "base", 90.0)  # no no-prefetch run: no baseline, not in the comparison
    # a faster variant must not win best_strategy (variants change more than the strategy)
    rec("vit_base", "FULL_SHARD", 1, "compile", 9999.0, compile=True)
    rec("vit_base", "FULL_SHARD", 1, "ac", None, status="impossible: out of memory", activation_checkpointing=1)


def test_run_figures_all_outputs(tmp_path):
    write_results(tmp_path)
    out = F.run_figures(study(tmp_path), tmp_path / "figures", tmp_path / "tables")
    names = sorted(p.name for p in out)
    assert names == sorted([f.file for f in FIGURES.values()] + [t.file for t in TABLES.values()])
    assert all(p.exists() and p.stat().st_size > 0 for p in out)

    acc = pd.read_csv(tmp_path / "tables" / "accuracy.csv")
    assert len(acc) == 8 and set(acc["init"]) == {"pretrained", "random init"}
    assert acc.loc[acc["model"] == "vit_base", "display_name"].iloc[0] == "ViT-Base"
    # McNemar's p of each result against its random-init twin, on its pretrained row only
    p = acc.set_index(["protocol", "model", "init"])["vs_random_p"]
    assert (p[("knn", "vit_base", "pretrained")], p[("linprobe", "vit_base", "pretrained")]) == (0.01, 0.2)
    assert p.drop([("knn", "vit_base", "pretrained"), ("linprobe", "vit_base", "pretrained")]).isna().all()
    assert (acc.loc[acc["model"] == "vit_base", "params"] > acc.loc[acc["model"] == "demo_tiny", "params"].max()).all()

    best = pd.read_csv(tmp_path / "tables" / "best_strategy.csv")
    row = best[(best["model"] == "vit_base") & (best["nodes"] == 1)].iloc[0]
    assert row["best_strategy"] == "DDP" and row["images_per_s"] == 500.0
    assert row["strategies_impossible"] == "NO_SHARD"

    prof = pd.read_csv(tmp_path / "tables" / "profile.csv")
    assert "impossible: out of memory" in set(prof["status"])

    eff = pd.read_csv(tmp_path / "tables" / "weak_scaling_efficiency.csv")
    assert set(eff["source"]) == {"paper", "this project"}
    mine = eff[(eff["source"] == "this project") & (eff["model"] == "ViT-Base") & (eff["strategy"] == "DDP")]
    assert mine.set_index("nodes")["efficiency"].to_dict() == pytest.approx({1: 1.0, 2: 0.9})
    ref = pd.read_csv(REF / "frontier_weak_scaling_ips.csv")
    r = ref[(ref["model"] == "ViT-Base") & (ref["strategy"] == "DDP")].sort_values("nodes")
    paper = eff[(eff["source"] == "paper") & (eff["model"] == "ViT-Base") & (eff["strategy"] == "DDP")]
    expected = (r["images_per_s"] / r["nodes"]) / (r["images_per_s"].iloc[0] / r["nodes"].iloc[0])
    assert paper["efficiency"].tolist() == pytest.approx(expected.tolist())


def test_weak_scaling_overlay_has_both_sources(tmp_path):
    write_results(tmp_path)
    prof = R.load_profile(tmp_path)
    paper = R.load_reference("weak_scaling")
    res = F.plot_paper_weak_scaling(paper, prof, tmp_path / "ws.png")
    assert res.path.exists()
    assert set(res.data["source"]) == {"paper", "this project"}
    mine = res.data[res.data["source"] == "this project"]
    assert set(mine["model"]) == {"ViT-Base", "ViT-5B"}  # demo_tiny is not a paper model: not overlaid
    assert "this project: DDP" in res.labels and "paper: DDP" in res.labels
    assert "ideal linear (paper)" in res.labels
    # every paper number drawn comes from the reference CSV
    assert len(res.data[res.data["source"] == "paper"]) == len(pd.read_csv(REF / "frontier_weak_scaling_ips.csv"))


def test_memory_and_prefetch_overlays(tmp_path):
    write_results(tmp_path)
    prof = R.load_profile(tmp_path)
    mem = F.plot_paper_peak_memory(R.load_reference("peak_memory"), prof, tmp_path / "mem.png")
    assert {"paper", "this project"} == set(mem.data["source"])
    assert "this project" in mem.labels and "paper: DDP" in mem.labels
    pf = F.plot_paper_prefetch(R.load_reference("prefetch"), prof, tmp_path / "pf.png")
    assert R.prefetch_setting() == ("ViT-5B", 8)
    mine = pf.data[pf.data["source"] == "this project"]
    assert mine["images_per_s"].tolist() == [123.0]
    assert "this project" in pf.labels


def test_profile_variants_in_tables(tmp_path):
    write_results(tmp_path)
    write_variants(tmp_path)
    F.run_figures(study(tmp_path), tmp_path / "figures", tmp_path / "tables")
    prof = pd.read_csv(tmp_path / "tables" / "profile.csv")
    for col in ("variant", "backward_prefetch", "forward_prefetch", "compile", "activation_checkpointing", "data",
                "precision", "comm_share"):
        assert col in prof.columns
    cell = prof[(prof["model"] == "vit_base") & (prof["strategy"] == "FULL_SHARD")]
    assert cell["variant"].tolist() == ["base", "ac", "compile"]  # base first
    assert prof.loc[prof["variant"] == "noprefetch", "backward_prefetch"].tolist() == [0]
    assert set(prof["variant"]) == {"base", "noprefetch", "prefetch2", "compile", "ac"}
    best = pd.read_csv(tmp_path / "tables" / "best_strategy.csv")
    row = best[(best["model"] == "vit_base") & (best["nodes"] == 1)].iloc[0]
    assert row["best_strategy"] == "DDP" and row["images_per_s"] == 500.0  # not the 9999 img/s compile variant
    assert row["strategies_impossible"] == "NO_SHARD"  # the impossible `ac` variant is not listed either
    eff = pd.read_csv(tmp_path / "tables" / "weak_scaling_efficiency.csv")
    mine = eff[(eff["source"] == "this project") & (eff["model"] == "ViT-Base")]
    assert 9999.0 not in set(mine["images_per_s"])
    thr = F.plot_throughput_per_strategy(R.base_variant(R.load_profile(tmp_path)), tmp_path / "t.png")
    assert set(thr.data["variant"]) == {"base"}


def test_prefetch_comparison_is_relative_per_source(tmp_path):
    write_results(tmp_path)
    write_variants(tmp_path)
    paper_pf = R.load_reference("prefetch")
    res = F.plot_prefetch_comparison(paper_pf, R.load_profile(tmp_path), tmp_path / "pf.png")
    assert res.path.exists() and res.path.stat().st_size > 10_000
    assert set(res.data["source"]) == {"paper", "this project"}
    assert any(lab.startswith("paper: BACKWARD_PRE") for lab in res.labels)
    assert any(lab.startswith("this project: ViT-5B, 8 node(s), backward_prefetch=1") for lab in res.labels)
    # paper: relative to its own NONE run of the same strategy and limit_all_gathers
    ref = pd.read_csv(REF / "frontier_prefetch_vit5b_8nodes_ips.csv")
    ref["limit_all_gathers"] = ref["limit_all_gathers"].astype(str).str.lower()
    fs = ref[(ref["strategy"] == "FULL_SHARD") & (ref["limit_all_gathers"] == "false")].set_index("backward_prefetch")
    p = res.data[(res.data["source"] == "paper") & (res.data["strategy"] == "FULL_SHARD")
                 & (res.data["limit_all_gathers"] == "false")].set_index("option")["relative"]
    assert p["BACKWARD_PRE"] == pytest.approx(fs.loc["BACKWARD_PRE", "images_per_s"] / fs.loc["NONE", "images_per_s"])
    assert p["NONE"] == pytest.approx(1.0)
    assert len(res.data[res.data["source"] == "paper"]) == len(ref)
    # this project: relative to its own backward_prefetch=0 run of the same cell
    mine = res.data[res.data["source"] == "this project"].set_index("variant")["relative"]
    assert mine.to_dict() == pytest.approx({"noprefetch": 1.0, "base": 1.23, "prefetch2": 1.1})
    assert "HYBRID_2GPUs" not in set(res.data.loc[res.data["source"] == "this project", "strategy"])


def test_compile_ac_comparison(tmp_path):
    write_results(tmp_path)
    write_variants(tmp_path)
    res = F.plot_compile_ac_comparison(R.load_profile(tmp_path), tmp_path / "cac.png")
    assert res.path.exists() and res.path.stat().st_size > 10_000
    cells = set(res.data["cell"])
    assert cells == {"ViT-Base FULL_SHARD 1n", "ViT-5B FULL_SHARD 8n"}  # only cells with more than one variant
    vb = res.data[res.data["cell"] == "ViT-Base FULL_SHARD 1n"].set_index("variant")
    assert vb.loc["compile", "images_per_s"] == 9999.0 and vb.loc["compile", "variant_label"] == "compile (compile=True)"
    assert not vb.loc["ac", "ok"]
    assert "impossible (see profile.csv)" in res.labels and "base" in res.labels
    empty = F.plot_compile_ac_comparison(R.load_profile(tmp_path / "none"), tmp_path / "e.png")
    assert empty.data.empty and empty.path.exists()


def test_figures_without_any_inputs(tmp_path):
    empty_ref = tmp_path / "noref"
    empty_ref.mkdir()
    out = F.run_figures(study(tmp_path / "nothing"), tmp_path / "f", tmp_path / "t",
                        reference_dir=empty_ref)
    assert len(out) == len(FIGURES) + len(TABLES)
    assert all(p.exists() and p.stat().st_size > 0 for p in out)
    assert pd.read_csv(tmp_path / "t" / "accuracy.csv").empty


def test_canonical_strategy():
    assert canonical_strategy("HYBRID_1GPUs") == "HYBRID_1GPU"
    assert canonical_strategy("hybrid_2gpu") == "HYBRID_2GPUs"
    assert canonical_strategy("full_shard") == "FULL_SHARD"


def test_reference_copy_matches_shared():
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
    if not shared.is_dir():
        pytest.skip(f"{shared} absent (shared/ is only on developer machines)")
    for f in sorted(shared.glob("*.csv")):
        assert (REF / f.name).read_bytes() == f.read_bytes(), f"{f.name} differs from the project copy"
    assert "Tsaris" in (REF / "README.md").read_text()


def test_every_figure_has_a_caption():
    report = Path(__file__).resolve().parents[2] / "workflow" / "report"
    for name in FIGURES:
        cap = report / f"{name}.rst"
        assert cap.is_file(), f"missing caption {cap}"
        assert cap.read_text().strip()


def test_cpu_runs_without_reserved_memory_show_na(tmp_path):
    """On the CPU the profile records `peak_reserved_gb: null`: the profile table says n/a there, the
    peak-memory figure draws and its footer says so."""
    write_results(tmp_path)
    for path in (tmp_path / "profile").glob("*/*/*.json"):
        rec = json.loads(path.read_text())
        rec.update(peak_reserved_gb=None, device="CPU" if rec["model"] == "demo_tiny" else "MI250X_GCD")
        if rec["model"] == "vit_base" and rec["status"] == "ok":
            rec["peak_reserved_gb"] = 4.5
        path.write_text(json.dumps(rec))
    loaded = R.with_impossible_cells(R.load_profile(tmp_path), study(tmp_path))
    T.profile_table(loaded).to_csv(tmp_path / "profile.csv", index=False)
    prof = pd.read_csv(tmp_path / "profile.csv", keep_default_na=False)
    reserved = dict(zip(zip(prof["model"], prof["strategy"], prof["nodes"]), prof["peak_reserved_gb"]))
    assert reserved[("demo_tiny", "HYBRID_2GPUs", 1)] == "n/a"
    assert reserved[("vit_base", "DDP", 1)] == "4.5"
    assert reserved[("vit_base", "NO_SHARD", 1)] == ""  # impossible: nothing measured
    base = R.base_variant(R.load_profile(tmp_path))
    assert F.reserved_note(base) == "peak_reserved_gb: n/a (CPU, MI250X_GCD)"
    assert F.reserved_note(base[base["model"] == "vit_base"]) == ""
    mem = F.plot_peak_memory(base, tmp_path / "mem.png")
    assert mem.path.stat().st_size > 10_000 and mem.data["peak_reserved_gb"].isna().sum() == 3
