"""Calibration of the performance model from single-node figures only.

Free parameters (named, printed by ``geofm plan``):

- ``efficiency[model]``: achieved fraction of the dense peak of the device for the model's compute, one per
  model: the median, over the model's 1-node cells of the FSDP strategies, of the efficiency at which the
  model reproduces the measured images/s (the cell's modelled intra-node communication taken into account);
- ``strategy_factor[strategy]``: the strategy's compute rate relative to its model's efficiency at one node,
  the median over models of (the cell's implied efficiency / the model's). It carries what one node shows
  about a strategy beyond the modelled communication: DDP ran 2-2.6x slower than NO_SHARD already on one node
  (``ddp_factor``, the DDP entry), FULL_SHARD and SHARD_GRAD_OP a few % faster than the replicating
  strategies (they update 1/8 of the optimizer state), HYBRID_2/4/8GPUs a few % slower. A hybrid without a
  1-node cell (HYBRID_16GPUs needs two nodes) takes the median factor of the hybrids that have one (HYBRID_k,
  k > 1: the same 2-D mesh code path of FSDP2, reduce-scatter in the shard group and all-reduce across
  replicas); any other strategy without one, 1.

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


def _is_hybrid(name: str) -> bool:
    st = parse_strategy(name)
    return st.kind == "fsdp" and st.shard_size not in (None, 1)


@dataclass
class Calibration:
    default_efficiency: float
    efficiency: dict = field(default_factory=dict)
    strategy_factor: dict = field(default_factory=dict)
    cells: list = field(default_factory=list)  # (source, model, strategy, images/s, implied efficiency)
    hybrid_family: bool = True  # a hybrid without a 1-node cell takes the hybrids' median (False: 1)

    def eff(self, model: str) -> float:
        return self.efficiency.get(model, self.default_efficiency)

    def factor(self, strategy: str) -> float:
        name = parse_strategy(strategy).name
        if name in self.strategy_factor:
            return self.strategy_factor[name]
        family = self.hybrid_factors()
        return statistics.median(family) if self.hybrid_family and _is_hybrid(name) and family else 1.0

    def hybrid_factors(self) -> list[float]:
        """The factors of the sharded hybrids (HYBRID_k, k > 1) calibrated on a 1-node cell."""
        return [f for st, f in self.strategy_factor.items() if _is_hybrid(st)]

    @property
    def ddp_factor(self) -> float:
        return self.strategy_factor.get("DDP", 1.0)

    def describe(self) -> list[str]:
        lines = [f"calibration: {len(self.cells)} one-node cell(s); free parameters:"]
        for m, e in self.efficiency.items():
            n = sum(1 for c in self.cells if c[1] == m)
            lines.append(f"  efficiency[{m}] = {e:.3f}  (fraction of dense peak; median of {n} 1-node cell(s))")
        for st, f in self.strategy_factor.items():
            n = sum(1 for c in self.cells if c[2] == st)
            name = "ddp_factor" if st == "DDP" else f"strategy_factor[{st}]"
            lines.append(f"  {name} = {f:.3f}  (compute rate / the model's efficiency; median of {n} 1-node cell(s))")
        if self.hybrid_family and self.hybrid_factors():
            lines.append(f"  (a hybrid without a 1-node cell, e.g. HYBRID_16GPUs: the hybrids' median, "
                         f"{statistics.median(self.hybrid_factors()):.3f}; derived, not a parameter)")
        lines.append(f"  default efficiency (cluster compute_efficiency, models without a 1-node figure) = "
                     f"{self.default_efficiency:.3f}")
        return lines


def implied_efficiency(w: Workload, strategy: str, cluster: Cluster, ips: float, factor: float = 1.0) -> float:
    """The efficiency at which the model predicts ``ips`` images/s on one node (bisection; monotone)."""
    lo, hi = 1e-4, 1.5
    for _ in range(45):  # 1.5 / 2**45: far below any printed digit
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
    for src, model, strategy, ips, w in cells:
        try:
            name = parse_strategy(strategy).name
            e = implied_efficiency(w, strategy, cluster, ips)
        except (ImpossibleStrategy, ValueError, KeyError):
            continue
        cal.cells.append((src, model, name, ips, e))
        if parse_strategy(strategy).kind != "ddp":
            per_model.setdefault(model, []).append(e)
    cal.efficiency = {m: statistics.median(v) for m, v in per_model.items()}
    ratios: dict[str, list[float]] = {}
    for _, model, name, _, e in cal.cells:
        if model in cal.efficiency:
            ratios.setdefault(name, []).append(e / cal.efficiency[model])
    cal.strategy_factor = {st: statistics.median(v) for st, v in ratios.items()}
    return cal
