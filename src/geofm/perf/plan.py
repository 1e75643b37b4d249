"""``geofm plan``: predicted images/s, step parts, memory and node-hours of every cell of the profile grid on a
described cluster, the study's node-hours, and the validation against the paper's Frontier measurements."""
from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..distributed.strategies import ImpossibleStrategy
from ..models.registry import display_name, name_from_display
from .calibrate import Calibration, calibrate, paper_one_node, project_one_node
from .cluster import Cluster, load_cluster
from .memory import estimate, feasibility
from .model import predict
from .workload import Workload, run_setting

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "plots" / "reference"
WEAK_SCALING_CSV = REFERENCE_DIR / "frontier_weak_scaling_ips.csv"
PEAK_MEMORY_CSV = REFERENCE_DIR / "frontier_peak_memory_gb.csv"
PAPER_CLUSTER = "frontier"  # the machine the paper's numbers were measured on

PLAN_COLUMNS = ["model", "display_name", "strategy", "nodes", "world_size", "fits", "status", "images_per_s",
                "step_s", "compute_s", "exposed_comm_s", "optimizer_s", "comm_total_s", "allreduce_algorithm",
                "mfu", "peak_mem_gb_per_gpu", "device_memory_gb", "mem_state_gb", "mem_param_copies_gb",
                "mem_grads_in_flight_gb", "mem_activations_gb", "efficiency", "profile_node_hours",
                "runtime_min", "cluster"]


def paper_workload(model: str, **over) -> Workload:
    """A cell as the paper ran it (224 px, 32 images per GCD, bf16, MAE decoder 512 x 8, activation
    checkpointing per block, FSDP's backward prefetch; the settings config/config.yaml reproduces) with the
    paper's FSDP API, FSDP1 (``FullyShardedDataParallel``: its prefetch study,
    ``frontier_prefetch_vit5b_8nodes_ips.csv``, sets ``backward_prefetch`` BACKWARD_PRE/BACKWARD_POST and
    ``limit_all_gathers``, arguments FSDP2's ``fully_shard`` does not have); ``over`` changes a field (the
    structural comparison of ``structure_steps``)."""
    return Workload(model, **{**dict(image_size=224, batch_per_gpu=32, precision="bf16", activation_checkpointing=1,
                                     backward_prefetch=1, fsdp_api="fsdp1"), **over})


def plan_settings(cfg: dict) -> dict:
    """The ``plan`` section with the schema's defaults for absent keys (geofm.config fills them at load)."""
    from ..config import section_defaults

    return {**section_defaults("plan"), **(cfg.get("plan") or {})}


def workload_factory(cfg: dict, section: str = "profile", **over):
    return lambda model: Workload.from_config(cfg, model, section, **over)


def calibration_for(cfg: dict, cluster: Cluster, sources=None, paper_over: dict | None = None) -> Calibration:
    sources = plan_settings(cfg)["calibration"] if sources is None else sources
    cells = []
    if "paper" in sources and cluster.name == PAPER_CLUSTER:  # the paper's cells in the paper's setting
        cells += [("paper", *c, paper_workload(c[0], **(paper_over or {}))) for c in paper_one_node(WEAK_SCALING_CSV)]
    if "project" in sources:
        own = workload_factory(cfg)
        cells += [("project", *c, own(c[0])) for c in project_one_node(Path(cfg["results"]),
                                                                       cluster.device.key)]
    return calibrate(cells, cluster)


_CLUSTERS: dict = {}


def cell_feasibility(cfg: dict, model: str, strategy: str, nodes: int, settings: dict | None = None) -> tuple[str, float | None]:
    """The verdict the DAG acts on for one profile cell: ("ok" | "impossible: …", predicted GB per GPU), with
    the job's own geometry (nodes × profile.procs_per_node ranks) and the variant's ``settings`` (precision,
    activation checkpointing, prefetch); memory limit ``profile.device_memory_gb``, else the cluster's."""
    import json

    pr = cfg["profile"]
    key = json.dumps([cfg.get("plan"), pr.get("device_memory_gb")], sort_keys=True, default=str)
    if key not in _CLUSTERS:  # the DAG asks for hundreds of cells of one config
        _CLUSTERS.clear()
        _CLUSTERS[key] = load_cluster(cfg)
    mem = pr.get("device_memory_gb") or _CLUSTERS[key].memory_gb
    over = {k: v for k, v in (settings or {}).items()
            if k in ("precision", "activation_checkpointing", "backward_prefetch")}
    w = Workload.from_config(cfg, model, **over)
    return feasibility(w, strategy, nodes * run_setting(cfg, "profile", "procs_per_node"), mem)


