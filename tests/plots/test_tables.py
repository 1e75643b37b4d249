"""The tables (geofm.plots.tables) as pure pandas on small frames shaped like the readers' output: no files,
no drawing."""
import json

import numpy as np
import pandas as pd
import pytest

from geofm.plots import names as N
from geofm.plots import tables as T
from geofm.plots.readers import PROFILE_COLUMNS, _profile_frame


def profile(*rows) -> pd.DataFrame:
    """A profile frame as geofm.plots.readers.load_profile returns it (display names, ok, numeric columns)."""
    out = []
    for r in rows:
        r = {"variant": "base", "status": "ok", "images_per_s_std": 1.0, "tflops": 1.0, "mfu": 0.1,
             "peak_mem_gb": 2.0, "peak_reserved_gb": 2.5, **r}
        r["display_name"] = N.display(r["model"])
        r["ok"] = r["status"] == "ok"
        out.append(r)
    return _profile_frame(out)


def test_best_strategy_picks_the_fastest_ok_base_run_per_model_and_nodes():
    prof = profile(
        {"model": "vit_base", "strategy": "DDP", "nodes": 1, "images_per_s": 500.0, "peak_mem_gb": 3.0},
        {"model": "vit_base", "strategy": "FULL_SHARD", "nodes": 1, "images_per_s": 620.0, "peak_mem_gb": 1.5},
        {"model": "vit_base", "strategy": "NO_SHARD", "nodes": 1, "images_per_s": None,
         "status": "impossible: out of memory"},
        # a faster variant of the same cell and a faster run on 2 nodes do not compete
        {"model": "vit_base", "strategy": "DDP", "nodes": 1, "images_per_s": 9999.0, "variant": "compile"},
        {"model": "vit_base", "strategy": "DDP", "nodes": 2, "images_per_s": 900.0},
        # a run marked ok that recorded no throughput is not a candidate
        {"model": "vit_base", "strategy": "HYBRID_2GPUs", "nodes": 2, "images_per_s": None},
        {"model": "vit_1b", "strategy": "DDP", "nodes": 1, "images_per_s": None, "status": "impossible: x"},
    )
    best = T.best_strategy(prof).set_index(["model", "nodes"])
    one = best.loc[("vit_base", 1)]
    assert one["best_strategy"] == "FULL_SHARD" and one["images_per_s"] == 620.0 and one["peak_mem_gb"] == 1.5
    assert one["strategies_ok"] == "DDP;FULL_SHARD" and one["strategies_impossible"] == "NO_SHARD"
    two = best.loc[("vit_base", 2)]
    assert two["best_strategy"] == "DDP" and two["images_per_s"] == 900.0
    assert two["strategies_ok"] == "DDP"
    none = best.loc[("vit_1b", 1)]
    assert pd.isna(none["best_strategy"]) and np.isnan(none["images_per_s"])
    assert none["strategies_impossible"] == "DDP" and none["display_name"] == "ViT-1B"


def test_strategy_and_model_order_follow_the_registries():
    assert N.strategy_order(["HYBRID_16GPUs", "FULL_SHARD", "HYBRID_2GPUs", "DDP", "SHARD_GRAD_OP", "NO_SHARD"]) == [
        "DDP", "NO_SHARD", "SHARD_GRAD_OP", "FULL_SHARD", "HYBRID_2GPUs", "HYBRID_16GPUs"]
    assert N.model_order(["ViT-15B", "ViT-Base", "ViT-3B", "some model"]) == ["ViT-Base", "ViT-3B", "ViT-15B",
                                                                               "some model"]
    assert N.canonical_strategy("hybrid_1gpus") == "HYBRID_1GPU"


