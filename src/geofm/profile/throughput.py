"""Throughput/memory profiling of the MAE training step, as the paper measured it on Frontier.

One run = one (model, strategy, nodes) cell: build exactly the training model (same code path as
pretraining), run ``warmup_steps`` + ``steps`` optimizer steps on synthetic data (the paper's mode) or on
the tiles (loader included), and record images/s (median over the timed steps, with spread), TFLOP/s and
MFU against the device's peak, peak memory per device, a step-time breakdown (forward / backward /
optimizer) and the loader's own rate. A combination that cannot run (a shard group larger than the job,
a model whose training state alone cannot fit the device) is written as ``status: impossible: …``.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..distributed import launch
from ..distributed.parallelize import ImpossibleStrategy, parse_strategy
from ..models.registry import count_params, display_name, num_patches
from ..train import flops, metrics
from ..train.batches import StepBatches, mask_noise
from ..train.pretrain import TrainConfig, build_model, param_groups

BYTES_PER_PARAM_STATE = 16  # fp32 master weights 4 + fp32 grads 4 + Adam moments 8


def state_gb_per_device(model: str, strategy: str, world: int, image_size: int, in_chans: int = 3) -> float:
    """Training-state memory per device (weights, grads, Adam), ignoring activations: a lower bound."""
    strat = parse_strategy(strategy)
    shard = 1 if strat.kind == "ddp" else (world if strat.shard_size is None else strat.shard_size)
    return count_params(model, image_size, in_chans) * BYTES_PER_PARAM_STATE / shard / 2**30


def feasibility(model: str, strategy: str, world: int, image_size: int, device_memory_gb: float | None) -> str:
    strat = parse_strategy(strategy)
    try:
        strat.mesh_shape(world)
    except ImpossibleStrategy as exc:
        return f"impossible: {exc}"
    if device_memory_gb:
        need = state_gb_per_device(model, strategy, world, image_size)
        if need > device_memory_gb:
            return (f"impossible: weights+grads+Adam state alone need {need:.1f} GB per device "
                    f"> {device_memory_gb:g} GB")
    return "ok"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _energy_j(device: torch.device) -> float | None:
    """Cumulative board energy in joules where the platform exposes it (NVML); None elsewhere."""
    if device.type != "cuda" or torch.version.hip:
        return None
    try:
        import pynvml  # type: ignore

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        return pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0
    except Exception:  # noqa: BLE001 - energy is optional
        return None


def profile_run(cfg: TrainConfig, nodes: int, warmup_steps: int, steps: int, device_memory_gb: float | None) -> dict:
    de, device = launch.init(cfg.device)
    world, rank = de.world_size, de.rank
    base = {"model": cfg.model, "display": display_name(cfg.model), "strategy": cfg.strategy, "nodes": nodes,
            "world_size": world, "batch_per_device": cfg.batch_size // world, "global_batch": cfg.batch_size,
            "image_size": cfg.image_size, "params": count_params(cfg.model, cfg.image_size, cfg.in_chans),
            "precision": cfg.precision, "compile": cfg.compile, "activation_checkpointing": cfg.activation_checkpointing,
            "backward_prefetch": cfg.backward_prefetch, "data": "synthetic" if cfg.data == "synthetic" else "real",
            "device": metrics.device_name(device), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": os.uname().nodename}
    status = feasibility(cfg.model, cfg.strategy, world, cfg.image_size, device_memory_gb)
    if status != "ok":
        launch.shutdown()
        return {**base, "status": status}
    try:
        model, use_autocast = build_model(cfg, world, device)
    except torch.OutOfMemoryError as exc:
        launch.shutdown()
        return {**base, "status": f"impossible: out of memory building the model ({exc})"}
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, fused=device.type == "cuda" or None)
    total = warmup_steps + steps
    data = StepBatches(cfg.data, cfg.batch_size, cfg.image_size, rank, world, cfg.seed, cfg.augment,
                       cfg.in_chans, start=0, steps=total)
    # the loader's own rate, on the main process, before training
    t = time.perf_counter()
    nb = min(3, total)
    for s in range(nb):
        data.batch(s)
    loader_ips = nb * (cfg.batch_size // world) / (time.perf_counter() - t)
    n_patch = num_patches(cfg.model, cfg.image_size)
    fl_img = flops.mae_train_flops_per_image(cfg.model, cfg.image_size, cfg.in_chans, cfg.mask_ratio,
                                             cfg.decoder_dim, cfg.decoder_depth)
    peak, peak_src = metrics.peak_tflops(device, cfg.precision)
    metrics.reset_peak_memory(device)
    rows = []
    e0 = None
    try:
        for step in range(total):
            x = data.batch(step).to(device, non_blocking=True)
            noise = mask_noise(cfg.seed, step, 0, cfg.batch_size, n_patch, rank, world).to(device)
            if step == warmup_steps:
                e0 = _energy_j(device)
            _sync(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
                loss = model(x, cfg.mask_ratio, noise)[0]
            _sync(device)
            t1 = time.perf_counter()
            loss.backward()
            _sync(device)
            t2 = time.perf_counter()
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            t3 = time.perf_counter()
            if step >= warmup_steps:
                rows.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
    except torch.OutOfMemoryError as exc:
        launch.shutdown()
        return {**base, "status": f"impossible: out of memory during the step ({str(exc).splitlines()[0]})"}
    e1 = _energy_j(device)
    mem = metrics.peak_memory_gb(device)
    # the slowest rank sets the pace: take the max step time over ranks, per step
    times = torch.tensor([r[3] for r in rows], dtype=torch.float64)
    parts = torch.tensor([[r[0], r[1], r[2]] for r in rows], dtype=torch.float64).median(dim=0).values
    memt = torch.tensor([mem["peak_mem_gb"], mem["peak_reserved_gb"]], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(times, op=dist.ReduceOp.MAX)
        dist.all_reduce(memt, op=dist.ReduceOp.MAX)
    ips = [cfg.batch_size / t for t in times.tolist()]
    med = statistics.median(ips)
    out = {**base, "status": "ok", "steps": steps, "warmup_steps": warmup_steps,
           "images_per_s": med, "images_per_s_std": statistics.pstdev(ips) if len(ips) > 1 else 0.0,
           "images_per_s_min": min(ips), "images_per_s_max": max(ips),
           "tflops": med * fl_img / world / 1e12, "mfu": metrics.mfu(med * fl_img / world, peak),
           "peak_tflops": peak, "peak_source": peak_src, "flops_per_image": fl_img,
           "peak_mem_gb": float(memt[0]), "peak_reserved_gb": float(memt[1]),
           "forward_s": float(parts[0]), "backward_s": float(parts[1]), "optimizer_s": float(parts[2]),
           "step_s": statistics.median(times.tolist()), "loader_images_per_s_per_rank": loader_ips,
           "energy_j_per_image": ((e1 - e0) / (steps * cfg.batch_size / world)) if (e0 is not None and e1 is not None) else "n/a"}
    launch.shutdown()
    return out


def write_json(record: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)