def cell(w: Workload, strategy: str, nodes: int, cluster: Cluster, cal: Calibration, steps: int = 0) -> dict:
    world = nodes * cluster.gpus_per_node
    status, need = feasibility(w, strategy, world, cluster.memory_gb)
    row = {"model": w.model, "display_name": display_name(w.model), "strategy": strategy, "nodes": nodes,
           "world_size": world, "fits": status == "ok", "status": status, "device_memory_gb": cluster.memory_gb,
           "peak_mem_gb_per_gpu": need, "cluster": cluster.name}
    if need is None:
        return row
    row.update(estimate(w, strategy, world).parts_gb())
    if status != "ok":  # cannot run: no throughput to predict
        return row
    eff = cal.eff(w.model)
    p = predict(w, strategy, nodes, cluster, eff, cal.factor(strategy))
    row.update(images_per_s=p.images_per_s, step_s=p.step_s, compute_s=p.compute_s,
               exposed_comm_s=p.exposed_comm_s, optimizer_s=p.optimizer_s, comm_total_s=p.comm_total_s,
               allreduce_algorithm=p.allreduce_algorithm, efficiency=eff * cal.factor(strategy),
               mfu=p.images_per_s * w.train_flops_per_image() / world / cluster.peak_flops(w.precision))
    return row


