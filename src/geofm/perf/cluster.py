"""Clusters as data: ``clusters.yaml`` next to this file (Frontier, a generic 8x H100 InfiniBand cluster), merged
with the config's ``plan.clusters``; ``plan.cluster`` picks one."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from importlib import resources as ir

import yaml

from ..profile.peaks import DEVICES, DevicePeak

# defaults of the optional keys of a cluster description (the clusters.yaml format; its header documents them)
OPTIONAL = {"algorithms": ["ring", "tree"], "ring_slowdown": {"factor": 1.0, "ranks": 2048, "scope": "step"},
            "overlap": 1.0, "package": {"gpus": 1, "bandwidth_gbs": 0}}
REQUIRED = {"gpus_per_node": (int,), "device": (str,), "memory_gb": (int, float),
            "intra_node": (dict,), "inter_node": (dict,), "collective": (dict,), "compute_efficiency": (int, float)}
LINK_KEYS = ("bandwidth_gbs", "hop_latency_us")
COLL_KEYS = ("base_latency_us", "tree_intra_hop_us", "tree_inter_hop_us")


class ClusterError(ValueError):
    pass


@dataclass(frozen=True)
class Cluster:
    name: str
    description: str
    gpus_per_node: int
    device: DevicePeak
    memory_gb: float
    intra_bw: float  # GB/s
    intra_lat: float  # s per ring hop
    inter_bw: float  # GB/s per node
    inter_lat: float
    base_lat: float
    tree_intra_lat: float
    tree_inter_lat: float
    compute_efficiency: float
    algorithms: tuple = ("ring", "tree")
    # measured slow-down of the library's node-spanning ring all-gather / reduce-scatter at ``ring_slowdown_ranks``
    # ranks against the latency-bandwidth cost (1: the library reaches the model; collective.ring_slowdown)
    ring_slowdown: float = 1.0
    ring_slowdown_ranks: int = 2048
    # what it multiplies: "step" (the per-step latency of the ring: the causes Singh et al. name) or "collective"
    # (the whole collective's time)
    ring_slowdown_scope: str = "step"
    # fraction of the shorter of compute and communication that running them concurrently saves
    # (collective.overlap; 1: the ideal max(compute, communication), 0: serialised)
    overlap: float = 1.0
    # GPUs of one package with their own faster links (intra_node.package; Frontier: the 2 GCDs of a MI250X)
    package_gpus: int = 1
    package_bw: float = 0.0  # GB/s

    def describe_comm(self) -> list[str]:
        """The communication parameters the plan uses (published, not fitted), as ``geofm plan`` prints them."""
        return [f"communication ({self.name}; published figures, not fitted): network ring step "
                f"{self.inter_lat * 1e6:.1f} us, {self.inter_bw:g} GB/s per node; intra-node {self.intra_bw:g} GB/s"
                f"{f' ({self.package_bw:g} GB/s inside a {self.package_gpus}-GPU package)' if self.package_gpus > 1 else ''}; "
                f"ring_slowdown = {self.ring_slowdown:g}x at {self.ring_slowdown_ranks} ranks "
                f"(per {'ring step' if self.ring_slowdown_scope == 'step' else 'collective'} of node-spanning "
                f"all-gather/reduce-scatter, linear in ring length); overlap = {self.overlap:g} "
                f"(of the ideal compute/communication overlap realised)"]

    def peak_flops(self, precision: str) -> float:
        return self.device.tflops(precision) * 1e12


def builtin_clusters() -> dict:
    return yaml.safe_load(ir.files("geofm.perf").joinpath("clusters.yaml").read_text())


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in (b or {}).items():
        out[k] = _merge(out.get(k) or {}, v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_cluster(cfg: dict | None = None, name: str | None = None) -> Cluster:
    from ..config import section_defaults

    plan = {**section_defaults("plan"), **((cfg or {}).get("plan") or {})}  # geofm.config fills these at load
    every = _merge(builtin_clusters(), plan.get("clusters") or {})
    name = name or plan["cluster"]
    if name not in every:
        raise ClusterError(f"plan.cluster: unknown cluster {name!r} (known: {', '.join(every)})")
    d = every[name]
    where = f"plan.clusters.{name}"
    for key, types in REQUIRED.items():
        if not isinstance(d.get(key), types):
            raise ClusterError(f"{where}.{key}: missing or not a {types[0].__name__}")
    for sect, keys in (("intra_node", LINK_KEYS), ("inter_node", LINK_KEYS), ("collective", COLL_KEYS)):
        for k in keys:
            v = d[sect].get(k)
            if not isinstance(v, (int, float)) or v < 0 or (k == "bandwidth_gbs" and v == 0):
                raise ClusterError(f"{where}.{sect}.{k}: missing or not a positive number")
    coll = {**OPTIONAL, **d["collective"]}
    algos = tuple(coll["algorithms"])
    if not algos or set(algos) - {"ring", "tree", "hierarchical"}:
        raise ClusterError(f"{where}.collective.algorithms: a list of ring, tree, hierarchical; got {list(algos)}")
    slow = {**OPTIONAL["ring_slowdown"], **coll["ring_slowdown"]} if isinstance(coll["ring_slowdown"], dict) \
        else coll["ring_slowdown"]
    if not (isinstance(slow, dict) and isinstance(slow.get("factor"), (int, float)) and slow["factor"] >= 1
            and isinstance(slow.get("ranks"), int) and slow["ranks"] > 1
            and slow.get("scope") in ("step", "collective")):
        raise ClusterError(f"{where}.collective.ring_slowdown: {{factor: number >= 1, ranks: integer > 1, "
                           f"scope: step | collective}}; got {slow!r}")
    overlap = coll["overlap"]
    if not isinstance(overlap, (int, float)) or not 0 <= overlap <= 1:
        raise ClusterError(f"{where}.collective.overlap: a number in [0, 1]; got {overlap!r}")
    pkg = d["intra_node"].get("package", OPTIONAL["package"])
    if not (isinstance(pkg, dict) and isinstance(pkg.get("gpus"), int) and pkg["gpus"] >= 1
            and isinstance(pkg.get("bandwidth_gbs"), (int, float)) and (pkg["gpus"] == 1 or pkg["bandwidth_gbs"] > 0)):
        raise ClusterError(f"{where}.intra_node.package: {{gpus: integer >= 1, bandwidth_gbs: positive number}}; "
                           f"got {pkg!r}")
    if d["device"] not in DEVICES:
        raise ClusterError(f"{where}.device: {d['device']!r} is not in the peak table ({', '.join(DEVICES)})")
    us = 1e-6
    mem = float((cfg or {}).get("profile", {}).get("device_memory_gb") or d["memory_gb"]) \
        if name == plan["cluster"] else float(d["memory_gb"])
    return Cluster(name, d.get("description", ""), d["gpus_per_node"], DEVICES[d["device"]], mem,
                   float(d["intra_node"]["bandwidth_gbs"]), d["intra_node"]["hop_latency_us"] * us,
                   float(d["inter_node"]["bandwidth_gbs"]), d["inter_node"]["hop_latency_us"] * us,
                   d["collective"]["base_latency_us"] * us, d["collective"]["tree_intra_hop_us"] * us,
                   d["collective"]["tree_inter_hop_us"] * us, float(d["compute_efficiency"]), algos,
                   float(slow["factor"]), int(slow["ranks"]), slow["scope"], float(overlap),
                   int(pkg["gpus"]), float(pkg["bandwidth_gbs"]))
