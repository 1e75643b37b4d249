"""How a study maps onto a batch system: batch jobs (bundles), walltimes, submissions, node-hours.

One source for the Snakefile (which rules exist and what they ask Slurm for), ``geofm plan`` (the numbers
the README states) and the tests. A study's batch jobs:

- ``tile``: one per dataset that is tiled (``scheduler.tile_nodes`` node, ``tile`` rule runtime);
- ``pretrain``: one per model, resubmitted up to ``retries`` times; each chunk checkpoints at the walltime
  signal and the next resumes (``geofm.train.pretrain``), so ``(retries + 1)`` chunks must cover the
  estimated time (FLOPs of the step, ``geofm.train.flops``, at ``expected_mfu`` of ``device_peak_tflops``);
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


class PlanError(ValueError):
    pass


def max_walltime_min(cfg: dict, nodes: int) -> int | None:
    """The longest walltime (minutes) a job of ``nodes`` may ask for; None without limits."""
    for b in sorted(cfg.get("scheduler", {}).get("walltime_bins") or [], key=lambda b: b["max_nodes"]):
        if nodes <= b["max_nodes"]:
            return int(b["max_min"])
    bins = cfg.get("scheduler", {}).get("walltime_bins")
    if bins:
        raise PlanError(f"{nodes} nodes is above every scheduler.walltime_bins entry")
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
        raise PlanError(f"not a profile cell path: {path}")
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
    per_cell = int(cfg["profile"].get("runtime_min", 10))
    groups: dict[tuple[str, int], list[Cell]] = {}
    for p in cell_paths:
        c = parse_cell(p)
        groups.setdefault((c.model, c.nodes), []).append(c)
    out = []
    for (model, nodes), cells in groups.items():
        cap = max_walltime_min(cfg, nodes)
        if cap is not None and per_cell > cap:
            raise PlanError(f"profile.runtime_min {per_cell} exceeds the {cap}-minute walltime of {nodes}-node jobs")
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
    flops = mae_train_flops_per_image(model, cfg["image_size"], 3, p.get("mask_ratio", 0.75),
                                      p.get("decoder_dim", 512), p.get("decoder_depth", 8))
    total = flops * p["steps"] * p["batch_size"]
    devices = p.get("nodes", 1) * p.get("procs_per_node", 1)
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
    # a short chunk (tests) counts a quarter of itself as overhead instead
    useful = p["runtime_min"] - min(CHUNK_OVERHEAD_MIN, p["runtime_min"] / 4)
    return PretrainPlan(model, p.get("nodes", 1), p["runtime_min"], p["retries"], est,
                        max(1, math.ceil(est * 60 / useful)))


def evaluate_geometry(cfg: dict, model: str) -> tuple[int, int, int]:
    """(nodes, ranks per node, runtime minutes) of ``model``'s evaluation job."""
    from .config import evaluate_settings

    e = evaluate_settings(cfg, model)
    return int(e.get("nodes", 1)), int(e.get("procs_per_node", 1)), int(e.get("runtime_min", 60))


def tiled_datasets(cfg: dict) -> list[str]:
    return list(dict.fromkeys([cfg["pretrain_dataset"], *cfg["eval_datasets"]]))


def study_plan(cfg: dict, cell_paths) -> dict:
    """Every batch job of the study with its nodes and walltime; totals of submissions and node-hours
    (``requested``: every job runs to its walltime, pretraining using all its retries; ``expected``:
    pretraining takes its estimate, everything else its walltime)."""
    jobs = []
    tile_nodes = int(cfg.get("scheduler", {}).get("tile_nodes", 1))
    for ds in tiled_datasets(cfg):
        jobs.append({"rule": "tile", "name": ds, "nodes": tile_nodes,
                     "runtime_min": int(cfg["scheduler"].get("tile_runtime_min", 120)),
                     "submissions": 1 + TILE_RETRIES})
    pre = []
    for m in cfg["models"]:
        pp = pretrain_plan(cfg, m)
        pre.append(pp)
        jobs.append({"rule": "pretrain", "name": m, "nodes": pp.nodes, "runtime_min": pp.runtime_min,
                     "submissions": pp.max_submissions, "estimate_h": round(pp.estimate_h, 2),
                     "chunks_needed": pp.chunks_needed})
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
    limit = cfg.get("scheduler", {}).get("max_submissions")
    if limit and subs > limit:
        problems.append(f"the study needs up to {subs} batch submissions, above scheduler.max_submissions {limit}")
    return {"jobs": jobs, "submissions": subs, "node_hours_requested": requested,
            "node_hours_expected": expected, "problems": problems,
            "profile_cells": sum(j.get("cells", 0) for j in jobs)}


def cell_paths_of(cfg: dict) -> list[str]:
    """The profile cells of a config as the Snakefile lists them (base grid, then each variant's part)."""
    from itertools import product

    prof, res = cfg["profile"], cfg.get("results", "results")
    out = [f"{res}/profile/{m}/{s}/{n}n.json"
           for m, s, n in product(prof["models"], prof["strategies"], prof["nodes"])]
    for name, v in (prof.get("variants") or {}).items():
        cells = {k: v.get(k, prof[k]) for k in ("models", "strategies", "nodes")}
        out += [f"{res}/profile/{m}/{s}/{n}n.{name}.json"
                for m, s, n in product(cells["models"], cells["strategies"], cells["nodes"])]
    return out


def format_plan(plan: dict) -> str:
    lines = [f"{'rule':9} {'job':16} {'nodes':>5} {'walltime':>8} {'subm.':>5}  notes"]
    for j in plan["jobs"]:
        note = ""
        if j["rule"] == "pretrain":
            note = f"~{j['estimate_h']:.1f} h expected, {j['chunks_needed']} chunk(s) needed"
        elif j["rule"] == "profile":
            note = f"{j['cells']} cells"
        lines.append(f"{j['rule']:9} {j['name']:16} {j['nodes']:>5} {j['runtime_min']:>5} min {j['submissions']:>5}  {note}")
    lines.append(f"batch submissions (at most, all retries used): {plan['submissions']}; "
                 f"profile cells: {plan['profile_cells']}")
    lines.append(f"node-hours: {plan['node_hours_expected']:,.0f} expected (pretraining at its estimate, the rest "
                 f"at its walltime), {plan['node_hours_requested']:,.0f} at most (every job to its walltime, "
                 "every retry used)")
    for p in plan["problems"]:
        lines.append(f"PROBLEM: {p}")
    return "\n".join(lines)