def plan_rows(cfg: dict, cluster: Cluster | None = None, cal: Calibration | None = None) -> list[dict]:
    """One row per model × strategy × node count of the config's profile grid (base variant)."""
    cluster = cluster or load_cluster(cfg)
    cal = cal or calibration_for(cfg, cluster)
    pr, ps = cfg["profile"], plan_settings(cfg)
    steps = run_setting(cfg, "profile", "warmup_steps") + run_setting(cfg, "profile", "steps") + 1
    rows = []
    for model in pr["models"]:
        w = Workload.from_config(cfg, model)
        for strategy in pr["strategies"]:
            for nodes in pr["nodes"]:
                r = cell(w, strategy, nodes, cluster, cal)
                if r.get("step_s"):
                    secs = steps * r["step_s"] + ps["job_overhead_s"]
                    r["profile_node_hours"] = secs * nodes / 3600
                    r["runtime_min"] = max(1, int(-(-secs * ps["runtime_margin"] // 60)))
                rows.append(r)
    return rows


def pretrain_node_hours(cfg: dict, cluster: Cluster, cal: Calibration) -> dict:
    """Node-hours of pretraining each config model at its own strategy, nodes and steps (the pretrain section
    under ``pretrain.per_model.<model>``: the geometry the pretrain rule asks for and ``geofm schedule`` counts)."""
    out = {}
    for model in cfg["models"]:
        def get(key, model=model):
            return run_setting(cfg, "pretrain", key, model)

        nodes = get("nodes")
        w = Workload.from_config(cfg, model, "pretrain", activation_checkpointing=get("activation_checkpointing"),
                                 precision=get("precision"), backward_prefetch=get("backward_prefetch"),
                                 mask_ratio=get("mask_ratio"), decoder_dim=get("decoder_dim"),
                                 decoder_depth=get("decoder_depth"), prediction_ratio=get("prediction_ratio"),
                                 batch_per_gpu=max(1, get("batch_size") // (nodes * get("procs_per_node"))))
        r = cell(w, get("strategy"), nodes, cluster, cal)
        if not r.get("step_s"):
            out[model] = {"status": r["status"], "nodes": nodes, "node_hours": None}
            continue
        out[model] = {"status": r["status"], "step_s": r["step_s"], "images_per_s": r["images_per_s"],
                      "nodes": nodes, "node_hours": get("steps") * r["step_s"] * nodes / 3600}
    return out


def write_plan(rows: list[dict], path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=PLAN_COLUMNS, extrasaction="ignore")
        wr.writeheader()
        for r in rows:
            wr.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in PLAN_COLUMNS})
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------------------- validation
@dataclass
class Validation:
    ips_median_abs_err: float
    fastest_named: int
    fastest_pairs: int
    eff_mean_abs_diff_points: float
    memory_median_abs_err: float
    cells: list  # (model, strategy, nodes, measured, predicted)
    fastest: list  # (model, nodes, measured best, predicted best)
    efficiency: list  # (model, strategy, nodes, measured eff, predicted eff)
    memory: list  # (model, strategy, k, measured GB, predicted GB)

    @property
    def fastest_share(self) -> float:
        return self.fastest_named / self.fastest_pairs if self.fastest_pairs else float("nan")

    def pick_shortfall(self) -> list[float]:
        """Per (model, nodes) pair: 1 - the paper's images/s of the plan's pick / the paper's best (0 where the
        plan names the fastest): what following the plan would have cost on the paper's own measurements."""
        meas = {(m, s, n): a for m, s, n, a, _ in self.cells}
        return [1 - meas[(m, b, n)] / meas[(m, a, n)] for m, n, a, b in self.fastest]


def _read(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def validate(cfg: dict, predictor=None, cluster: Cluster | None = None, cal: Calibration | None = None,
             paper_over: dict | None = None) -> Validation:
    """Compare predictions with the paper's multi-node measurements and peak memory.

    ``predictor(model, strategy, nodes) -> images/s`` defaults to the model calibrated on the paper's 1-node
    cells only; any other predictor (e.g. the 1-node figure × nodes) is scored the same way.
    """
    cluster = cluster or _paper_cluster(cfg)
    if predictor is None:
        cal = cal or calibration_for(cfg, cluster, sources=["paper"], paper_over=paper_over)
        wl = {}

        def predictor(model, strategy, nodes):
            w = wl.setdefault(model, paper_workload(model, **(paper_over or {})))
            return predict(w, strategy, nodes, cluster, cal.eff(model), cal.factor(strategy)).images_per_s
    ref = _read(WEAK_SCALING_CSV)
    meas = {}
    for r in ref:
        m = name_from_display(r["model"])
        if m:
            meas[(m, r["strategy"], int(r["nodes"]))] = float(r["images_per_s"])
    pred = {k: predictor(*k) for k in meas}
    cells = [(m, s, n, meas[(m, s, n)], pred[(m, s, n)]) for (m, s, n) in meas if n > 1]
    errs = [abs(p / v - 1) for *_, v, p in cells]
    fastest = []
    for m, n in sorted({(m, n) for m, _, n in meas if n > 1}):
        strat = [s for (mm, s, nn) in meas if mm == m and nn == n]
        fastest.append((m, n, max(strat, key=lambda s: meas[(m, s, n)]), max(strat, key=lambda s: pred[(m, s, n)])))
    eff = []
    for m, s in sorted({(m, s) for m, s, _ in meas}):
        ns = sorted(n for (mm, ss, n) in meas if mm == m and ss == s)
        n0, n1 = ns[0], ns[-1]
        if n1 == n0:
            continue
        e_m = meas[(m, s, n1)] / (meas[(m, s, n0)] * n1 / n0)
        e_p = pred[(m, s, n1)] / (pred[(m, s, n0)] * n1 / n0)
        eff.append((m, s, n1, e_m, e_p))
    memory = []
    for r in _read(PEAK_MEMORY_CSV):
        m = name_from_display(r["model"])
        k = int(r["gcds_in_shard_group"])
        world = max(cluster.gpus_per_node, k)
        try:
            got = estimate(paper_workload(m), r["strategy"], world).total_gb
        except ImpossibleStrategy:
            continue
        memory.append((m, r["strategy"], k, float(r["peak_active_memory_gb_per_gcd"]), got))
    # named: the plan's pick is a fastest strategy of the paper (where two share the best images/s, either)
    named = sum(1 for m, n, a, b in fastest if meas[(m, b, n)] == meas[(m, a, n)])
    return Validation(statistics.median(errs), named, len(fastest),
                      100 * statistics.fmean(abs(a - b) for *_, a, b in eff),
                      statistics.median(abs(g / v - 1) for *_, v, g in memory), cells, fastest, eff, memory)


SCORE_HEADER = ("fastest named | efficiency, mean abs. difference | images/s, median abs. error | "
                "plan's pick below the best, median |")


def _paper_cluster(cfg: dict) -> Cluster:
    return load_cluster({**cfg, "plan": {**(cfg.get("plan") or {}), "cluster": PAPER_CLUSTER}})


def _score(cfg: dict, label: str, c: Cluster, paper_over: dict | None = None, hybrid_family: bool = True) -> str:
    cal = calibration_for(cfg, c, sources=["paper"], paper_over=paper_over)
    cal.hybrid_family = hybrid_family
    v = validate(cfg, cluster=c, cal=cal, paper_over=paper_over)
    return (f"| {label} | {v.fastest_named}/{v.fastest_pairs} | {v.eff_mean_abs_diff_points:.1f} points | "
            f"{100 * v.ips_median_abs_err:.1f} % | {100 * statistics.median(v.pick_shortfall()):.1f} % |")


def _sensitivity(cfg: dict, field: str, header: str, values) -> str:
    """Markdown: the validation's scaling metrics with Frontier's ``collective.<field>`` set to each of
    ``values`` (None: the cluster's own value, marked "(clusters.yaml)")."""
    import dataclasses

    base = _paper_cluster(cfg)
    lines = [f"| {header} | " + SCORE_HEADER, "|---|---|---|---|---|"]
    for v in values:
        c = base if v is None else dataclasses.replace(base, **{field: v})
        lines.append(_score(cfg, f"{getattr(c, field):g}{' (clusters.yaml)' if v is None else ''}", c))
    return "\n".join(lines)


def ring_slowdown_sensitivity(cfg: dict, factors=(1.0, 6.0, None, 33.0)) -> str:
    """Without RCCL's shortfall (1) and at both ends of the published range (Singh et al.: RCCL's all-gather
    6-33x slower than a bandwidth-optimal one on 2,048 GCDs), beside the cluster's own value."""
    return _sensitivity(cfg, "ring_slowdown", "ring_slowdown at 2,048 ranks", factors)


def overlap_sensitivity(cfg: dict, values=(1.0, 0.42, None, 0.0)) -> str:
    """The ideal overlap (1), what Agrawal et al. reach with prioritised, partitioned compute units (0.42), the
    measured default (clusters.yaml), serialised (0)."""
    return _sensitivity(cfg, "overlap", "overlap (share of the ideal saving realised)", values)


def structure_steps(cfg: dict) -> str:
    """Markdown: the metrics as each structural choice is added in turn, from the earlier model (ideal overlap,
    RCCL's shortfall on the whole collective, one intra-node bandwidth, DDP unbucketed, HYBRID_16GPUs at factor
    1, FSDP2's HYBRID_1GPU for the paper's FSDP1 runs) to the plan's; every step is a cited fact or a rule of
    the calibration, none a fitted number."""
    import dataclasses

    final = _paper_cluster(cfg)
    # the earlier model: one DDP all-reduce per unit, FSDP2's semantics for the paper's runs
    unbucketed = {"ddp_bucket_mb": float("inf"), "fsdp_api": "fsdp2"}
    fsdp2 = {"fsdp_api": "fsdp2"}
    steps = [("earlier model: ideal overlap, shortfall x whole collective, one intra-node link, DDP per unit",
              dataclasses.replace(final, overlap=1.0, ring_slowdown_scope="collective", package_gpus=1), unbucketed),
             ("+ measured compute/communication interference (overlap 0.21, Agrawal et al.)",
              dataclasses.replace(final, ring_slowdown_scope="collective", package_gpus=1), unbucketed),
             ("+ RCCL's shortfall on the ring's steps (Singh et al.'s causes), not its bandwidth",
              dataclasses.replace(final, package_gpus=1), unbucketed),
             ("+ MI250X package link, 200 GB/s, for HYBRID_2GPUs' shard group (OLCF guide)", final, unbucketed),
             ("+ DDP's 25 MiB gradient buckets, one all-reduce each (torch DDP default)", final, fsdp2)]
    lines = ["| model structure | " + SCORE_HEADER, "|---|---|---|---|---|"]
    lines += [_score(cfg, label, c, over, hybrid_family=False) for label, c, over in steps]
    lines.append(_score(cfg, "+ HYBRID_16GPUs (no 1-node cell) at the hybrids' median factor, not 1", final, fsdp2))
    lines.append(_score(cfg, "+ the paper's FSDP1: HYBRID_1GPU's 1-rank shard group clamped to NO_SHARD, no "
                             "gradient reduction (torch _init_core_state; pytorch#154888) = the plan", final))
    return "\n".join(lines)


def model_sensitivity(cfg: dict) -> str:
    """The three tables ``geofm plan --validate`` prints after the validation."""
    return ("what each structural choice moved (cumulative):\n\n" + structure_steps(cfg)
            + "\n\nsensitivity to the published RCCL shortfall (collective.ring_slowdown; not fitted):\n\n"
            + ring_slowdown_sensitivity(cfg)
            + "\n\nsensitivity to the measured overlap (collective.overlap; not fitted):\n\n"
            + overlap_sensitivity(cfg))


def one_node_times_nodes(meas_csv: Path = WEAK_SCALING_CSV):
    """The naive predictor the issue compares against: each 1-node figure × the node count (cells without a
    1-node figure: the smallest node count's figure scaled)."""
    base = {}
    for r in _read(meas_csv):
        m = name_from_display(r["model"])
        key = (m, r["strategy"])
        n = int(r["nodes"])
        if key not in base or n < base[key][0]:
            base[key] = (n, float(r["images_per_s"]))
    return lambda m, s, n: base[(m, s)][1] * n / base[(m, s)][0]


def validation_report(v: Validation, naive: Validation | None = None) -> str:
    """Markdown: the summary against the targets, then per (model, strategy) efficiency and the misses."""
    def pct(x):
        return f"{100 * x:.1f} %"
    lines = ["| metric (multi-node cells of the paper) | target | plan | 1-node × nodes |", "|---|---|---|---|"]
    nv = naive
    lines.append(f"| fastest strategy named, (model, nodes) pairs | ≥ 75 % | {v.fastest_named}/{v.fastest_pairs} "
                 f"= {pct(v.fastest_share)} | " + (f"{nv.fastest_named}/{nv.fastest_pairs} = {pct(nv.fastest_share)}"
                                                   if nv else "") + " |")
    lines.append(f"| weak-scaling efficiency at the largest node count, mean abs. difference | ≤ 10 points | "
                 f"{v.eff_mean_abs_diff_points:.1f} points | " + (f"{nv.eff_mean_abs_diff_points:.1f} points" if nv else "") + " |")
    sf = sorted(v.pick_shortfall())
    lines.append(f"| paper's images/s of the plan's pick below the paper's best: median, worst | | "
                 f"{pct(statistics.median(sf))}, {pct(sf[-1])} | "
                 + (f"{pct(statistics.median(sorted(nv.pick_shortfall())))}, {pct(max(nv.pick_shortfall()))}"
                    if nv else "") + " |")
    lines.append(f"| images/s, median abs. error | ≤ 10 % | {pct(v.ips_median_abs_err)} | "
                 + (pct(nv.ips_median_abs_err) if nv else "") + " |")
    lines.append(f"| peak memory per GCD, median abs. error (all {len(v.memory)} rows) | ≤ 20 % | "
                 f"{pct(v.memory_median_abs_err)} | |")
    lines += ["", "| model | strategy | nodes | efficiency paper | efficiency plan |", "|---|---|---|---|---|"]
    for m, s, n, a, b in v.efficiency:
        lines.append(f"| {display_name(m)} | {s} | {n} | {a:.2f} | {b:.2f} |")
    meas_of = {(m, s, n): a for m, s, n, a, _ in v.cells}
    lines += ["", "| model | nodes | fastest (paper) | fastest (plan; its paper images/s below the best) |",
              "|---|---|---|---|"]
    for m, n, a, b in v.fastest:
        short = "" if a == b else "  (tied in the paper)" if meas_of[(m, b, n)] == meas_of[(m, a, n)] else \
            f"  ✗ ({100 * (1 - meas_of[(m, b, n)] / meas_of[(m, a, n)]):.0f} % slower)"
        lines.append(f"| {display_name(m)} | {n} | {a} | {b}{short} |")
    lines += ["", "| model | strategy | shard group | paper GB | model GB | error |", "|---|---|---|---|---|---|"]
    for m, s, k, a, b in v.memory:
        lines.append(f"| {display_name(m)} | {s} | {k} | {a:.1f} | {b:.1f} | {100 * (b / a - 1):+.0f} % |")
    return "\n".join(lines)
