"""Throughput/memory profiling of the MAE training step, as the paper measured it on Frontier.

One run = one (model, strategy, nodes) cell: build exactly the training model (same code path as
pretraining), run ``warmup_steps`` + ``steps`` of the trainer's own step (:func:`geofm.train.step.train_step`:
accumulation, clipping and the loss all-reduce included) on synthetic data (the paper's mode) or on
the tiles (the training loader included: the wait for a batch is part of the step), and record images/s
(median over the timed steps, with spread), TFLOP/s and MFU against the device's peak, peak memory per
device, a step-time breakdown (data wait / forward / backward / optimizer, the last with the loss reduction and
clipping) and the loader's own rate.
With more than one rank, one extra step after the timed ones runs under ``torch.profiler`` to measure
the communication share (see :func:`comm_share_from_profile`). A combination that cannot run (a shard
group larger than the job, a model whose predicted peak memory exceeds ``device_memory_gb``: the memory model
of ``geofm.perf.memory``, the same one that keeps such cells out of the DAG) is written as
``status: impossible: …`` before anything is allocated. The record names the peak it used for MFU
(``peak_tflops``, ``peak_source``: the device row of ``geofm.profile.peaks`` and the dtype).

A run belongs to a *variant* of the grid (``profile.variants`` in the config; ``base`` = the profile
section's own settings): the record carries the variant's name, its overrides and the effective settings.
"""
from __future__ import annotations

import os
import statistics
import time

import torch
import torch.distributed as dist

from ..distributed import launch
from ..models.registry import count_params, display_name, num_patches
from ..perf import memory
from ..perf.workload import Workload
from ..train import flops, metrics
from ..data.loader import StepBatches
from ..data.sampler import mask_noise
from ..train.pretrain import TrainConfig, build_model, make_adamw, param_groups, step_options
from ..train.step import PhaseTimer, train_step

# collective names, compared with underscores removed ("all_gather" and c10d's "allgather" alike)
COLLECTIVES = ("allgather", "reducescatter", "allreduce", "broadcast")
STEP_RANGE = "geofm::profiled_step"


