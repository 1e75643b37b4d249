"""Calibration of the performance model from single-node figures only.

Free parameters (named, printed by ``geofm plan``):

- ``efficiency[model]``: achieved fraction of the dense peak of the device for the model's compute, one per
  model: the median, over the model's 1-node cells of the FSDP strategies, of the efficiency at which the
  model reproduces the measured images/s (the cell's modelled intra-node communication taken into account);
- ``ddp_factor``: DDP's compute rate relative to the FSDP strategies' at one node, the median over models
  (the paper's DDP ran 2-2.6x slower than NO_SHARD already on one node, which is not communication).

Sources: the paper's 1-node cells (``frontier_weak_scaling_ips.csv`` rows with nodes = 1, only for the
Frontier cluster they were measured on) and this project's own 1-node profile results
(``{results}/profile/{model}/{strategy}/1n.json``, status ok, on the planned cluster's device). Multi-node cells
are never read here. Models without a 1-node figure use the cluster's ``compute_efficiency``.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..distributed.strategies import ImpossibleStrategy, parse_strategy
from .cluster import Cluster
from .model import predict
from .workload import Workload


@dataclass
class Calibration:
    default_efficiency: float
    efficiency: dict = field(default_factory=dict)
    ddp_factor: float = 1.0
    cells: list = field(default_factory=list)  # (source, model, strategy, images/s, implied efficiency)

    def eff(self, model: str) -> float:
        return self.efficiency.get(model, self.default_efficiency)

    def factor(self, strategy: str) -> float:
        return self.ddp_factor if parse_strategy(strategy).kind == "ddp" else 1.0

    def describe(self) -> list[str]:
        lines = [f"calibration: {len(self.cells)} one-node cell(s); free parameters:"]
        for m, e in self.efficiency.items():
            n = sum(1 for c in self.cells if c[1] == m)
            lines.append(f"  efficiency[{m}] = {e:.3f}  (fraction of dense peak; median of {n} 1-node cell(s))")
        lines.append(f"  ddp_factor = {self.ddp_factor:.3f}  (DDP compute rate / FSDP's, 1-node cells)")
        lines.append(f"  default efficiency (cluster compute_efficiency, models without a 1-node figure) = "
                     f"{self.default_efficiency:.3f}")
        return lines


def implied_efficiency(w: Workload, strategy: str, cluster: Cluster, ips: float, factor: float = 1.0) -> float:
    """The efficiency at which the model predicts ``ips`` images/s on one node (bisection; monotone)."""
    lo, hi = 1e-4, 1.5
    for _ in range(60):
        mid = (lo + hi) / 2
        if predict(w, strategy, 1, cluster, mid, factor).images_per_s < ips:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def paper_one_node(reference_csv: Path) -> list[tuple[str, str, float]]:
    """(model key, strategy, images/s) of the paper's 1-node cells."""
    import csv

    from ..models.registry import name_from_display

    out = []
    with open(reference_csv) as fh:
        for r in csv.DictReader(fh):
            if int(r["nodes"]) == 1 and name_from_display(r["model"]):
                out.append((name_from_display(r["model"]), r["strategy"], float(r["images_per_s"])))
    return out


def project_one_node(results: Path, device_key: str) -> list[tuple[str, str, float]]:
    """This project's own 1-node profile results measured on ``device_key`` (base variant only)."""
    out = []
    for p in sorted(Path(results).glob("profile/*/*/1n.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if rec.get("status") == "ok" and rec.get("device") == device_key and rec.get("images_per_s"):
            out.append((rec["model"], rec["strategy"], float(rec["images_per_s"])))
    return out


def calibrate(cells: list[tuple[str, str, str, float, Workload]], cluster: Cluster) -> Calibration:
    """``cells``: (source, model key, strategy, 1-node images/s, the cell's Workload)."""
    cal = Calibration(cluster.compute_efficiency)
    per_model: dict[str, list[float]] = {}
    ddp: list[tuple[str, float]] = []
    for src, model, strategy, ips, w in cells:
        try:
            parse_strategy(strategy)
            e = implied_efficiency(w, strategy, cluster, ips)
        except (ImpossibleStrategy, ValueError, KeyError):
            continue
        cal.cells.append((src, model, strategy, ips, e))
        if parse_strategy(strategy).kind == "ddp":
            ddp.append((model, e))
        else:
            per_model.setdefault(model, []).append(e)
    cal.efficiency = {m: statistics.median(v) for m, v in per_model.items()}
    ratios = [e / cal.efficiency[m] for m, e in ddp if m in cal.efficiency]
    if ratios:
        cal.ddp_factor = statistics.median(ratios)
    return cal
