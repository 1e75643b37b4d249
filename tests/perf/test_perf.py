"""geofm.perf and geofm.profile.peaks: the device peak table, the memory model against the paper's peaks, the
collective costs, the step model's behaviour per strategy, calibration from 1-node cells only, the validation
against the paper's multi-node cells, `geofm plan`, and the DAG's feasibility filter."""
import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from geofm.cli import main
from geofm.config import load_config
from geofm.models.registry import name_from_display
from geofm.perf import comm, memory
from geofm.perf.calibrate import calibrate, paper_one_node
from geofm.perf.cluster import ClusterError, load_cluster
from geofm.perf.model import predict
from geofm.perf.plan import (PEAK_MEMORY_CSV, WEAK_SCALING_CSV, calibration_for, cell_feasibility,
                             one_node_times_nodes, paper_workload, validate)
from geofm.perf.workload import Workload
from geofm.profile.peaks import DEVICES, identify, peak

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config" / "config.yaml"


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG)


@pytest.fixture(scope="module")
def frontier(cfg):
    return load_cluster(cfg)


# ----------------------------------------------------------------------------- peaks
@pytest.mark.parametrize("name,key,bf16,fp32", [
    ("NVIDIA H100 80GB HBM3", "H100_SXM", 989.4, 66.9),
    ("NVIDIA H100 PCIe", "H100_PCIE", 756.5, 51.2),
    ("NVIDIA H100 NVL", "H100_NVL", 835.5, 60.0),
    ("NVIDIA H200", "H200_SXM", 989.4, 66.9),
    ("NVIDIA A100-SXM4-80GB", "A100_SXM", 312.0, 19.5),
    ("NVIDIA A100-PCIE-40GB", "A100_PCIE", 312.0, 19.5),
    ("AMD Instinct MI250X", "MI250X_GCD", 191.5, 47.9),
])
def test_peak_table_by_device_name(name, key, bf16, fp32):
    assert identify(name) == key
    assert peak(key, "bf16")[0] == bf16 and peak(key, "fp32")[0] == fp32
    assert "data sheet" in peak(key, "bf16")[1]


def test_peak_table_is_not_half_of_bf16_and_pcie_is_not_sxm():
    # MI250X fp32 runs on the matrix cores at a quarter of bf16; H100 plain fp32 (no TF32) is far below tf32
    assert DEVICES["MI250X_GCD"].fp32 == pytest.approx(DEVICES["MI250X_GCD"].bf16 / 4, rel=0.01)
    assert DEVICES["H100_SXM"].fp32 < DEVICES["H100_SXM"].tf32 / 5
    assert peak(identify("NVIDIA H100 PCIe"), "bf16")[0] < peak("H100_SXM", "bf16")[0]
    assert identify("gfx90a device", arch="gfx90a:sramecc+:xnack-") == "MI250X_GCD"
    assert identify("Some Other GPU") is None


def test_metrics_peak_on_cpu_is_a_measured_roof():
    import torch

    from geofm.train import metrics

    value, src = metrics.peak_tflops(torch.device("cpu"), "fp32")
    assert value > 0 and "measured" in src


# ----------------------------------------------------------------------------- workload
@pytest.mark.parametrize("model", ["test_micro", "demo_tiny"])
def test_workload_parameters_and_flops_match_the_real_model(model):
    from geofm.models.mae import MAE
    from geofm.models.registry import get_spec
    from geofm.train import flops

    w = Workload(model, image_size=32, decoder_dim=32, decoder_depth=2)
    m = MAE(get_spec(model), 32, 3, decoder_dim=32, decoder_depth=2, decoder_heads=2)
    assert w.params_total() == sum(p.numel() for p in m.parameters())
    assert sum(u.params for u in w.units()) == w.params_total()
    assert sum(u.fwd_flops for u in w.units()) == flops.mae_forward_flops(model, 32, 3, 0.75, 32, 2)