def workload_of(cfg: TrainConfig, world: int) -> Workload:
    """The run as the memory and performance models see it (``geofm.perf``)."""
    return Workload(cfg.model, cfg.image_size, cfg.in_chans, cfg.mask_ratio, cfg.decoder_dim, cfg.decoder_depth,
                    max(1, cfg.batch_size // max(world, 1)), cfg.precision, cfg.activation_checkpointing,
                    cfg.backward_prefetch, prediction_ratio=cfg.prediction_ratio)


def feasibility(cfg: TrainConfig, world: int, device_memory_gb: float | None) -> tuple[str, float | None]:
    """("ok" | "impossible: …", predicted peak GB per device), decided before anything is allocated by the
    memory model the DAG and ``geofm plan`` use (``geofm.perf.memory``)."""
    return memory.feasibility(workload_of(cfg, world), cfg.strategy, world, device_memory_gb)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _all_reduce(t: torch.Tensor, op, device: torch.device) -> torch.Tensor:
    """All-reduce a small CPU tensor; NCCL only reduces device tensors, so it travels there and back."""
    d = t.to(device) if device.type == "cuda" else t
    dist.all_reduce(d, op=op)
    return d.cpu()


def _energy_j(device: torch.device) -> float | None:
    """Cumulative energy of this rank's device in joules where the platform exposes it; None elsewhere.

    NVIDIA: NVML's total-energy counter (nvidia-ml-py), the device found by PCI bus id so that
    CUDA_VISIBLE_DEVICES remapping does not pick another board. AMD: amdsmi's energy accumulator
    (the ``amdsmi`` module that ships with ROCm). On an MI250X the counter covers the whole OAM
    package (two GCDs), so the per-image figure of one GCD's rank counts its neighbour too.
    """
    if device.type != "cuda":
        return None
    idx = device.index or 0
    if torch.version.hip:
        try:
            import amdsmi  # type: ignore

            amdsmi.amdsmi_init()
            handles = amdsmi.amdsmi_get_processor_handles()
            e = amdsmi.amdsmi_get_energy_count(handles[idx])
            acc = e.get("energy_accumulator", e.get("power"))
            return float(acc) * float(e.get("counter_resolution", 1.0)) / 1e6
        except Exception:  # noqa: BLE001 - energy is optional
            return None
    try:
        import pynvml  # type: ignore

        pynvml.nvmlInit()
        bus = getattr(torch.cuda.get_device_properties(device), "pci_bus_id", None)
        try:
            h = pynvml.nvmlDeviceGetHandleByPciBusId(bus) if bus else pynvml.nvmlDeviceGetHandleByIndex(idx)
        except Exception:  # noqa: BLE001
            h = pynvml.nvmlDeviceGetHandleByIndex(idx)
        return pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0  # mJ -> J
    except Exception:  # noqa: BLE001 - energy is optional
        return None


def _union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of ``(start, end)`` intervals (nested and overlapping ones count once)."""
    total, cur_s, cur_e = 0.0, None, None
    for s0, e0 in sorted(intervals):
        if cur_e is None or s0 > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s0, e0
        else:
            cur_e = max(cur_e, e0)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def _is_collective(name: str) -> bool:
    n = name.lower().replace("_", "")
    return any(c in n for c in COLLECTIVES)


def comm_share_from_profile(events, step_name: str = STEP_RANGE) -> dict:
    """Communication time of one profiled step, from ``torch.profiler`` events.

    On GPUs: device kernels whose name contains ``nccl``/``rccl`` (RCCL keeps NCCL's kernel names). On
    the CPU (gloo): ops named ``gloo:…`` or ``c10d::…`` whose name contains all_gather / reduce_scatter /
    all_reduce / broadcast, on any thread (gloo moves the bytes on its own worker threads). The share is
    the length of the *union* of those intervals, clipped to the step's ``record_function`` range, over
    the step's length: the fraction of the step during which a collective was in flight, overlapped with
    compute or not. It is an upper bound on exposed communication (profiler overhead included).
    """
    steps = [e for e in events if e.name == step_name]
    if not steps:
        return {"comm_share": "n/a", "comm_note": f"no {step_name} range in the profile"}
    w0, w1 = steps[0].time_range.start, steps[0].time_range.end
    dev, cpu = [], []
    for e in events:
        name = e.name or ""
        if e is steps[0]:
            continue
        s0, e0 = max(e.time_range.start, w0), min(e.time_range.end, w1)
        if e0 <= s0:
            continue
        low = name.lower()
        if str(getattr(e, "device_type", "")).endswith("CPU"):
            if (low.startswith("gloo:") or low.startswith("c10d::")) and _is_collective(name):
                cpu.append((s0, e0))
        elif "nccl" in low or "rccl" in low:
            dev.append((s0, e0))
    if dev:
        iv, src = dev, "device kernels named nccl*"
    else:
        iv, src = cpu, "CPU-side gloo:/c10d:: collective ops"
    comm = _union_us(iv)
    return {"comm_share": comm / (w1 - w0) if w1 > w0 else "n/a", "comm_s": comm / 1e6,
            "comm_profiled_step_s": (w1 - w0) / 1e6, "comm_source": src, "comm_ops": len(iv)}


def _profiled_comm_step(run_step, device: torch.device) -> dict:
    """One more training step under ``torch.profiler``; its communication share (every rank runs it)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        with record_function(STEP_RANGE):
            run_step()
    try:
        return comm_share_from_profile(prof.events())
    except Exception as exc:  # noqa: BLE001 - an analysis failure must not lose the timed numbers
        return {"comm_share": "n/a", "comm_note": f"profile analysis failed: {exc}"}


def profile_run(cfg: TrainConfig, nodes: int, warmup_steps: int, steps: int, device_memory_gb: float | None,
                variant: str = "base", variant_settings: dict | None = None, comm_profile: bool = True) -> dict:
    de, device = launch.init(cfg.device)
    world, rank = de.world_size, de.rank
    base = {"model": cfg.model, "display": display_name(cfg.model), "strategy": cfg.strategy, "nodes": nodes,
            "variant": variant, "variant_settings": dict(variant_settings or {}),
            "world_size": world, "batch_per_device": cfg.batch_size // world, "global_batch": cfg.batch_size,
            "image_size": cfg.image_size, "params": count_params(cfg.model, cfg.image_size, cfg.in_chans),
            "precision": cfg.precision, "compile": cfg.compile, "activation_checkpointing": cfg.activation_checkpointing,
            "backward_prefetch": cfg.backward_prefetch, "forward_prefetch": cfg.forward_prefetch,
            "grad_accum": cfg.grad_accum, "grad_clip": cfg.grad_clip,
            "data": "synthetic" if cfg.data == "synthetic" else "real",
            "device": metrics.device_name(device), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": os.uname().nodename}
    status, need = feasibility(cfg, world, device_memory_gb)
    base["predicted_peak_mem_gb"] = need
    base["device_memory_gb"] = device_memory_gb
    if status != "ok":
        launch.shutdown()
        return {**base, "status": status}
    try:
        model, use_autocast = build_model(cfg, world, device)
    except torch.OutOfMemoryError as exc:
        launch.shutdown()
        return {**base, "status": f"impossible: out of memory building the model ({exc})"}
    opt = make_adamw(param_groups(model, cfg.weight_decay), device, cfg.lr, cfg.betas)
    total = warmup_steps + steps
    data = StepBatches(cfg.data, cfg.batch_size, cfg.image_size, rank, world, cfg.seed, cfg.augment,
                       cfg.in_chans, start=0, steps=total + 1, augment_on_device=cfg.augment_on_device,
                       rot90=cfg.augment_rot90, crop_scale=cfg.crop_scale)  # + the profiled step
    # the loader's own rate, on the main process, before training
    t = time.perf_counter()
    nb = min(3, total)
    for s in range(nb):
        data.batch(s)
    loader_ips = nb * (cfg.batch_size // world) / (time.perf_counter() - t)
    n_patch = num_patches(cfg.model, cfg.image_size)
    fl_img = flops.mae_train_flops_per_image(cfg.model, cfg.image_size, cfg.in_chans, cfg.mask_ratio,
                                             cfg.decoder_dim, cfg.decoder_depth, cfg.prediction_ratio)
    peak, peak_src = metrics.peak_tflops(device, cfg.precision)
    metrics.reset_peak_memory(device)
    rows = []
    e0 = None

    # the training loop's own loader (workers as pretrain.num_workers): the wait for the next batch is part
    # of the step, so that an input-bound run (data: real) shows as such
    batches = iter(torch.utils.data.DataLoader(data, batch_size=None, shuffle=False, num_workers=cfg.num_workers,
                                               pin_memory=device.type == "cuda"))

    sopts = step_options(cfg, use_autocast)

    def one_step(step: int) -> tuple[float, float, float, float, float]:
        """The trainer's own step (:func:`geofm.train.step.train_step`), phases timed with device syncs."""
        timer = PhaseTimer(lambda: _sync(device))
        timer("data")
        x = next(batches).to(device, non_blocking=True)
        noise = mask_noise(cfg.seed, step, 0, cfg.batch_size, n_patch, rank, world).to(device)
        train_step(model, opt, x, noise, sopts, world, mark=timer)
        t = timer.totals
        return t["data"], t["forward"], t["backward"], t["optimizer"], sum(t.values())

    try:
        for step in range(total):
            if step == warmup_steps:
                e0 = _energy_j(device)
            r = one_step(step)
            if step >= warmup_steps:
                rows.append(r)
    except torch.OutOfMemoryError as exc:
        launch.shutdown()
        return {**base, "status": f"impossible: out of memory during the step ({str(exc).splitlines()[0]})"}
    e1 = _energy_j(device)
    mem = metrics.peak_memory_gb(device)
    comm: dict = {"comm_share": "n/a",
                  "comm_note": "one rank: no communication" if world == 1 else "not profiled (comm_profile off)"}
    if world > 1 and comm_profile:
        comm = _profiled_comm_step(lambda: one_step(total), device)
    # the slowest rank sets the pace: take the max step time over ranks, per step
    times = torch.tensor([r[4] for r in rows], dtype=torch.float64)
    parts = torch.tensor([r[:4] for r in rows], dtype=torch.float64).median(dim=0).values
    measured = [k for k, v in mem.items() if v is not None]  # the same keys on every rank (one device type)
    memt = torch.tensor([mem[k] for k in measured], dtype=torch.float64)
    if world > 1:
        times = _all_reduce(times, dist.ReduceOp.MAX, device)
        memt = _all_reduce(memt, dist.ReduceOp.MAX, device)
        if comm_profile:
            share = comm.get("comm_share")
            ok = isinstance(share, float)
            nan = float("nan")
            ct = torch.tensor([share if ok else nan, comm.get("comm_s", nan) if ok else nan,
                               comm.get("comm_profiled_step_s", nan) if ok else nan, float(ok)], dtype=torch.float64)
            ct = _all_reduce(ct, dist.ReduceOp.SUM, device)
            if int(ct[3]) == world:  # mean over ranks, each rank's share of its own profiled step
                comm.update(comm_share=float(ct[0]) / world, comm_s=float(ct[1]) / world,
                            comm_profiled_step_s=float(ct[2]) / world, comm_note="mean over ranks of one profiled step")
            else:
                comm = {"comm_share": "n/a", "comm_note": f"not measurable on every rank ({comm.get('comm_note', '')})"}
    mem.update(zip(measured, memt.tolist()))  # the largest rank's; None (n/a) stays None
    ips = [cfg.batch_size / t for t in times.tolist()]
    med = statistics.median(ips)
    out = {**base, "status": "ok", "steps": steps, "warmup_steps": warmup_steps,
           "images_per_s": med, "images_per_s_std": statistics.pstdev(ips) if len(ips) > 1 else 0.0,
           "images_per_s_min": min(ips), "images_per_s_max": max(ips),
           "tflops": med * fl_img / world / 1e12, "mfu": metrics.mfu(med * fl_img / world, peak),
           "peak_tflops": peak, "peak_source": peak_src, "peak_precision": cfg.precision, "flops_per_image": fl_img,
           **mem,
           "data_s": float(parts[0]), "forward_s": float(parts[1]), "backward_s": float(parts[2]),
           "optimizer_s": float(parts[3]),
           "step_s": statistics.median(times.tolist()), "loader_images_per_s_per_rank": loader_ips,
           "energy_j_per_image": ((e1 - e0) / (steps * cfg.batch_size / world)) if (e0 is not None and e1 is not None)
           else "n/a", **comm}
    launch.shutdown()
    return out

