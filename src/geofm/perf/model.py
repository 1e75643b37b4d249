"""Step time of MAE pretraining per model × strategy × node count on a described cluster.

compute: each FSDP unit's forward FLOPs (``Workload.units``; exact, ``geofm.train.flops``) × batch, at an achieved
fraction ``efficiency`` of the device's dense peak (``geofm.profile.peaks``); backward twice the forward, plus
one more forward for a checkpointed block (recomputation).

communication per unit and strategy, in the dtype FSDP2 moves (``MixedPrecisionPolicy(param_dtype=bf16,
reduce_dtype=fp32)``, ``geofm.distributed.parallelize``):

=================  ===============================================================================
DDP                all-reduce of the unit's fp32 gradients over the world during backward, one collective
                   per bucket (``Workload.ddp_bucket_mb``: torch DDP's default 25 MiB)
NO_SHARD           all-reduce of fp32 gradients over the replicate dimension (= the world)
SHARD_GRAD_OP      all-gather of bf16 parameters in forward only (kept to backward); reduce-scatter of
                   fp32 gradients; both over the world
FULL_SHARD         all-gather in forward and again in backward (resharded after forward); reduce-scatter
HYBRID_k           FULL_SHARD inside k consecutive ranks; all-reduce of the fp32 gradient shard (1/k of
                   the unit) across the world/k replicas (ranks k apart)
HYBRID_1GPU        FSDP2: a (world, 1) mesh, the replicate all-reduce of NO_SHARD. FSDP1 (``Workload.fsdp_api``,
                   the paper's API): no collective at all. ``_init_core_state`` (torch/distributed/fsdp/
                   _init_utils.py) clamps any strategy to NO_SHARD when ``state.world_size`` == 1, and for
                   HYBRID_SHARD that is the size of the *shard* group; NO_SHARD's gradient reduction
                   (``_reduce_grad_no_shard``, _runtime_utils.py) then all-reduces over that 1-rank group, and
                   the inter-node (replica) group is only used on the hybrid branch no longer taken: the
                   replicas never synchronise (confirmed by the maintainers as an FSDP1 bug, not planned to be
                   fixed: pytorch/pytorch#154888, "Potential Bug with HYBRID_SHARD and (n, 1) Device Mesh
                   Falling Back to NO_SHARD")
=================  ===============================================================================

overlap: FSDP2 issues the next unit's all-gather while the current unit computes (forward, and backward with
``backward_prefetch`` ≥ 1) and reduces a unit's gradients while the next unit's backward runs. Running them
together is not free: the collectives' kernels share the compute units, caches and HBM with the compute, so a
unit's window costs compute + communication − ``overlap`` · min(compute, communication) (``window``), with the
cluster's measured ``collective.overlap`` (Frontier 0.21: Agrawal et al., arXiv:2412.14335, concurrent
computation and communication realise 21 % of the ideal saving on AMD Instinct GPUs; 1 would be the ideal
max(compute, communication)). The first all-gather and the last reduction are exposed. With ``backward_prefetch: 0`` the backward all-gather is not overlapped. The
optimizer step is memory-bound: 28 bytes per local parameter (read parameter, gradient, two moments;
write parameter and moments) at the device's HBM bandwidth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..distributed.strategies import parse_strategy
from . import comm
from .cluster import Cluster
from .memory import shard_size
from .workload import Workload


@dataclass(frozen=True)
class StepPrediction:
    step_s: float
    compute_s: float
    exposed_comm_s: float
    optimizer_s: float
    comm_total_s: float  # all collectives, overlapped or not
    images_per_s: float
    world: int
    allreduce_algorithm: str


def _unit_comm(w: Workload, strategy: str, world: int, c: Cluster, params: int) -> tuple[float, float, float, str]:
    """(forward all-gather, backward all-gather, gradient reduction) seconds of one unit, and the all-reduce
    algorithm."""
    st = parse_strategy(strategy)
    k = shard_size(strategy, world)
    pb = 2 if w.precision == "bf16" else 4
    g = c.gpus_per_node
    if world == 1:
        return 0.0, 0.0, 0.0, "-"
    if st.kind == "ddp":  # DDP all-reduces its gradients in buckets of 25 MiB (one collective per bucket)
        nb = max(1, math.ceil(4 * params / (w.ddp_bucket_mb * 2**20))) if math.isfinite(w.ddp_bucket_mb) else 1
        t, algo = comm.all_reduce(c, comm.group_of(world, 1, g), 4 * params / nb)
        return 0.0, 0.0, nb * t, algo
    if k == 1 and st.name != "NO_SHARD" and w.fsdp_api == "fsdp1":
        # FSDP1 clamps HYBRID_SHARD over a 1-rank shard group to NO_SHARD over that group: nothing is reduced
        # (module docstring; pytorch/pytorch#154888)
        return 0.0, 0.0, 0.0, "-"
    if k == 1:  # FSDP2 replicate (NO_SHARD, HYBRID_1GPU), FSDP1 NO_SHARD: one all-reduce per unit
        t, algo = comm.all_reduce(c, comm.group_of(world, 1, g), 4 * params)
        return 0.0, 0.0, t, algo
    shard = comm.group_of(k, 1, g)
    ag = comm.all_gather(c, shard, pb * params)
    rs = comm.reduce_scatter(c, shard, 4 * params)
    ar, algo = (0.0, "-")
    if k < world:
        ar, algo = comm.all_reduce(c, comm.group_of(world // k, k, g), 4 * params / k)
    return ag, (ag if st.reshard_after_forward else 0.0), rs + ar, algo


def window(compute: float, comm_s: float, overlap: float) -> float:
    """Time of a window in which ``compute`` runs and ``comm_s`` of collectives are issued: ``overlap`` of the
    shorter one is saved (1: the ideal, the longer of the two; 0: serialised, their sum)."""
    return compute + comm_s - overlap * min(compute, comm_s)


def predict(w: Workload, strategy: str, nodes: int, c: Cluster, efficiency: float,
            compute_factor: float = 1.0, overlap: float | None = None) -> StepPrediction:
    """``efficiency``: achieved fraction of the dense peak at ``w.precision``; ``compute_factor`` scales it for
    one strategy (``Calibration.strategy_factor``, from 1-node cells); ``overlap``: the fraction of the shorter of
    compute and communication hidden under the other in each unit's window (None: the cluster's measured
    ``collective.overlap``; 1: the ideal)."""
    overlap = c.overlap if overlap is None else overlap
    world = nodes * c.gpus_per_node
    rate = efficiency * compute_factor * c.peak_flops(w.precision)
    units = w.units()
    enc = dec = 0
    cf, cb, ag_f, ag_b, red = [], [], [], [], []
    algos = set()
    comm_of: dict[int, tuple] = {}  # a unit's collectives depend on its size only: the blocks of a stack share them
    for u in units:
        t = w.batch_per_gpu * u.fwd_flops / rate
        if u.name.startswith("encoder"):
            ck, enc = w.checkpointed(enc), enc + 1
        elif u.name.startswith("decoder"):
            ck, dec = w.checkpointed(dec), dec + 1
        else:
            ck = False
        cf.append(t)
        cb.append(2 * t + (t if ck else 0.0))
        if u.params not in comm_of:
            comm_of[u.params] = _unit_comm(w, strategy, world, c, u.params)
        a, b, r, algo = comm_of[u.params]
        ag_f.append(a)
        ag_b.append(b)
        red.append(r)
        algos.add(algo)
    n = len(units)
    # forward: root, encoder blocks, decoder blocks; unit i+1's all-gather overlaps unit i's compute
    fwd = ag_f[0] + sum(window(cf[i], ag_f[i + 1] if i + 1 < n else 0.0, overlap) for i in range(n))
    # backward in reverse order: in unit j's window, the next unit's all-gather (prefetch) and the previous
    # unit's gradient reduction
    order = list(range(n - 1, -1, -1))
    prefetch = w.backward_prefetch > 0
    bwd = ag_b[order[0]] if prefetch else 0.0
    for pos, j in enumerate(order):
        nxt = ag_b[order[pos + 1]] if pos + 1 < n else 0.0
        prev_red = red[order[pos - 1]] if pos > 0 else 0.0
        if prefetch:
            bwd += window(cb[j], nxt + prev_red, overlap)
        else:
            bwd += ag_b[j] + window(cb[j], prev_red, overlap)
    bwd += red[order[-1]]
    k = shard_size(strategy, world)
    opt = 28 * w.params_total() / k / (c.device.hbm_tb_s * 1e12)
    # gradient-norm clipping and the loss reduction: two scalar all-reduces over the world
    if world > 1:
        opt += 2 * comm.all_reduce(c, comm.group_of(world, 1, c.gpus_per_node), 8)[0]
    compute = sum(cf) + sum(cb)
    step = fwd + bwd + opt
    return StepPrediction(step, compute, step - compute - opt, opt, sum(ag_f) + sum(ag_b) + sum(red),
                          world * w.batch_per_gpu / step, world, "/".join(sorted(a for a in algos if a != "-")) or "-")
