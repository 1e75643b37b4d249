"""Peak memory per GPU of one training step, per model × strategy × world size: the one memory model that the
DAG's feasibility filter, the profiler's pre-allocation check and ``geofm plan`` share.

Terms (bytes per GPU; P = MAE parameters, k = ranks a parameter is sharded over, u = largest FSDP unit):

- training state, sharded over k: fp32 parameters 4 + fp32 gradients 4 + Adam's two moments 8 = 16·P/k
  (DDP and NO_SHARD: k = 1);
- compute copies of the parameters (bf16 runs): DDP keeps autocast's bf16 weight cache for the step (2·P);
  NO_SHARD and SHARD_GRAD_OP keep every unit unsharded from its forward to its backward (2·P, FSDP2
  ``reshard_after_forward=False``); FULL_SHARD and HYBRID hold the unit in use and the one prefetched
  (2·2·u; 2·(1+depth)·u with a deeper prefetch);
- gradients in flight before their reduction (sharded strategies): the unit's unsharded gradient in the
  parameter dtype plus its copy in the reduce dtype (fp32), two units at a time: 2·(2+4)·u;
- activations (Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models", 2022:
  a transformer block stores ~34·s·b·h bytes in 16-bit, here 18·h + 4·mlp per token with SDPA's
  memory-efficient attention, which keeps no s×s scores): a checkpointed block keeps only its input
  (2·s·b·h), plus one block recomputed at a time; the root keeps the images (fp32), patch tokens and the
  reconstruction targets and predictions (fp32).

No free parameter: nothing here is fitted. Checked against the paper's peak active memory per GCD
(``frontier_peak_memory_gb.csv``) in the tests and by ``geofm plan --validate``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..distributed.strategies import ImpossibleStrategy, parse_strategy
from ..models.registry import decoded_masked, get_spec, num_patches
from .workload import Workload

GB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    state: float
    param_copies: float
    grads_in_flight: float
    activations: float

    @property
    def total(self) -> float:
        return self.state + self.param_copies + self.grads_in_flight + self.activations

    @property
    def total_gb(self) -> float:
        return self.total / GB

    def parts_gb(self) -> dict:
        return {"mem_state_gb": self.state / GB, "mem_param_copies_gb": self.param_copies / GB,
                "mem_grads_in_flight_gb": self.grads_in_flight / GB, "mem_activations_gb": self.activations / GB}


def shard_size(strategy: str, world: int) -> int:
    """Ranks each parameter is sharded over (raises ImpossibleStrategy when the mesh does not fit the world)."""
    st = parse_strategy(strategy)
    st.mesh_shape(world)
    if st.kind == "ddp":
        return 1
    return world if st.shard_size is None else st.shard_size


def activation_bytes(w: Workload) -> float:
    half = 2 if w.precision == "bf16" else 4  # bytes of a saved activation element
    scale = half / 2  # the 34·s·b·h rule is in 16-bit bytes
    b = w.batch_per_gpu
    stored, recompute = 0.0, 0.0
    enc_i = dec_i = 0
    for u in w.units():
        if u.name == "root":
            continue
        full = b * u.tokens * (18 * u.width + 4 * u.mlp) * scale
        i = enc_i if u.name.startswith("encoder") else dec_i
        if u.name.startswith("encoder"):
            enc_i += 1
        else:
            dec_i += 1
        if w.checkpointed(i):
            stored += b * u.tokens * u.width * half
            recompute = max(recompute, full)
        else:
            stored += full
    s = get_spec(w.model)
    n = num_patches(w.model, w.image_size)
    patch_dim = s.patch * s.patch * w.in_chans
    dec = int(n * (1 - w.mask_ratio)) + decoded_masked(n, w.mask_ratio, w.prediction_ratio)
    root = b * (w.in_chans * w.image_size**2 * 4  # images, fp32
                + n * s.width * half * 2  # patch tokens before/after masking
                + (dec + 1) * w.decoder_dim * half * 2  # decoder input with mask tokens
                + n * patch_dim * 4 * 3)  # target, prediction, per-patch loss (fp32)
    return stored + recompute + root


def estimate(w: Workload, strategy: str, world: int) -> MemoryEstimate:
    st = parse_strategy(strategy)
    k = shard_size(strategy, world)
    p = w.params_total()
    u = max(x.params for x in w.units())
    bf16 = w.precision == "bf16"
    pbytes = 2 if bf16 else 4
    state = 16 * p / k
    if st.kind == "ddp":
        copies = 2 * p if bf16 else 0.0
        flight = 0.0
    elif k == 1 or not st.reshard_after_forward:  # NO_SHARD, SHARD_GRAD_OP: unsharded from forward to backward
        copies = pbytes * p if (bf16 or k > 1) else 0.0
        flight = 2 * (pbytes + 4) * u if k > 1 else (2 * pbytes * u if bf16 else 0.0)
    else:  # FULL_SHARD, HYBRID_k
        copies = pbytes * u * (1 + max(1, w.backward_prefetch))
        flight = 2 * (pbytes + 4) * u
    return MemoryEstimate(state, copies, flight, activation_bytes(w))


def feasibility(w: Workload, strategy: str, world: int, device_memory_gb: float | None) -> tuple[str, float | None]:
    """("ok" | "impossible: …", predicted GB per GPU or None where the mesh itself cannot be built)."""
    try:
        est = estimate(w, strategy, world)
    except ImpossibleStrategy as exc:
        return f"impossible: {exc}", None
    need = est.total_gb
    if device_memory_gb and need > device_memory_gb:
        return f"impossible: needs ~{need:.0f} GB of {device_memory_gb:g} GB per GPU (memory model)", need
    return "ok", need