# ----------------------------------------------------------------------------- memory
def test_memory_model_against_the_papers_peaks(cfg):
    """Median error within the 20 % target; every row within 40 % (ViT-5B's rows are the worst: the paper's
    model had 5,349M parameters, the shapes of its table count 3.8B)."""
    rows = list(csv.DictReader(open(PEAK_MEMORY_CSV)))
    errs = []
    for r in rows:
        m, k = name_from_display(r["model"]), int(r["gcds_in_shard_group"])
        got = memory.estimate(paper_workload(m), r["strategy"], max(8, k)).total_gb
        errs.append(abs(got / float(r["peak_active_memory_gb_per_gcd"]) - 1))
    errs.sort()
    assert len(errs) == 23 and errs[len(errs) // 2] <= 0.20 and errs[-1] < 0.40


def test_memory_model_terms(cfg):
    w = Workload.from_config(cfg, "vit_3b")
    by_k = [memory.estimate(w, f"HYBRID_{k}GPU{'s' if k > 1 else ''}", 64).total for k in (1, 2, 4, 8)]
    assert by_k == sorted(by_k, reverse=True)  # more sharding, less memory
    # SHARD_GRAD_OP keeps the gathered parameters from forward to backward; FULL_SHARD does not
    assert memory.estimate(w, "SHARD_GRAD_OP", 64).param_copies > 10 * memory.estimate(w, "FULL_SHARD", 64).param_copies
    no_ac = Workload.from_config(cfg, "vit_3b", activation_checkpointing=0)
    assert memory.activation_bytes(no_ac) > 3 * memory.activation_bytes(w)
    with pytest.raises(memory.ImpossibleStrategy):
        memory.estimate(w, "HYBRID_16GPUs", 8)


def test_feasibility_of_the_config_grid_agrees_with_the_paper(cfg):
    """62 of the 432 base cells cannot run on 64 GB GCDs (6 by the mesh); every cell the paper ran can."""
    pr = cfg["profile"]
    cells = [(m, s, n) for m in pr["models"] for s in pr["strategies"] for n in pr["nodes"]]
    verdict = {c: cell_feasibility(cfg, *c) for c in cells}
    bad = {c for c, (st, _) in verdict.items() if st != "ok"}
    assert len(cells) == 432 and len(bad) == 62
    assert sum(1 for c in bad if verdict[c][1] is None) == 6  # HYBRID_16GPUs on one node
    ran = {(name_from_display(r["model"]), r["strategy"], int(r["nodes"])) for r in csv.DictReader(open(WEAK_SCALING_CSV))}
    assert not ran & bad
    st, need = verdict[("vit_15b", "DDP", 4)]
    assert st == f"impossible: needs ~{need:.0f} GB of 64 GB per GPU (memory model)" and need > 200
    # a variant's settings count: without activation checkpointing ViT-3B NO_SHARD no longer fits
    assert cell_feasibility(cfg, "vit_3b", "NO_SHARD", 1)[0] == "ok"
    assert cell_feasibility(cfg, "vit_3b", "NO_SHARD", 1, {"activation_checkpointing": 0})[1] > \
        cell_feasibility(cfg, "vit_3b", "NO_SHARD", 1)[1]


def test_run_settings_resolve_as_the_runs_do(cfg):
    """No inline defaults in geofm.perf: a key comes from the config's section (filled with the schema's
    defaults at load), and a hand-built section gets the same schema defaults, a profile cell's training
    settings from the pretrain section (x-default-from), as geofm profile builds its TrainConfig."""
    import dataclasses

    from geofm.config import section_defaults
    from geofm.perf.plan import plan_settings
    from geofm.perf.workload import run_setting
    from geofm.train.pretrain import TrainConfig

    trainer = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    demo = load_config(ROOT / "config" / "demo.yaml")
    hand = {"pretrain": {"activation_checkpointing": 2}, "profile": {}}
    assert run_setting(hand, "profile", "activation_checkpointing") == 2  # the pretrain section's, as the run
    assert Workload.from_config({**demo, "profile": {k: v for k, v in demo["profile"].items()
                                                     if k != "activation_checkpointing"},
                                 "pretrain": {**demo["pretrain"], "activation_checkpointing": 2}},
                                "demo_tiny").activation_checkpointing == 2
    assert run_setting({"pretrain": {}, "profile": {}}, "profile", "activation_checkpointing") \
        == section_defaults("pretrain")["activation_checkpointing"] == trainer["activation_checkpointing"]
    assert run_setting({"profile": {}}, "profile", "batch_size") == section_defaults("profile")["batch_size"]
    # the section's own value wins; per_model overrides for pretraining
    assert Workload.from_config(cfg, "vit_base").batch_per_gpu == cfg["profile"]["batch_size"] == 32
    own = {**cfg, "pretrain": {**cfg["pretrain"], "per_model": {"vit_base": {"nodes": 4}}}}
    assert run_setting(own, "pretrain", "nodes", "vit_base") == 4 and run_setting(own, "pretrain", "nodes") == 16
    # a model's own recipe (pretrain.per_model) shapes its workload, for its pretraining and its profile cells
    mine = {**cfg, "pretrain": {**cfg["pretrain"], "per_model": {"vit_base": {"decoder_dim": 256, "decoder_depth": 2,
                                                                             "mask_ratio": 0.5}}}}
    for section in ("pretrain", "profile"):
        w = Workload.from_config(mine, "vit_base", section)
        assert (w.decoder_dim, w.decoder_depth, w.mask_ratio) == (256, 2, 0.5), section
        other = Workload.from_config(mine, "vit_huge", section)
        assert (other.decoder_dim, other.mask_ratio) == (cfg["pretrain"]["decoder_dim"], cfg["pretrain"]["mask_ratio"])
    # the plan section: the schema's defaults under a hand-built dict
    assert plan_settings({}) == section_defaults("plan") and plan_settings({})["cluster"] == "frontier"
    assert load_cluster({}).name == "frontier"


# ----------------------------------------------------------------------------- collectives
def test_collective_costs(frontier):
    c = frontier
    one = comm.group_of(8, 1, 8)
    assert (one.nodes, one.per_node) == (1, 8)
    replicas = comm.group_of(64, 8, 8)  # HYBRID_8GPUs replica group on 64 nodes: one member per node
    assert (replicas.nodes, replicas.per_node) == (64, 1)
    # ring latency grows linearly with the ranks: all-gather of a small buffer over 1024 vs 64 ranks
    small = 1e5
    t64, t1024 = comm.all_gather(c, comm.group_of(64, 1, 8), small), comm.all_gather(c, comm.group_of(1024, 1, 8), small)
    assert t1024 > 10 * t64
    # an all-reduce of a small buffer picks the tree at scale, a large one on one node the ring
    assert comm.all_reduce(c, comm.group_of(1024, 1, 8), small)[1] == "tree"
    assert comm.all_reduce(c, one, 4e9)[1] == "ring"
    # bandwidth: 1 GB all-gathered on one node at the ring's intra-node 50 GB/s
    assert comm.all_gather(c, one, 1e9) == pytest.approx(7 / 8 * 1e9 / 50e9, rel=0.01)
    # hierarchical all-reduce only where the cluster's library offers it; then it wins at scale
    world = comm.group_of(1024, 1, 8)
    assert comm.all_reduce(c, world, 4e8)[1] in ("ring", "tree")
    import dataclasses

    # a library with ring and hierarchical (no tree): 1,024-rank ring latency (2,046 steps) loses to a
    # reduce-scatter in the node + a 128-rank ring across nodes + an all-gather in the node
    hier = dataclasses.replace(c, algorithms=("ring", "hierarchical"))
    t, algo = comm.all_reduce(hier, world, 1e5)
    assert algo == "hierarchical" and t < comm.ring_time(c, world, 1e5, 2) / 2
    assert comm.all_reduce(dataclasses.replace(c, algorithms=("ring",)), world, 1e5)[1] == "ring"


def test_rings_that_leave_the_node(frontier):
    """Once a ring crosses nodes every one of its p-1 steps waits for the network hop (Hockney ring), and each
    step of a node-spanning all-gather / reduce-scatter carries RCCL's published shortfall at scale, linear in
    the ring's length: none inside a node, the cluster's factor at its reference rank count; the ring's
    bandwidth term and the all-reduces untouched."""
    import dataclasses

    c = frontier
    assert c.ring_slowdown == pytest.approx(14.07) and c.ring_slowdown_ranks == 2048
    assert c.ring_slowdown_scope == "step"
    two = comm.group_of(16, 1, 8)
    # latency: 15 steps, each at the network hop's 4.5 us (not 14 at xGMI's 2.7 us and one at 4.5 us)
    assert comm.ring_time(c, two, 1.0, 1) == pytest.approx(c.base_lat + 15 * c.inter_lat, rel=1e-3)
    plain = dataclasses.replace(c, ring_slowdown=1.0)
    one, world = comm.group_of(8, 1, 8), comm.group_of(2048, 1, 8)
    assert comm.all_gather(c, one, 1e8) == comm.all_gather(plain, one, 1e8)  # inside a node: no shortfall
    # at 2,048 ranks every one of the 2,047 steps costs 14.07 x the network hop; the bytes cost what they cost
    steps = 2047 * c.inter_lat
    assert comm.all_gather(c, world, 1e8) - comm.all_gather(plain, world, 1e8) == pytest.approx(13.07 * steps)
    assert comm.reduce_scatter(c, world, 1e8) == comm.all_gather(c, world, 1e8)
    # a large buffer is bandwidth-bound: the shortfall adds the same latency, a smaller share of the time
    big = 8e9
    assert comm.all_gather(c, world, big) / comm.all_gather(plain, world, big) < \
        comm.all_gather(c, world, 1e6) / comm.all_gather(plain, world, 1e6)
    # the earlier reading (scope: collective) multiplies the whole time
    whole = dataclasses.replace(c, ring_slowdown_scope="collective")
    assert comm.all_gather(whole, world, 1e8) == pytest.approx(14.07 * comm.all_gather(plain, world, 1e8))
    half = comm.group_of(1024, 1, 8)  # 1,023 of 2,047 ring steps: half the way from 1 to 14.07
    assert comm.ring_slowdown(c, half) == pytest.approx(1 + 13.07 * 1023 / 2047)
    assert comm.all_reduce(c, world, 1e8) == comm.all_reduce(plain, world, 1e8)
    # FULL_SHARD's exposed communication grows past compute at scale (ViT-Base: 3 small collectives per block);
    # a hybrid's replica all-reduce does not
    w = Workload("vit_base", batch_per_gpu=32, activation_checkpointing=1)
    fs = predict(w, "FULL_SHARD", 128, c, 0.06)
    assert fs.exposed_comm_s > 3 * fs.compute_s
    assert predict(w, "FULL_SHARD", 128, plain, 0.06).exposed_comm_s < fs.exposed_comm_s / 5
    assert predict(w, "HYBRID_1GPU", 128, c, 0.06).exposed_comm_s < 0.15 * fs.compute_s


def test_mi250x_package_link(frontier):
    """HYBRID_2GPUs' shard group (ranks 2i, 2i+1) is one MI250X: its ring runs over the package's 200 GB/s; a
    group of two GCDs of different MI250X (a replica group, stride 4) or of four GCDs runs at the node's 50."""
    import dataclasses

    c = frontier
    assert (c.package_gpus, c.package_bw) == (2, 200.0)
    pair, apart, four = comm.group_of(2, 1, 8), comm.group_of(2, 4, 8), comm.group_of(4, 1, 8)
    assert comm.in_package(c, pair) and not comm.in_package(c, apart) and not comm.in_package(c, four)
    assert comm.all_gather(c, pair, 1e9) == pytest.approx(c.base_lat + c.intra_lat + 0.5 * 1e9 / 200e9)
    assert comm.all_gather(c, apart, 1e9) == pytest.approx(c.base_lat + c.intra_lat + 0.5 * 1e9 / 50e9)
    flat = dataclasses.replace(c, package_gpus=1)
    assert comm.all_gather(flat, pair, 1e9) == comm.all_gather(c, apart, 1e9)
    w = Workload("vit_3b", batch_per_gpu=32, activation_checkpointing=1)
    assert predict(w, "HYBRID_2GPUs", 1, c, 0.08).step_s < predict(w, "HYBRID_2GPUs", 1, flat, 0.08).step_s


def test_ddp_all_reduces_per_bucket(frontier):
    """DDP reduces in 25 MiB buckets (torch's default): a ViT-3B block's 4 x 100M-byte fp32 gradient is 16
    all-reduces of 1/16 each, so its latency is paid 16 times; an unbucketed DDP pays it once."""
    import dataclasses
    import math

    from geofm.perf.model import _unit_comm

    w = Workload("vit_3b", batch_per_gpu=32, activation_checkpointing=1)
    params = w.units()[1].params
    nb = math.ceil(4 * params / (25 * 2**20))
    world = comm.group_of(1024, 1, 8)
    one, algo = comm.all_reduce(frontier, world, 4 * params / nb)
    assert _unit_comm(w, "DDP", 1024, frontier, params)[2] == pytest.approx(nb * one) and nb > 10
    flat = dataclasses.replace(w, ddp_bucket_mb=float("inf"))
    assert _unit_comm(flat, "DDP", 1024, frontier, params)[2] == comm.all_reduce(frontier, world, 4 * params)[0]
    assert _unit_comm(flat, "DDP", 1024, frontier, params)[2] < nb * one
    # FSDP2's replicate (NO_SHARD) keeps one all-reduce per unit
    assert _unit_comm(w, "NO_SHARD", 1024, frontier, params)[2] == comm.all_reduce(frontier, world, 4 * params)[0]


def test_fsdp1_hybrid_with_a_one_rank_shard_group_reduces_nothing(cfg, frontier):
    """The paper ran FSDP1, which clamps HYBRID_SHARD over a 1-rank shard group to NO_SHARD over that group
    (torch _init_core_state) and so all-reduces each gradient over one rank: HYBRID_1GPU moves no bytes and
    scales with the nodes as far as its step goes (pytorch/pytorch#154888). FSDP2 (this project's runs) and
    FSDP1's NO_SHARD, over the world, and FSDP1's hybrids with k > 1 keep their reductions."""
    import dataclasses

    from geofm.perf.model import _unit_comm

    paper = paper_workload("vit_1b")
    own = Workload.from_config(cfg, "vit_1b")
    assert paper.fsdp_api == "fsdp1" and own.fsdp_api == "fsdp2"
    params = paper.units()[1].params
    world = comm.group_of(1024, 1, 8)
    ar = comm.all_reduce(frontier, world, 4 * params)[0]
    assert _unit_comm(paper, "HYBRID_1GPU", 1024, frontier, params) == (0.0, 0.0, 0.0, "-")
    fsdp2 = dataclasses.replace(paper, fsdp_api="fsdp2")
    assert ar > 0 and _unit_comm(fsdp2, "HYBRID_1GPU", 1024, frontier, params)[2] == pytest.approx(ar)
    assert _unit_comm(paper, "NO_SHARD", 1024, frontier, params)[2] == pytest.approx(ar)
    assert _unit_comm(paper, "HYBRID_2GPUs", 1024, frontier, params)[2] > 0
    steps = [predict(paper, "HYBRID_1GPU", n, frontier, 0.07) for n in (1, 8, 128)]
    assert all(p.comm_total_s == 0 and p.exposed_comm_s == pytest.approx(0, abs=1e-12) for p in steps)
    assert steps[2].compute_s == steps[0].compute_s
    # FSDP2's replicate all-reduce costs time at 128 nodes; FSDP1's clamped hybrid does not
    assert predict(fsdp2, "HYBRID_1GPU", 128, frontier, 0.07).step_s > steps[2].step_s
    with pytest.raises(ValueError, match="fsdp_api"):
        Workload("vit_1b", fsdp_api="fsdp3")


def test_overlap_is_the_clusters_measured_fraction(frontier):
    """Each window costs compute + communication - overlap x the shorter: 1 is the ideal max(), 0 the sum;
    Frontier's 0.21 (Agrawal et al.) lies between, and the step grows as the overlap falls."""
    import dataclasses

    from geofm.perf.model import window

    assert window(10, 4, 1.0) == 10 and window(10, 4, 0.0) == 14 and window(10, 4, 0.21) == pytest.approx(13.16)
    assert frontier.overlap == pytest.approx(0.21)
    w = Workload("vit_1b", batch_per_gpu=32, activation_checkpointing=1)
    steps = [predict(w, "FULL_SHARD", 8, dataclasses.replace(frontier, overlap=f), 0.07).step_s for f in (1, .21, 0)]
    assert steps[0] < steps[1] < steps[2]
    # the cluster's value is the default; an explicit argument overrides it
    assert predict(w, "FULL_SHARD", 8, frontier, 0.07).step_s == pytest.approx(steps[1])
    assert predict(w, "FULL_SHARD", 8, frontier, 0.07, overlap=1.0).step_s == pytest.approx(steps[0])


# ----------------------------------------------------------------------------- step model
def test_step_model_per_strategy(cfg, frontier):
    w = Workload.from_config(cfg, "vit_base")
    fs = [predict(w, "FULL_SHARD", n, frontier, 0.06) for n in (1, 8, 128)]
    assert fs[0].compute_s == fs[2].compute_s  # weak scaling: the same work per GPU
    assert fs[0].exposed_comm_s < fs[1].exposed_comm_s < fs[2].exposed_comm_s
    # with no backward prefetch the backward all-gathers are exposed
    nopf = Workload.from_config(cfg, "vit_base", backward_prefetch=0)
    assert predict(nopf, "FULL_SHARD", 16, frontier, 0.06).step_s > predict(w, "FULL_SHARD", 16, frontier, 0.06).step_s
    # SHARD_GRAD_OP gathers once per step, FULL_SHARD twice
    sgo = predict(w, "SHARD_GRAD_OP", 32, frontier, 0.06)
    assert sgo.comm_total_s < fs[2].comm_total_s
    # activation checkpointing recomputes the forward: 4/3 of the compute
    no_ac = Workload.from_config(cfg, "vit_base", activation_checkpointing=0)
    ratio = predict(w, "DDP", 1, frontier, 0.06).compute_s / predict(no_ac, "DDP", 1, frontier, 0.06).compute_s
    assert 1.2 < ratio < 4 / 3 + 1e-9
    # an H100 cluster at the same efficiency is faster than a Frontier GCD
    h100 = load_cluster(cfg, "h100_ib")
    assert predict(w, "HYBRID_1GPU", 8, h100, 0.06).images_per_s > 4 * predict(w, "HYBRID_1GPU", 8, frontier, 0.06).images_per_s


def test_calibration_reads_single_node_cells_only(cfg, frontier, tmp_path):
    """Changing every multi-node figure of the reference leaves the calibration unchanged."""
    rows = list(csv.DictReader(open(WEAK_SCALING_CSV)))
    for r in rows:
        if int(r["nodes"]) > 1:
            r["images_per_s"] = str(float(r["images_per_s"]) * 7)
    alt = tmp_path / "ws.csv"
    with open(alt, "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    assert paper_one_node(alt) == paper_one_node(WEAK_SCALING_CSV)
    cal = calibration_for(cfg, frontier, ["paper"])
    assert set(cal.efficiency) == {"vit_base", "vit_huge", "vit_1b", "vit_3b", "vit_5b", "vit_15b"}
    assert all(0.01 < e < 0.5 for e in cal.efficiency.values()) and 0.3 < cal.ddp_factor < 0.8
    # one compute factor per strategy, from the 1-node cells: the sharded ones (1/8 of the optimizer step)
    # a little faster than the replicating ones; a hybrid with no 1-node cell takes the hybrids' median, any
    # other strategy without one 1
    f = cal.strategy_factor
    assert set(f) == {"DDP", "NO_SHARD", "HYBRID_1GPU", "HYBRID_2GPUs", "HYBRID_4GPUs", "HYBRID_8GPUs",
                      "FULL_SHARD", "SHARD_GRAD_OP"}
    assert f["FULL_SHARD"] > f["NO_SHARD"] and all(0.9 < v < 1.1 for k, v in f.items() if k != "DDP")
    import statistics

    hyb = [f[k] for k in ("HYBRID_2GPUs", "HYBRID_4GPUs", "HYBRID_8GPUs")]
    assert cal.factor("HYBRID_16GPUs") == statistics.median(hyb) < 1 and cal.factor("DDP") == cal.ddp_factor
    assert cal.factor("HYBRID_1GPU") == f["HYBRID_1GPU"]
    no_hybrids = calibrate([("paper", *c, paper_workload(c[0])) for c in paper_one_node(WEAK_SCALING_CSV)
                            if not c[1].startswith("HYBRID")], frontier)
    assert no_hybrids.factor("HYBRID_16GPUs") == 1.0
    # the whole calibration, not only the cells read, is the same from the altered reference
    def cal_from(path):
        return calibrate([("paper", *c, paper_workload(c[0])) for c in paper_one_node(path)], frontier)
    a, b = cal_from(alt), cal_from(WEAK_SCALING_CSV)
    assert (a.efficiency, a.strategy_factor) == (b.efficiency, b.strategy_factor) == (cal.efficiency, f)
    # the calibrated model reproduces each model's median 1-node cell
    for m, s, ips in paper_one_node(WEAK_SCALING_CSV):
        if s == "HYBRID_1GPU":
            got = predict(paper_workload(m), s, 1, frontier, cal.eff(m)).images_per_s
            assert got == pytest.approx(ips, rel=0.08)
    # without 1-node cells (another cluster, no project results) the cluster's default efficiency is used
    h100 = load_cluster(cfg, "h100_ib")
    assert calibrate([], h100).eff("vit_base") == h100.compute_efficiency


# ----------------------------------------------------------------------------- validation
def test_fastest_strategy_ties_in_the_paper_count_for_either(cfg):
    """ViT-5B at 4 nodes: FULL_SHARD and SHARD_GRAD_OP both measured 197 images/s; a predictor that names either
    names the fastest; one that names a slower strategy does not."""
    def picking(strategy):
        base = one_node_times_nodes()
        return lambda m, s, n: base(m, s, n) * (2 if (m, n, s) == ("vit_5b", 4, strategy) else 1)
    named = {s: validate(cfg, picking(s)).fastest_named for s in ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_8GPUs")}
    assert named["FULL_SHARD"] == named["SHARD_GRAD_OP"] == named["HYBRID_8GPUs"] + 1


def test_validation_against_the_papers_multi_node_cells(cfg):
    """The scoring reproduces the issue's figures for the naive predictor (1-node figure x nodes: 19 % of the
    fastest strategies, ~3 % median images/s error, ~23 points of efficiency), and the plan's numbers are
    those the README states: images/s, memory and the efficiency at 128 nodes within their targets; FULL_SHARD's
    collapse at 128 nodes predicted from the published RCCL shortfall; the fastest strategy named for at least
    75 % of the pairs."""
    naive = validate(cfg, one_node_times_nodes())
    assert (naive.fastest_named, naive.fastest_pairs) == (8, 42)
    assert naive.ips_median_abs_err == pytest.approx(0.03, abs=0.005)
    assert 20 < naive.eff_mean_abs_diff_points < 25
    v = validate(cfg)
    multi = [r for r in csv.DictReader(open(WEAK_SCALING_CSV)) if int(r["nodes"]) > 1]
    assert len(v.cells) == len(multi) == 217 and v.fastest_pairs == 42
    assert v.ips_median_abs_err <= 0.10
    assert v.memory_median_abs_err <= 0.20
    assert v.fastest_named >= 3 * naive.fastest_named and v.fastest_named / v.fastest_pairs >= 0.75
    assert v.eff_mean_abs_diff_points <= 10 and v.eff_mean_abs_diff_points < naive.eff_mean_abs_diff_points - 10
    eff = {(m, s): (a, b) for m, s, n1, a, b in v.efficiency}
    # FULL_SHARD collapses at 128 nodes in the paper (7-35 % for all but ViT-15B), and in the plan
    for m in ("vit_base", "vit_huge", "vit_1b", "vit_3b", "vit_5b"):
        paper, plan = eff[(m, "FULL_SHARD")]
        assert plan < 0.5 and abs(plan - paper) < 0.15, (m, paper, plan)
    # the replicating strategy scales, in both
    assert all(eff[(m, "HYBRID_1GPU")][1] > 0.95 for m in ("vit_base", "vit_huge", "vit_1b", "vit_3b"))
    # following the plan's pick costs little on the paper's own numbers
    import statistics
    assert statistics.median(v.pick_shortfall()) < 0.02 < statistics.median(naive.pick_shortfall())
    # the sensitivity table: without the published shortfall the efficiency misses by ~15 points again
    from geofm.perf.plan import overlap_sensitivity, ring_slowdown_sensitivity, structure_steps
    rows = [r.split("|")[1:-1] for r in ring_slowdown_sensitivity(cfg, (1.0, None)).splitlines()[2:]]
    assert [r[0].strip() for r in rows] == ["1", "14.07 (clusters.yaml)"]
    without, with_ = (float(r[2].split()[0]) for r in rows)
    assert without > 14 and with_ == pytest.approx(v.eff_mean_abs_diff_points, abs=0.05)
    # with the ideal overlap the fastest strategy is named far less often (the 1-node ties carry on)
    rows = [r.split("|")[1:-1] for r in overlap_sensitivity(cfg, (1.0, None)).splitlines()[2:]]
    ideal, measured = (int(r[1].split("/")[0]) for r in rows)
    assert measured == v.fastest_named and ideal < measured - 4
    # the structural steps start from the earlier model (10.1 points; 22/42 scored without ties, 23/42 with the
    # paper's one exact tie, ViT-5B at 4 nodes, counted for either strategy) and end at the plan's
    rows = [r.split("|")[1:-1] for r in structure_steps(cfg).splitlines()[2:]]
    assert len(rows) == 7 and rows[0][1].strip() == "23/42" and rows[0][2].strip() == "10.1 points"
    assert rows[-1][1].strip() == f"{v.fastest_named}/42"
    assert float(rows[-1][2].split()[0]) == pytest.approx(v.eff_mean_abs_diff_points, abs=0.05)


# ----------------------------------------------------------------------------- CLI and DAG
def test_geofm_plan_cli(tmp_path, capsys):
    out, summ = tmp_path / "plan.csv", tmp_path / "summary.json"
    assert main(["plan", "--config", str(CONFIG), "--out", str(out), "--summary", str(summ)]) == 0
    text = capsys.readouterr().out
    assert "efficiency[vit_base]" in text and "ddp_factor" in text and "node-hours" in text
    assert "strategy_factor[FULL_SHARD]" in text and "ring_slowdown = 14.07x at 2048 ranks" in text
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 432
    need = {"model", "strategy", "nodes", "images_per_s", "peak_mem_gb_per_gpu", "fits", "compute_s", "exposed_comm_s"}
    assert need <= set(rows[0])
    bad = [r for r in rows if r["fits"] == "False"]
    assert len(bad) == 62 and all(r["status"].startswith("impossible") and not r["images_per_s"] for r in bad)
    ok = [r for r in rows if r["fits"] == "True"]
    assert all(float(r["images_per_s"]) > 0 and int(r["runtime_min"]) >= 1 for r in ok)
    s = json.loads(summ.read_text())
    assert s["feasible"] == 370 and s["study_node_hours"] > s["profile_node_hours"] > 0
    # another cluster from the config; an unknown one is a one-line error naming the key
    assert main(["plan", "--config", str(CONFIG), "--cluster", "h100_ib", "--out", str(out)]) == 0
    assert {r["cluster"] for r in csv.DictReader(open(out))} == {"h100_ib"}
    assert main(["plan", "--config", str(CONFIG), "--cluster", "nope"]) == 1
    assert "plan.cluster: unknown cluster 'nope'" in capsys.readouterr().err


def test_cluster_config_errors(cfg):
    bad = {**cfg, "plan": {"cluster": "mine", "clusters": {"mine": {"gpus_per_node": 4}}}}
    with pytest.raises(ClusterError, match="plan.clusters.mine.device"):
        load_cluster(bad)
    # a config may override a built-in cluster's number
    over = {**cfg, "plan": {"cluster": "frontier", "clusters": {"frontier": {"inter_node": {"bandwidth_gbs": 50}}}}}
    assert load_cluster(over).inter_bw == 50 and load_cluster(over).intra_bw == 50
    # the library's shortfall: a mapping {factor >= 1, ranks > 1}; absent (H100 cluster) means none
    slow = {**cfg, "plan": {"cluster": "frontier", "clusters": {"frontier": {"collective": {"ring_slowdown": 0.5}}}}}
    with pytest.raises(ClusterError, match="plan.clusters.frontier.collective.ring_slowdown"):
        load_cluster(slow)
    assert load_cluster(cfg, "h100_ib").ring_slowdown == 1.0


@pytest.mark.slow
def test_dag_skips_impossible_cells(paper_dry_run):
    _, text = paper_dry_run  # tests/conftest.py: the paper's study dry-run once per session
    stats = text.split("Job stats:", 1)[1]
    counts = dict(ln.split()[:2] for ln in stats.splitlines() if ln.split()[:1] == ["plan"]
                  or re.match(r"^profile_\w+$", ln.split()[0] if ln.split() else ""))
    pr = yaml.safe_load((ROOT / "config/config.yaml").read_text())["profile"]
    variants = sum(len(v["models"]) * len(v["strategies"]) * len(v["nodes"]) for v in pr["variants"].values())
    # the cells run in bundles (one job per model x node count, geofm.schedule); the 62 impossible base cells
    # are in none of them
    assert counts.pop("plan") == "1" and len(counts) == 49 and set(counts.values()) == {"1"}
    cells = set(re.findall(r"results/profile/\S+?\.json", text))
    assert len(cells) == 370 + variants
    assert "results/profile/vit_15b/DDP/1n.json" not in text
    assert "results/profile/vit_15b/FULL_SHARD/1n.json" in text


def test_figures_draw_the_plan_and_list_impossible_cells(cfg, tmp_path):
    import pandas as pd

    from geofm.perf.plan import plan_rows, write_plan
    from geofm.plots import figures as F
    from geofm.plots import readers as R
    from geofm.plots.names import PLAN
    from geofm.plots.tables import best_strategy

    write_plan(plan_rows(cfg), tmp_path / "plan" / "plan.csv")
    plan = R.load_plan(tmp_path)
    paper = R.load_reference("weak_scaling")
    res = F.plot_paper_weak_scaling(paper, pd.DataFrame(), tmp_path / "fig.png", plan)
    drawn = res.data[res.data["source"] == PLAN]
    paper_keys = set(zip(paper["model"], paper["strategy"], paper["nodes"]))
    assert set(zip(drawn["model"], drawn["strategy"], drawn["nodes"])) == paper_keys  # every paper cell predicted
    assert "plan: FULL_SHARD" in res.labels and "paper: FULL_SHARD" in res.labels
    listed = R.with_impossible_cells(R.load_profile(tmp_path), cfg)
    assert len(listed) == 62 and not listed["ok"].any()
    assert (listed["status"].str.startswith("impossible: needs ~")).sum() == 56
    best = best_strategy(listed)
    row = best[(best["model"] == "vit_15b") & (best["nodes"] == 1)].iloc[0]
    assert row["strategies_impossible"] == "DDP;NO_SHARD;HYBRID_1GPU;HYBRID_2GPUs;HYBRID_16GPUs"