def test_weak_scaling_efficiency_is_per_source_model_and_strategy():
    paper = pd.DataFrame({"model": ["ViT-Base"] * 3, "strategy": ["DDP"] * 3, "nodes": [2, 1, 4],
                          "images_per_s": [180.0, 100.0, 320.0]})
    prof = profile({"model": "vit_base", "strategy": "DDP", "nodes": 1, "images_per_s": 50.0},
                   {"model": "vit_base", "strategy": "DDP", "nodes": 2, "images_per_s": 100.0})
    eff = T.weak_scaling_efficiency(paper, prof)
    p = eff[eff["source"] == N.PAPER].set_index("nodes")
    assert p["efficiency"].to_dict() == pytest.approx({1: 1.0, 2: 0.9, 4: 0.8})
    assert p["ideal_images_per_s"].to_dict() == pytest.approx({1: 100.0, 2: 200.0, 4: 400.0})
    assert set(p["base_nodes"]) == {1}
    mine = eff[eff["source"] == N.PROJECT]
    assert mine["model"].tolist() == ["ViT-Base", "ViT-Base"] and mine["efficiency"].tolist() == pytest.approx([1, 1])


def test_weak_scaling_series_joins_on_display_model_and_paper_strategies():
    paper = pd.DataFrame({"model": ["ViT-Base", "ViT-Base", "ViT-3B"], "strategy": ["DDP", "DDP", "FULL_SHARD"],
                          "nodes": [1, 2, 1], "images_per_s": [100.0, 190.0, 10.0], "source": "paper"})
    prof = profile({"model": "vit_base", "strategy": "DDP", "nodes": 1, "images_per_s": 50.0},
                   {"model": "vit_base", "strategy": "DDP", "nodes": 1, "images_per_s": 70.0, "variant": "compile"},
                   {"model": "demo_tiny", "strategy": "DDP", "nodes": 1, "images_per_s": 900.0})
    plan = pd.DataFrame({"model": ["vit_base", "vit_base", "vit_3b", "vit_3b"],
                         "display_name": ["ViT-Base", "ViT-Base", "ViT-3B", "ViT-3B"],
                         "strategy": ["DDP", "FULL_SHARD", "FULL_SHARD", "FULL_SHARD"], "nodes": [1, 1, 1, 2],
                         "images_per_s": [95.0, 80.0, 9.0, 17.0], "fits": [True, True, True, False]})
    data, models = T.weak_scaling_series(paper, prof, plan)
    assert models == ["ViT-Base", "ViT-3B"]
    mine = data[data["source"] == N.PROJECT]
    assert mine[["model", "strategy", "images_per_s"]].values.tolist() == [["ViT-Base", "DDP", 50.0]]
    pl = data[data["source"] == N.PLAN]
    # only (model, strategy) pairs the paper measured, only predictions that fit
    assert sorted(zip(pl["model"], pl["strategy"], pl["nodes"])) == [("ViT-3B", "FULL_SHARD", 1), ("ViT-Base", "DDP", 1)]
    assert len(data[data["source"] == N.PAPER]) == 3
    # without the paper: this project's own models
    data, models = T.weak_scaling_series(pd.DataFrame(), prof)
    assert models == ["demo-64", "ViT-Base"] and set(data["source"]) == {N.PROJECT}


def test_peak_memory_series_uses_the_smallest_node_count_of_paper_models():
    paper = pd.DataFrame({"model": ["ViT-Base", "ViT-Base"], "strategy": ["DDP", "FULL_SHARD"],
                          "peak_active_memory_gb_per_gcd": [10.0, 4.0], "source": "paper"})
    prof = profile({"model": "vit_base", "strategy": "DDP", "nodes": 2, "images_per_s": 1.0, "peak_mem_gb": 9.0},
                   {"model": "vit_base", "strategy": "DDP", "nodes": 1, "images_per_s": 1.0, "peak_mem_gb": 8.0},
                   {"model": "vit_base", "strategy": "FULL_SHARD", "nodes": 1, "images_per_s": None,
                    "peak_mem_gb": None, "status": "impossible: x"},
                   {"model": "demo_tiny", "strategy": "DDP", "nodes": 1, "images_per_s": 1.0, "peak_mem_gb": 0.1})
    data = T.peak_memory_series(paper, prof)
    assert data[data["source"] == N.PAPER]["peak_mem_gb"].tolist() == [10.0, 4.0]
    mine = data[data["source"] == N.PROJECT]
    assert mine[["model", "strategy", "peak_mem_gb", "nodes"]].values.tolist() == [["ViT-Base", "DDP", 8.0, 1]]


