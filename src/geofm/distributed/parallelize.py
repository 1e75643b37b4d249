"""The paper's FSDP strategy names, translated to PyTorch's FSDP2 (``fully_shard``) in one place.

=================  ==========================================================================
paper name         here
=================  ==========================================================================
DDP                ``torch.nn.parallel.DistributedDataParallel`` (bf16 through autocast)
NO_SHARD           ``fully_shard`` on a 2-D mesh (replicate=world, shard=1): parameters whole on
                   every rank, gradients all-reduced (FSDP2 has no NO_SHARD flag; this is it)
SHARD_GRAD_OP      ``fully_shard(reshard_after_forward=False)`` on a 1-D mesh (ZeRO-2 like)
FULL_SHARD         ``fully_shard(reshard_after_forward=True)`` on a 1-D mesh (ZeRO-3)
HYBRID_<k>GPU(s)   ``fully_shard`` on a 2-D mesh (replicate=world/k, shard=k): FULL_SHARD inside
                   groups of k ranks, replicas across groups (FSDP1's HYBRID_SHARD)
=================  ==========================================================================

Blocks are wrapped one by one (encoder and decoder), then the root. Mixed precision: parameters in
bf16 for compute, gradient reduction in fp32 (or bf16), optimizer state in fp32. Activation
checkpointing and ``torch.compile`` are applied per block before sharding, as torchtitan does.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .strategies import Strategy
from .strategies import ImpossibleStrategy, parse_strategy  # noqa: F401  (re-exported: the engine's callers)


def transformer_blocks(model: nn.Module) -> list[nn.ModuleList]:
    lists = [model.encoder.blocks]
    if hasattr(model, "decoder_blocks"):
        lists.append(model.decoder_blocks)
    return lists


def apply_activation_checkpointing(model: nn.Module, every: int) -> None:
    """Wrap every ``every``-th transformer block in a non-reentrant checkpoint (0 = off)."""
    if every <= 0:
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for blocks in transformer_blocks(model):
        for i in range(len(blocks)):
            if i % every == 0:
                blocks[i] = checkpoint_wrapper(blocks[i], preserve_rng_state=False)


def apply_compile(model: nn.Module, backend: str = "inductor") -> None:
    """``torch.compile`` each transformer block (repeated structure compiles once)."""
    for blocks in transformer_blocks(model):
        for i in range(len(blocks)):
            blocks[i] = torch.compile(blocks[i], dynamic=False, backend=backend)


def build_mesh(strategy: Strategy, world_size: int, device_type: str):
    from torch.distributed.device_mesh import init_device_mesh

    shape = strategy.mesh_shape(world_size)
    names = ("replicate", "shard") if len(shape) == 2 else ("shard",)
    return init_device_mesh(device_type, shape, mesh_dim_names=names)


def parallelize(model: nn.Module, strategy: Strategy, world_size: int, device: torch.device,
                precision: str = "bf16", reduce_fp32: bool = True, backward_prefetch: int | None = 1,
                forward_prefetch: int = 0) -> nn.Module:
    """Shard (or replicate) a meta-device or materialised model; returns the module to train.

    ``backward_prefetch``: how many blocks ahead FSDP2 all-gathers in backward (1 = FSDP2's implicit
    default, like FSDP1's BACKWARD_PRE; 0 = none; n > 1 explicit). ``forward_prefetch``: blocks ahead in
    forward (0 = none, FSDP2's default). See :func:`set_prefetch`.
    """
    if strategy.kind == "ddp" or world_size == 1 and strategy.kind == "ddp":
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = build_mesh(strategy, world_size, device.type) if world_size > 1 else None
    mp = None
    if precision == "bf16":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                  reduce_dtype=torch.float32 if reduce_fp32 else torch.bfloat16)
    kw = {"reshard_after_forward": strategy.reshard_after_forward}
    if mesh is not None:
        kw["mesh"] = mesh
    if mp is not None:
        kw["mp_policy"] = mp
    wrapped: list[nn.Module] = []
    for blocks in transformer_blocks(model):
        for blk in blocks:
            fully_shard(blk, **kw)
            wrapped.append(blk)
    fully_shard(model, **kw)
    if wrapped and world_size > 1:
        set_prefetch(model, wrapped, backward_prefetch, forward_prefetch)
    return model


def set_prefetch(root: nn.Module, blocks: list[nn.Module], backward: int | None, forward: int) -> None:
    """All-gather prefetch depth over the blocks in forward order (``root`` = the outer FSDP module).

    Read against FSDP2's source (torch 2.14, ``torch/distributed/fsdp/_fully_shard/_fsdp_state.py``,
    ``FSDPState._pre_backward``): a module whose explicit backward-prefetch list is *empty* falls back to
    the implicit prefetch (``default_prefetch = len(self._states_to_backward_prefetch) == 0``; the implicit
    one, ``FSDPParamGroup._backward_prefetch``, all-gathers the previous module of the post-forward order).
    So "no prefetch" cannot be an empty list. It is a list holding the module itself: explicit (the implicit
    path is off) and a no-op (``FSDPParamGroup.unshard`` returns at once for a group that is already
    unsharded, which it is by then: ``pre_backward`` unshards and waits before the explicit list runs).

    backward: 0 = every module prefetches only itself (nothing issued before the module that needs it);
    1 (or None) = FSDP2's implicit prefetch (the previous module of the post-forward order: the root
    prefetches the last block, block i block i-1); n > 1 = explicit, the root the last n blocks, block i
    blocks i-1 … i-n.
    forward: 0 = FSDP2's default (no explicit list; each module all-gathers in its own pre-forward hook,
    ``FSDPState._pre_forward``); n > 0 = after its own all-gather, the root issues blocks 0 … n-1, block i
    blocks i+1 … i+n. An all-gather already issued is not issued again (``unshard`` returns while one is
    pending), so depth n keeps n all-gathers ahead of the running block.
    """
    n = len(blocks)
    if backward is not None and backward != 1:
        root.set_modules_to_backward_prefetch(blocks[max(n - backward, 0):][::-1] if backward > 0 else [root])
        for i, blk in enumerate(blocks):
            ahead = [blocks[j] for j in range(i - 1, max(i - 1 - backward, -1), -1)]
            blk.set_modules_to_backward_prefetch(ahead if backward > 0 else [blk])
    if forward > 0:
        root.set_modules_to_forward_prefetch(blocks[:forward])
        for i, blk in enumerate(blocks):
            blk.set_modules_to_forward_prefetch(blocks[i + 1: i + 1 + forward])


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
