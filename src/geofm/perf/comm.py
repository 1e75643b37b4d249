"""Latency-bandwidth cost of one collective on a described cluster, per algorithm (ring, tree), with the
group's placement (members per node, nodes spanned) deciding which links it crosses.

The latency terms follow NCCL/RCCL's own tuning model (``src/graph/tuning.cc``, ``ncclTopoTuneModel``) for the
hop latencies: a ring all-gather or reduce-scatter over p ranks takes p-1 steps (at the intra-node hop latency
inside a node, at the network's once it spans nodes: see below); an all-reduce twice that; a (double binary)
tree all-reduce 2·((p/n - 1)·intra + log2(n)·inter). All-gather and reduce-scatter have only the ring; an
all-reduce takes the faster of ring and tree for its message size and group, as the library's tuner does. The bandwidth term is the bytes each rank moves (ring: (p-1)/p of the
buffer per pass, all-reduce two passes) over the slowest link of the ring: the intra-node ring bandwidth, or,
once the group leaves the node, the node's network bandwidth shared by the groups that run at the same time
(gpus_per_node / members_per_node of them: the replica groups of a hybrid mesh all reduce together).

Inside a node the ring runs at the intra-node ring bandwidth, except for a group that lies within one
package of the cluster's ``intra_node.package`` (Frontier: the two GCDs of one MI250X, 200 GB/s over four
Infinity Fabric links, against 50-100 GB/s between GCDs of different MI250X, OLCF Frontier User Guide): the
shard group of HYBRID_2GPUs, whose consecutive ranks are the two GCDs of one MI250X.

Two corrections for rings that leave the node:

- every step at the network's pace: a ring step ends when every rank has received its chunk, so once the
  ring crosses nodes each of its p-1 steps costs the network hop's latency plus the chunk (buffer/p) over the
  link, the Hockney latency-bandwidth ring (Thakur, Rabenseifner, Gropp, "Optimization of Collective
  Communication Operations in MPICH", IJHPCA 2005: (p-1)·alpha + (p-1)/p·n·beta), not NCCL's pipelined model
  in which only the n-1 node crossings pay the network latency;
- the library's measured shortfall at scale (``collective.ring_slowdown``): Singh et al., "The Big Send-off"
  (arXiv:2504.18658) measured RCCL's ring all-gather 6-33x slower than a bandwidth-optimal hierarchical one
  on 2,048 GCDs of Frontier and name as its causes the ring's latency, linear in p, and traffic forced into
  the Cassini NIC's software overflow path at scale: costs per ring step, which grow with the ring. So the
  factor multiplies the per-step latency of node-spanning all-gathers and reduce-scatters, growing linearly
  with the ring's length from 1 inside a node to ``factor`` at ``ranks`` ranks; the bandwidth term of a ring,
  (p-1)/p·n·beta, does not depend on p and is left as the links give it (``scope: collective`` multiplies
  the whole collective instead: the earlier reading, kept for ``geofm plan --validate``'s comparison).
  All-reduces (tree at scale) are left as NCCL's model has them.
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
    stride: int = 1  # ranks between consecutive members


def group_of(size: int, stride: int, gpus_per_node: int) -> Group:
    """A process group of ``size`` ranks whose members are ``stride`` ranks apart (1: consecutive ranks, the
    shard group of a hybrid mesh; k: the replica group of a mesh with shard size k)."""
    if size <= 1:
        return Group(1, 1, 1, stride)
    span = size * stride
    if span <= gpus_per_node:
        return Group(size, size, 1, stride)
    per_node = max(1, gpus_per_node // stride) if stride < gpus_per_node else 1
    return Group(size, per_node, math.ceil(size / per_node), stride)


def in_package(c: Cluster, g: Group) -> bool:
    """Whether the group's members are the GPUs of one package (consecutive ranks, aligned: ranks are placed
    one per GPU in order, so ranks 2i and 2i+1 are the two GCDs of one MI250X on Frontier)."""
    return g.nodes == 1 and g.stride == 1 and c.package_gpus > 1 and c.package_gpus % g.size == 0 \
        and g.size <= c.package_gpus


def _bus_bw(c: Cluster, g: Group) -> float:
    if in_package(c, g):
        return c.package_bw * 1e9
    if g.nodes == 1:
        return c.intra_bw * 1e9
    share = c.inter_bw * min(1.0, g.per_node / c.gpus_per_node)
    return min(c.intra_bw, share) * 1e9


def ring_time(c: Cluster, g: Group, nbytes: float, passes: int, step_slowdown: float = 1.0) -> float:
    """``passes`` = 1 for all-gather / reduce-scatter (``nbytes`` = the full, unsharded buffer), 2 for all-reduce;
    ``step_slowdown`` multiplies the per-step latency of a node-spanning ring (``ring_slowdown``)."""
    if g.size <= 1 or nbytes <= 0:
        return 0.0
    steps = passes * (g.size - 1)
    if g.nodes == 1:
        lat = c.base_lat + steps * c.intra_lat
    else:  # every step waits for the network hop (see the module's docstring)
        lat = c.base_lat + steps * c.inter_lat * step_slowdown
    return lat + passes * (g.size - 1) / g.size * nbytes / _bus_bw(c, g)


def ring_slowdown(c: Cluster, g: Group) -> float:
    """The library's measured slow-down of a ring step of a node-spanning all-gather / reduce-scatter of
    ``g.size`` ranks: linear in the ring's length, 1 inside a node, ``c.ring_slowdown`` at
    ``c.ring_slowdown_ranks`` ranks."""
    if g.nodes <= 1 or c.ring_slowdown <= 1:
        return 1.0
    return 1.0 + (c.ring_slowdown - 1.0) * (g.size - 1) / (c.ring_slowdown_ranks - 1)


def tree_allreduce_time(c: Cluster, g: Group, nbytes: float) -> float:
    if g.size <= 1 or nbytes <= 0:
        return 0.0
    lat = c.base_lat + 2 * ((g.per_node - 1) * c.tree_intra_lat + math.log2(max(g.nodes, 1)) * c.tree_inter_lat)
    return lat + 2 * nbytes / _bus_bw(c, g)


def all_gather(c: Cluster, g: Group, nbytes: float) -> float:
    if c.ring_slowdown_scope == "collective":  # the whole time (the earlier reading; kept for the comparison)
        return ring_time(c, g, nbytes, 1) * ring_slowdown(c, g)
    return ring_time(c, g, nbytes, 1, ring_slowdown(c, g))


def reduce_scatter(c: Cluster, g: Group, nbytes: float) -> float:
    return all_gather(c, g, nbytes)  # the same ring, run backwards, with a reduction per step


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