def test_paper_prefetch_series_takes_the_paper_model_and_node_count_only():
    paper = pd.DataFrame({"strategy": ["FULL_SHARD", "FULL_SHARD"], "backward_prefetch": ["NONE", "BACKWARD_PRE"],
                          "limit_all_gathers": [True, False], "images_per_s": [80.0, 100.0], "source": "paper"})
    prof = profile({"model": "vit_5b", "strategy": "FULL_SHARD", "nodes": 8, "images_per_s": 90.0},
                   {"model": "vit_5b", "strategy": "FULL_SHARD", "nodes": 4, "images_per_s": 50.0},
                   {"model": "vit_3b", "strategy": "FULL_SHARD", "nodes": 8, "images_per_s": 150.0})
    data = T.paper_prefetch_series(paper, prof)
    assert data[data["source"] == N.PAPER]["option"].tolist() == [
        "prefetch=NONE, limit_all_gathers=true", "prefetch=BACKWARD_PRE, limit_all_gathers=false"]
    assert data[data["source"] == N.PROJECT]["images_per_s"].tolist() == [90.0]


def test_prefetch_relative_compares_runs_that_differ_only_in_prefetch():
    prof = profile(
        {"model": "vit_5b", "strategy": "FULL_SHARD", "nodes": 8, "images_per_s": 100.0, "backward_prefetch": 0,
         "compile": False, "variant": "none"},
        {"model": "vit_5b", "strategy": "FULL_SHARD", "nodes": 8, "images_per_s": 120.0, "backward_prefetch": 1,
         "compile": False},
        # compiled: another cell, whose only run has no no-prefetch baseline
        {"model": "vit_5b", "strategy": "FULL_SHARD", "nodes": 8, "images_per_s": 200.0, "backward_prefetch": 1,
         "compile": True, "variant": "compiled"},
    )
    rel = T.prefetch_relative(pd.DataFrame(), prof)
    assert rel["variant"].tolist() == ["none", "base"]
    assert rel["relative"].tolist() == pytest.approx([1.0, 1.2])
    assert rel["option"].tolist() == [T.prefetch_option(0), T.prefetch_option(1)]


def test_profile_table_says_na_for_a_measured_run_without_reserved_memory():
    prof = profile(
        {"model": "demo_tiny", "strategy": "DDP", "nodes": 1, "images_per_s": 10.0, "peak_reserved_gb": None,
         "device": "CPU"},
        {"model": "demo_tiny", "strategy": "FULL_SHARD", "nodes": 1, "images_per_s": 12.0, "peak_reserved_gb": 3.0},
        {"model": "demo_tiny", "strategy": "NO_SHARD", "nodes": 1, "images_per_s": None, "peak_mem_gb": None,
         "peak_reserved_gb": None, "status": "impossible: x"},
    )
    table = T.profile_table(prof)
    assert "ok" not in table.columns and list(table.columns[:len(PROFILE_COLUMNS) - 2]) == PROFILE_COLUMNS[:-2]
    assert table["peak_reserved_gb"].tolist()[:2] == [T.NOT_AVAILABLE, 3.0]
    assert pd.isna(table["peak_reserved_gb"].iloc[2])  # not measured: empty, not n/a
    # every reserved value present: the column stays numeric (the demo's table is unchanged)
    full = T.profile_table(prof.iloc[1:2])
    assert full["peak_reserved_gb"].dtype == float


