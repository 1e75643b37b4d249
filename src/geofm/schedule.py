"""How a study maps onto a batch system: batch jobs (bundles), walltimes, submissions, node-hours.

One source for the Snakefile (which rules exist and what they ask Slurm for), ``geofm schedule`` (the numbers
the README states) and the tests. Not to be confused with ``geofm plan`` (``geofm.perf``), which predicts
each cell's throughput, memory and node-hours; this module counts batch jobs, submissions and walltime chunks
against the scheduler's limits, over the profile cells ``geofm.perf`` finds feasible (the DAG's own list). A study's batch jobs:

- ``tile``: one per dataset that is tiled (``scheduler.tile_nodes`` node, ``tile`` rule runtime);
- ``pretrain``: one per model, resubmitted up to ``retries`` times; each chunk checkpoints at the walltime
  signal and the next resumes (``geofm.train.pretrain``), so ``(retries + 1)`` chunks must cover the
  estimated time (FLOPs of the step, ``geofm.train.flops``, at ``expected_mfu`` of ``device_peak_tflops``);
  ``geofm plan``'s prediction (``geofm.perf``) is shown beside it, with a note where its chunks would not
  fit the retries (a second opinion, not a limit: the perf model is calibrated on 1-node cells only);
- ``evaluate``: one per model, running every protocol x dataset as its own cell;
- ``profile``: the profile cells (``{model}/{strategy}/{nodes}n{.variant}.json``) grouped by allocation
  shape (model x node count) and packed, ``profile.runtime_min`` each, into as few jobs as the walltime of
  that node count allows (``scheduler.walltime_bins``).

Frontier's limits (OLCF, "Frontier User Guide", section "Scheduling Policy": "Job Priority by Node Count"
and "batch Partition (queue) Policy"): at most 100 jobs queued per user across partitions (more are
rejected at submission), 4 eligible to run; walltime 2 h for 1-91 nodes, 6 h for 92-183, 12 h from 184.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

CELL_RE = re.compile(r"(?:^|/)profile/(?P<model>[A-Za-z0-9_]+)/(?P<strategy>[A-Z0-9_]+[a-z]*)/"
                     r"(?P<nodes>[0-9]+)n(?P<variant>(?:\.[a-z][a-z0-9_]*)?)\.json$")
# minutes of a pretraining chunk that train nothing: start-up, resume, and the checkpoint written at the
# walltime signal (profiles/frontier: sbatch --signal=USR1@300)
CHUNK_OVERHEAD_MIN = 15
TILE_RETRIES = 1  # workflow/rules/tiles.smk: a tile job that dies resumes from its finished shards


class ScheduleError(ValueError):
    pass


def max_walltime_min(cfg: dict, nodes: int) -> int | None:
    """The longest walltime (minutes) a job of ``nodes`` may ask for; None without limits."""
    bins = cfg["scheduler"]["walltime_bins"]
    for b in sorted(bins, key=lambda b: b["max_nodes"]):
        if nodes <= b["max_nodes"]:
            return int(b["max_min"])
    if bins:
        raise ScheduleError(f"{nodes} nodes is above every scheduler.walltime_bins entry")
    return None


@dataclass
class Cell:
    path: str
    model: str
    strategy: str
    nodes: int
    variant: str  # "" or ".name"


def parse_cell(path: str) -> Cell:
    m = CELL_RE.search(str(path))
    if not m:
        raise ScheduleError(f"not a profile cell path: {path}")
    return Cell(str(path), m["model"], m["strategy"], int(m["nodes"]), m["variant"])


@dataclass
class Bundle:
    name: str  # e.g. vit_5b-8n or vit_5b-8n-2
    model: str
    nodes: int
    cells: list[Cell] = field(default_factory=list)
    runtime_min: int = 0


def profile_bundles(cfg: dict, cell_paths) -> list[Bundle]:
    """Group profile cells by allocation shape (model x nodes), keeping their order, and pack each group
    into jobs whose summed cell budgets (``profile.runtime_min`` per cell) fit the walltime of that node
    count. Takes any list of cell paths (e.g. after a feasibility filter)."""
    per_cell = int(cfg["profile"]["runtime_min"])
    groups: dict[tuple[str, int], list[Cell]] = {}
    for p in cell_paths:
        c = parse_cell(p)
        groups.setdefault((c.model, c.nodes), []).append(c)
    out = []
    for (model, nodes), cells in groups.items():
        cap = max_walltime_min(cfg, nodes)
        if cap is not None and per_cell > cap:
            raise ScheduleError(f"profile.runtime_min {per_cell} exceeds the {cap}-minute walltime of {nodes}-node jobs")
        per_job = len(cells) if cap is None else max(1, cap // per_cell)
        chunks = [cells[i:i + per_job] for i in range(0, len(cells), per_job)]
        for i, chunk in enumerate(chunks):
            name = f"{model}-{nodes}n" + (f"-{i + 1}" if len(chunks) > 1 else "")
            out.append(Bundle(name, model, nodes, chunk, per_cell * len(chunk)))
    return out


def pretrain_estimate_h(cfg: dict, model: str) -> float:
    """Hours of pretraining ``model`` at ``expected_mfu`` (the project's FLOP count of an MAE step)."""
    from .config import pretrain_settings
    from .train.flops import mae_train_flops_per_image

    p = pretrain_settings(cfg, model)
    flops = mae_train_flops_per_image(model, cfg["image_size"], 3, p["mask_ratio"], p["decoder_dim"],
                                      p["decoder_depth"], p["prediction_ratio"])
    total = flops * p["steps"] * p["batch_size"]
    devices = p["nodes"] * p["procs_per_node"]
    return total / (devices * p["device_peak_tflops"] * 1e12 * p["expected_mfu"]) / 3600


@dataclass
class PretrainPlan:
    model: str
    nodes: int
    runtime_min: int
    retries: int
    estimate_h: float
    chunks_needed: int

    @property
    def max_submissions(self) -> int:
        return self.retries + 1


def pretrain_plan(cfg: dict, model: str) -> PretrainPlan:
    from .config import pretrain_settings

    p = pretrain_settings(cfg, model)
    est = pretrain_estimate_h(cfg, model)
    return PretrainPlan(model, p["nodes"], p["runtime_min"], p["retries"], est, chunks_for(cfg, model, est))


def chunks_for(cfg: dict, model: str, hours: float) -> int:
    """Chunks of ``model``'s ``runtime_min`` that ``hours`` of training need (each loses its start-up,
    resume and final checkpoint)."""
    from .config import pretrain_settings

    rt = pretrain_settings(cfg, model)["runtime_min"]
    useful = rt - min(CHUNK_OVERHEAD_MIN, rt / 4)  # a short chunk (tests) counts a quarter of itself
    return max(1, math.ceil(hours * 60 / useful))


def perf_pretrain_h(cfg: dict) -> dict:
    """Wall hours of pretraining each model as ``geofm plan`` predicts them (``geofm.perf``: the calibrated
    step model on ``plan.cluster``, at the model's own nodes and strategy); a model the performance model
    cannot price (it does not fit, or the cluster is unknown) maps to None."""
    try:
        from .perf.cluster import load_cluster
        from .perf.plan import calibration_for, pretrain_node_hours

        cluster = load_cluster(cfg)
        pre = pretrain_node_hours(cfg, cluster, calibration_for(cfg, cluster))
    except (ValueError, KeyError, FileNotFoundError):
        return {m: None for m in cfg["models"]}
    return {m: (v["node_hours"] / v["nodes"] if v.get("node_hours") else None) for m, v in pre.items()}


def evaluate_geometry(cfg: dict, model: str) -> tuple[int, int, int]:
    """(nodes, ranks per node, runtime minutes) of ``model``'s evaluation job."""
    from .config import evaluate_settings

    e = evaluate_settings(cfg, model)
    return int(e["nodes"]), int(e["procs_per_node"]), int(e["runtime_min"])


def tiled_datasets(cfg: dict) -> list[str]:
    return list(dict.fromkeys([cfg["pretrain_dataset"], *cfg["eval_datasets"]]))


def study_schedule(cfg: dict, cell_paths) -> dict:
    """Every batch job of the study with its nodes and walltime; totals of submissions and node-hours
    (``requested``: every job runs to its walltime, pretraining using all its retries; ``expected``:
    pretraining takes its estimate, everything else its walltime)."""
    jobs = []
    tile_nodes = int(cfg["scheduler"]["tile_nodes"])
    for ds in tiled_datasets(cfg):
        jobs.append({"rule": "tile", "name": ds, "nodes": tile_nodes,
                     "runtime_min": int(cfg["scheduler"]["tile_runtime_min"]),
                     "submissions": 1 + TILE_RETRIES})
    pre = []
    perf_h = perf_pretrain_h(cfg)
    notes = []
    for m in cfg["models"]:
        pp = pretrain_plan(cfg, m)
        pre.append(pp)
        ph = perf_h.get(m)
        jobs.append({"rule": "pretrain", "name": m, "nodes": pp.nodes, "runtime_min": pp.runtime_min,
                     "submissions": pp.max_submissions, "estimate_h": round(pp.estimate_h, 2),
                     "chunks_needed": pp.chunks_needed, "plan_h": None if ph is None else round(ph, 2),
                     "plan_chunks": None if ph is None else chunks_for(cfg, m, ph)})
        if ph is not None and chunks_for(cfg, m, ph) > pp.retries + 1:
            notes.append(f"pretrain {m}: geofm plan predicts ~{ph:,.1f} h on {pp.nodes} nodes, "
                         f"{chunks_for(cfg, m, ph)} chunks of {pp.runtime_min} min; retries {pp.retries} allow "
                         f"{pp.retries + 1} (raise pretrain.per_model.{m}.retries if you trust that prediction)")
    for m in cfg["models"]:
        n, ppn, rt = evaluate_geometry(cfg, m)
        jobs.append({"rule": "evaluate", "name": m, "nodes": n, "runtime_min": rt, "submissions": 1})
    for b in profile_bundles(cfg, cell_paths):
        jobs.append({"rule": "profile", "name": b.name, "nodes": b.nodes, "runtime_min": b.runtime_min,
                     "submissions": 1, "cells": len(b.cells)})
    requested = sum(j["nodes"] * j["runtime_min"] / 60 * j["submissions"] for j in jobs)
    expected = sum(j["nodes"] * (j["estimate_h"] if j["rule"] == "pretrain" else j["runtime_min"] / 60)
                   for j in jobs)
    problems = []
    for j in jobs:
        cap = max_walltime_min(cfg, j["nodes"])
        if cap is not None and j["runtime_min"] > cap:
            problems.append(f"{j['rule']} {j['name']}: {j['runtime_min']} min on {j['nodes']} nodes exceeds the "
                            f"{cap}-minute walltime of that node count")
    for pp in pre:
        if pp.retries + 1 < pp.chunks_needed:
            problems.append(f"pretrain {pp.model}: about {pp.estimate_h:.1f} h need {pp.chunks_needed} chunks of "
                            f"{pp.runtime_min} min, but retries {pp.retries} allow {pp.retries + 1}")
    subs = sum(j["submissions"] for j in jobs)
    limit = cfg["scheduler"]["max_submissions"]
    if limit and subs > limit:
        problems.append(f"the study needs up to {subs} batch submissions, above scheduler.max_submissions {limit}")
    return {"jobs": jobs, "submissions": subs, "node_hours_requested": requested,
            "node_hours_expected": expected, "problems": problems, "notes": notes,
            "profile_cells": sum(j.get("cells", 0) for j in jobs)}


def cell_paths_of(cfg: dict) -> list[str]:
    """The feasible profile cells of a config as the Snakefile lists them (base grid, then each variant's
    part; workflow/rules/common.smk profile_outputs): a cell the memory model rules out
    (``geofm.perf.plan.cell_feasibility``) is no job, so it is in no bundle and needs no submission."""
    from itertools import product

    from .perf.plan import cell_feasibility

    prof, res = cfg["profile"], cfg["results"]

    def ok(cells, settings=None):
        return [(m, s, n) for m, s, n in product(cells["models"], cells["strategies"], cells["nodes"])
                if cell_feasibility(cfg, m, s, int(n), settings)[0] == "ok"]

    out = [f"{res}/profile/{m}/{s}/{n}n.json" for m, s, n in ok(prof)]
    for name, v in prof["variants"].items():
        cells = {k: v.get(k, prof[k]) for k in ("models", "strategies", "nodes")}
        out += [f"{res}/profile/{m}/{s}/{n}n.{name}.json" for m, s, n in ok(cells, v)]
    return out


def format_schedule(plan: dict) -> str:
    lines = [f"{'rule':9} {'job':16} {'nodes':>5} {'walltime':>8} {'subm.':>5}  notes"]
    for j in plan["jobs"]:
        note = ""
        if j["rule"] == "pretrain":
            note = f"~{j['estimate_h']:.1f} h expected, {j['chunks_needed']} chunk(s) needed"
            if j.get("plan_h") is not None:
                note += f"; geofm plan: ~{j['plan_h']:,.1f} h, {j['plan_chunks']} chunk(s)"
        elif j["rule"] == "profile":
            note = f"{j['cells']} cells"
        lines.append(f"{j['rule']:9} {j['name']:16} {j['nodes']:>5} {j['runtime_min']:>5} min {j['submissions']:>5}  {note}")
    lines.append(f"batch submissions (at most, all retries used): {plan['submissions']}; "
                 f"profile cells: {plan['profile_cells']}")
    lines.append(f"node-hours: {plan['node_hours_expected']:,.0f} expected (pretraining at its estimate, the rest "
                 f"at its walltime), {plan['node_hours_requested']:,.0f} at most (every job to its walltime, "
                 "every retry used)")
    for n in plan.get("notes", []):
        lines.append(f"NOTE: {n}")
    for p in plan["problems"]:
        lines.append(f"PROBLEM: {p}")
    return "\n".join(lines)
