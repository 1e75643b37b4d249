"""Latency-bandwidth cost of one collective on a described cluster, per algorithm (ring, tree), with the
group's placement (members per node, nodes spanned) deciding which links it crosses.

The latency terms follow NCCL/RCCL's own tuning model (``src/graph/tuning.cc``, ``ncclTopoTuneModel``): a ring
all-gather or reduce-scatter over p ranks on n nodes takes p-1 steps of which n-1 cross the network; an
all-reduce twice that; a (double binary) tree all-reduce 2·((p/n - 1)·intra + log2(n)·inter). All-gather and
reduce-scatter have only the ring. The bandwidth term is the bytes each rank moves (ring: (p-1)/p of the
buffer per pass, all-reduce two passes) over the slowest link of the ring: the intra-node ring bandwidth, or,
once the group leaves the node, the node's network bandwidth shared by the groups that run at the same time
(gpus_per_node / members_per_node of them: the replica groups of a hybrid mesh all reduce together).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .cluster import Cluster


@dataclass(frozen=True)
class Group:
    size: int  # ranks
    per_node: int  # members of the group inside one node
    nodes: int  # nodes the group spans


def group_of(size: int, stride: int, gpus_per_node: int) -> Group:
    """A process group of ``size`` ranks whose members are ``stride`` ranks apart (1: consecutive ranks, the
    shard group of a hybrid mesh; k: the replica group of a mesh with shard size k)."""
    if size <= 1:
        return Group(1, 1, 1)
    span = size * stride
    if span <= gpus_per_node:
        return Group(size, size, 1)
    per_node = max(1, gpus_per_node // stride) if stride < gpus_per_node else 1
    return Group(size, per_node, math.ceil(size / per_node))


def _bus_bw(c: Cluster, g: Group) -> float:
    if g.nodes == 1:
        return c.intra_bw * 1e9
    share = c.inter_bw * min(1.0, g.per_node / c.gpus_per_node)
    return min(c.intra_bw, share) * 1e9


def ring_time(c: Cluster, g: Group, nbytes: float, passes: int) -> float:
    """``passes`` = 1 for all-gather / reduce-scatter (``nbytes`` = the full, unsharded buffer), 2 for all-reduce."""
    if g.size <= 1 or nbytes <= 0:
        return 0.0
    steps, inter = passes * (g.size - 1), passes * (g.nodes - 1)
    lat = c.base_lat + (steps - inter) * c.intra_lat + inter * c.inter_lat
    return lat + passes * (g.size - 1) / g.size * nbytes / _bus_bw(c, g)


def tree_allreduce_time(c: Cluster, g: Group, nbytes: float) -> float:
    if g.size <= 1 or nbytes <= 0:
        return 0.0
    lat = c.base_lat + 2 * ((g.per_node - 1) * c.tree_intra_lat + math.log2(max(g.nodes, 1)) * c.tree_inter_lat)
    return lat + 2 * nbytes / _bus_bw(c, g)


def all_gather(c: Cluster, g: Group, nbytes: float) -> float:
    return ring_time(c, g, nbytes, 1)


def reduce_scatter(c: Cluster, g: Group, nbytes: float) -> float:
    return ring_time(c, g, nbytes, 1)


def hierarchical_allreduce_time(c: Cluster, g: Group, nbytes: float) -> float:
    """Reduce-scatter inside each node, all-reduce of the 1/per_node slice across nodes (one rank per node,
    ring or tree), all-gather inside the node: what hierarchical libraries (e.g. PCCL, NCCL's CollNet/NVLS
    paths) do. Offered to the tuner only where the cluster lists ``hierarchical`` under
    ``collective.algorithms``: stock NCCL/RCCL run ring or tree."""
    if g.size <= 1 or nbytes <= 0:
        return 0.0
    if g.nodes == 1 or g.per_node == 1:
        return min(ring_time(c, g, nbytes, 2), tree_allreduce_time(c, g, nbytes))
    local = Group(g.per_node, g.per_node, 1)
    across = Group(g.nodes, 1, g.nodes)
    part = nbytes / g.per_node
    return (ring_time(c, local, nbytes, 1) + min(ring_time(c, across, part, 2), tree_allreduce_time(c, across, part))
            + ring_time(c, local, nbytes, 1))


def all_reduce(c: Cluster, g: Group, nbytes: float) -> tuple[float, str]:
    """(seconds, algorithm): the fastest of the cluster's algorithms (ring and tree, as NCCL's tuner picks;
    hierarchical where listed)."""
    options = {"ring": ring_time(c, g, nbytes, 2), "tree": tree_allreduce_time(c, g, nbytes)}
    if "hierarchical" in c.algorithms:
        options["hierarchical"] = hierarchical_allreduce_time(c, g, nbytes)
    options = {k: v for k, v in options.items() if k in c.algorithms} or options
    algo = min(options, key=options.get)
    return options[algo], algo