def test_variant_comparison_keeps_cells_with_more_than_one_variant():
    prof = profile({"model": "vit_base", "strategy": "DDP", "nodes": 1, "images_per_s": 1.0},
                   {"model": "vit_base", "strategy": "DDP", "nodes": 1, "images_per_s": 2.0, "variant": "c",
                    "variant_settings": json.dumps({"compile": True})},
                   {"model": "vit_3b", "strategy": "DDP", "nodes": 1, "images_per_s": 3.0})
    v = T.variant_comparison(prof)
    assert set(v["cell"]) == {"ViT-Base DDP 1n"}
    assert v.set_index("variant")["variant_label"].to_dict() == {"base": "base", "c": "c (compile=True)"}


def test_accuracy_table_sorts_by_protocol_dataset_and_size():
    ev = pd.DataFrame({"protocol": ["knn", "knn", "linprobe"], "dataset": ["d", "d", "d"],
                       "model": ["vit_huge", "vit_base", "vit_base"], "display_name": ["ViT-Huge", "ViT-Base", "ViT-Base"],
                       "params": [6e8, 8e7, 8e7], "init": ["pretrained"] * 3, "top1": [0.9, 0.8, 0.7],
                       "top5": [1.0] * 3, "n_train": [1] * 3, "n_test": [1] * 3, "checkpoint_step": [5] * 3,
                       "image_size": [224] * 3, "path": ["p"] * 3})
    acc = T.accuracy_table(ev)
    assert list(zip(acc["protocol"], acc["model"])) == [("knn", "vit_base"), ("knn", "vit_huge"),
                                                        ("linprobe", "vit_base")]
    assert "path" not in acc.columns


def test_peak_memory_draws_the_allocator_peak_else_the_process_rss():
    """CPU runs record no allocator peak (null) but the process's peak RSS: the figure draws RSS then, and the
    allocator's peak wherever any run measured one (a GPU run beside CPU runs keeps the device figure)."""
    cpu = pd.DataFrame({"peak_mem_gb": [np.nan, np.nan], "peak_rss_gb": [0.75, 0.8]})
    assert T.peak_memory_column(cpu) == "peak_rss_gb"
    gpu = cpu.assign(peak_mem_gb=[np.nan, 12.5])
    assert T.peak_memory_column(gpu) == "peak_mem_gb"
    older = pd.DataFrame({"peak_mem_gb": [3.0]})  # results written before peak_rss_gb existed
    assert T.peak_memory_column(older) == "peak_mem_gb"


def test_records_that_are_not_results_are_skipped_with_a_note(tmp_path, capsys):
    """A torn JSON and a JSON that is not a record (a list) among good results: both skipped, each named on
    stderr; the good one is read."""
    from geofm.plots.readers import load_eval_results

    d = tmp_path / "eval" / "knn" / "demo_tiny"
    d.mkdir(parents=True)
    good = {"protocol": "knn", "model": "demo_tiny", "dataset": "a",
            "pretrained": {"top1": 0.5, "top5": 1.0}, "random_init": {"top1": 0.25, "top5": 1.0}}
    (d / "a.json").write_text(json.dumps(good))
    (d / "b.json").write_text('{"protocol": "kn')
    (d / "c.json").write_text("[]")
    df = load_eval_results(tmp_path)
    assert set(df["dataset"]) == {"a"}
    err = capsys.readouterr().err
    assert "b.json" in err and "c.json" in err and "not a result record" in err, err


def test_figures_on_a_results_path_that_does_not_exist(tmp_path, capsys):
    import yaml

    from geofm.cli import main

    cfg = yaml.safe_load(open(__file__.rsplit("/tests/", 1)[0] + "/config/demo.yaml"))
    cfg["results"] = str(tmp_path / "resluts")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["figures", "--config", str(tmp_path / "c.yaml")]) == 1
    err = capsys.readouterr().err
    assert f"results directory {tmp_path / 'resluts'} does not exist" in err and not (tmp_path / "resluts").exists()
