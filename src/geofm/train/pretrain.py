"""The MAE pretraining loop: one entry point for one process, torchrun, or Slurm's srun.

Build on the meta device → activation checkpointing / compile per block → shard (FSDP2 under the paper's
strategy name) or replicate (DDP) → materialise only the local shards → AdamW (fused) with warm-up
+ cosine → steps with bf16 compute, gradient accumulation and clipping → per-step JSONL metrics and a
progress line → sharded DCP checkpoints every N steps and at the end → ``encoder.pt`` for evaluation.
A NaN/inf loss stops the run with a clear message; the last good checkpoint stays intact.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..common.io import atomic_path, save_torch, write_json, write_text
from ..common.lr import warmup_cosine
from ..common.seeding import seed_global_torch
from ..config import complete_section, schema
from ..distributed import checkpoint as ckpt
from ..distributed import launch
from ..distributed.walltime import StopRequest, WalltimeStop, ignore_in_worker
from ..distributed.parallelize import (apply_activation_checkpointing, apply_compile, parallelize,
                                       parse_strategy, wrap_ddp)
from ..models.mae import build_mae, materialize
from ..models.registry import count_params, num_patches
from ..provenance import provenance
from . import flops, metrics
from ..data.loader import StepBatches
from ..data.sampler import mask_noise
from .fingerprint import fingerprint, resumable_step
from .step import NonFiniteLoss, StepOptions, train_step

__all__ = ["NonFiniteLoss", "TrainConfig", "build_model", "param_groups", "step_options", "train"]


_DEFAULTS = complete_section({}, "pretrain")  # the schema's pretrain defaults: the one place they live


def _default(key: str):
    return _DEFAULTS[key]


@dataclass
class TrainConfig:
    """One pretraining (or profiled) run. Every field named like a ``pretrain`` key takes that key's schema
    default (a unit test keeps the two in step); the rest are not settings of the config's pretrain section:
    the model, the top-level ``image_size`` / ``seed`` / ``device`` (defaults here only for programmatic use:
    a loaded config always passes them), the data (a tiles folder or ``synthetic``), AdamW's betas (MAE's)
    and a test aid."""
    model: str
    image_size: int = 224
    in_chans: int = 3
    data: str = "synthetic"  # "synthetic" or a tiles directory
    steps: int = _default("steps")
    batch_size: int = _default("batch_size")  # global, per optimizer step
    grad_accum: int = _default("grad_accum")
    lr: float = _default("lr")
    min_lr: float = _default("min_lr")
    warmup_steps: int = _default("warmup_steps")
    weight_decay: float = _default("weight_decay")
    betas: tuple = (0.9, 0.95)
    grad_clip: float = _default("grad_clip")
    mask_ratio: float = _default("mask_ratio")
    norm_pix_loss: bool = _default("norm_pix_loss")
    prediction_ratio: float = _default("prediction_ratio")
    decoder_dim: int = _default("decoder_dim")
    decoder_depth: int = _default("decoder_depth")
    decoder_heads: int = _default("decoder_heads")
    strategy: str = _default("strategy")
    precision: str = _default("precision")
    reduce_fp32: bool = _default("reduce_fp32")
    activation_checkpointing: int = _default("activation_checkpointing")
    compile: bool = _default("compile")
    backward_prefetch: int = _default("backward_prefetch")
    forward_prefetch: int = _default("forward_prefetch")
    augment: bool = _default("augment")
    augment_on_device: str = _default("augment_on_device")
    augment_rot90: bool = _default("augment_rot90")
    crop_scale: tuple = tuple(_default("crop_scale"))
    num_workers: int = _default("num_workers")
    checkpoint_every: int = _default("checkpoint_every")
    keep_last: int = _default("keep_last")
    log_every: int = _default("log_every")
    seed: int = schema()["properties"]["seed"]["default"]
    device: str = schema()["properties"]["device"]["default"]
    fail_at_step: int = -1  # testing aid: inject a NaN loss at this step

    # the pretrain keys that are not training settings (where and how long a job runs, what the scheduler plans)
    NOT_TRAINING = ("nodes", "procs_per_node", "threads_per_rank", "runtime_min", "retries", "expected_mfu",
                    "device_peak_tflops", "protect", "per_model")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise KeyError(f"unknown pretraining option(s): {', '.join(unknown)}")
        d = dict(d)
        for key in ("betas", "crop_scale"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def make_adamw(groups, device: torch.device, lr: float, betas) -> torch.optim.Optimizer:
    """AdamW with PyTorch's fused kernel on the device (one kernel over all parameters instead of a loop of
    small ops per tensor; PyTorch has it for CUDA and CPU tensors, torch/utils/_foreach_utils.py
    ``_get_fused_kernels_supported_devices``). On a CPU the default is the per-tensor loop (foreach is for
    GPUs only): measured 2026-12-07, demo_base's bf16 step 57.7 -> 53.4 ms on one core."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    fused = device.type in _get_fused_kernels_supported_devices() or None
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


def param_groups(model: torch.nn.Module, weight_decay: float):
    """MAE's groups (main_pretrain.py: ``optim_factory.add_weight_decay(model, weight_decay)``, timm's rule
    with no skip list): no weight decay on biases and 1-d parameters (norms); every matrix and the cls and
    mask tokens are decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _pretrain_split(data: str) -> str | None:
    """The tiles pretraining reads: the training split, or every tile where the tiler says so
    (``stats.json: "pretrain_split": null``, e.g. MillionAID: the whole release)."""
    stats = Path(data) / "stats.json"
    if data == "synthetic" or not stats.is_file():
        return "train"
    from ..data.shards import read_stats

    return read_stats(data).get("pretrain_split", "train")


def build_model(cfg: TrainConfig, world_size: int, device: torch.device):
    strat = parse_strategy(cfg.strategy)
    model = build_mae(cfg.model, cfg.image_size, cfg.in_chans, device="meta", decoder_dim=cfg.decoder_dim,
                      decoder_depth=cfg.decoder_depth, decoder_heads=cfg.decoder_heads,
                      norm_pix_loss=cfg.norm_pix_loss, prediction_ratio=cfg.prediction_ratio)
    apply_activation_checkpointing(model, cfg.activation_checkpointing)
    if cfg.compile:
        apply_compile(model)
    fsdp = strat.kind == "fsdp" and world_size > 1
    if fsdp:
        parallelize(model, strat, world_size, device, cfg.precision, cfg.reduce_fp32,
                    cfg.backward_prefetch, cfg.forward_prefetch)
    materialize(model, device, cfg.seed)
    if strat.kind == "ddp" and world_size > 1:
        model = wrap_ddp(model, device)
    # FSDP2 casts to bf16 itself; DDP and single-process runs use autocast
    autocast = cfg.precision == "bf16" and not fsdp
    return model, autocast


def step_options(cfg: TrainConfig, autocast: bool) -> StepOptions:
    return StepOptions(mask_ratio=cfg.mask_ratio, grad_accum=cfg.grad_accum, grad_clip=cfg.grad_clip,
                       autocast=autocast)


def _trim_metrics(path: Path, last_step: int) -> None:
    if not path.exists():
        return
    keep = []
    for ln in path.read_text().splitlines():
        try:  # a run killed mid-write leaves a torn last line: drop it
            if json.loads(ln).get("step", 0) <= last_step:
                keep.append(ln)
        except ValueError:
            continue
    write_text(path, "".join(ln + "\n" for ln in keep))


def train(cfg: TrainConfig, out_dir: str | Path) -> dict:
    """Run (or resume) pretraining into ``out_dir``; returns the summary written to ``summary.json``."""
    out_dir = Path(out_dir)
    de, device = launch.init(cfg.device)
    world, rank = de.world_size, de.rank
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ValueError(f"pretrain.batch_size {cfg.batch_size} must be divisible by world size {world} × "
                         f"grad_accum {cfg.grad_accum}")
    seed_global_torch(cfg.seed)
    model, use_autocast = build_model(cfg, world, device)
    groups = param_groups(model, cfg.weight_decay)
    opt = make_adamw(groups, device, cfg.lr, cfg.betas)
    ckpt_dir = out_dir / "checkpoints"
    # the live log sits beside the checkpoints, outside Snakemake's declared outputs (which a retried
    # job deletes first); it is copied to metrics.jsonl when the run completes
    metrics_path = out_dir / "run" / "metrics.jsonl"
    start = 0
    fp = fingerprint(cfg)  # only a checkpoint of the same fingerprint, of an unfinished run, is resumed
    latest = resumable_step(ckpt_dir, fp, cfg.steps, de.is_main, metrics.log)
    if latest is not None:
        extra = ckpt.load(ckpt_dir, latest, model, opt)
        start = int(extra["step"])
        if de.is_main:
            metrics.log(f"resumed from {ckpt.step_dir(ckpt_dir, latest)} (step {start}, saved at world size "
                        f"{extra.get('world_size')} with {extra.get('strategy')})")
            _trim_metrics(metrics_path, start)
    writer = metrics.MetricsWriter(metrics_path, enabled=de.is_main, append=start > 0)
    data = StepBatches(cfg.data, cfg.batch_size, cfg.image_size, rank, world, cfg.seed, cfg.augment,
                       cfg.in_chans, split=_pretrain_split(cfg.data), start=start, steps=cfg.steps,
                       augment_on_device=cfg.augment_on_device, rot90=cfg.augment_rot90,
                       crop_scale=cfg.crop_scale)
    if data.in_chans != cfg.in_chans:
        raise ValueError(f"{cfg.data}: tiles have {data.in_chans} bands but the model was built for {cfg.in_chans}")
    loader = torch.utils.data.DataLoader(data, batch_size=None, shuffle=False, num_workers=cfg.num_workers,
                                         pin_memory=device.type == "cuda",
                                         persistent_workers=False,
                                         worker_init_fn=ignore_in_worker if cfg.num_workers else None)
    stop = StopRequest()  # SIGUSR1 (sbatch --signal=USR1@s) / SIGTERM: checkpoint at this step, then exit
    n_patch = num_patches(cfg.model, cfg.image_size)
    fl_img = flops.mae_train_flops_per_image(cfg.model, cfg.image_size, cfg.in_chans, cfg.mask_ratio,
                                             cfg.decoder_dim, cfg.decoder_depth, cfg.prediction_ratio)
    peak, peak_src = metrics.peak_tflops(device, cfg.precision)
    metrics.reset_peak_memory(device)
    sopts = step_options(cfg, use_autocast)
    t0 = time.perf_counter()
    last = time.perf_counter()
    loss_val = float("nan")
    step_times: list[float] = []
    for step, x in zip(range(start, cfg.steps), loader):
        lr = warmup_cosine(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr)
        for g in opt.param_groups:
            g["lr"] = lr
        x = x.to(device, non_blocking=True)
        noise = mask_noise(cfg.seed, step, 0, cfg.batch_size, n_patch, rank, world).to(device)
        try:
            res = train_step(model, opt, x, noise, sopts, world, poison=step == cfg.fail_at_step)
        except NonFiniteLoss as exc:
            last_ok = ckpt.latest_step(ckpt_dir)
            raise NonFiniteLoss(exc.loss, f"loss is {exc.loss} at step {step} of {cfg.model}; stopped. The last "
                                f"good checkpoint is {ckpt.step_dir(ckpt_dir, last_ok) if last_ok is not None else 'none'}"
                                f" (lower pretrain.lr or enable grad clipping)") from None
        loss_val, grad_norm = res.loss, res.grad_norm
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        dt, last = now - last, now
        step_times.append(dt)
        ips = cfg.batch_size / dt
        achieved = ips * fl_img
        done = step + 1
        if de.is_main and (done % cfg.log_every == 0 or done == cfg.steps or done == start + 1):
            rec = {"step": done, "loss": loss_val, "lr": lr, "grad_norm": grad_norm, "images_per_s": ips,
                   "tflops": achieved / 1e12 / world, "mfu": metrics.mfu(achieved / world, peak),
                   "step_time_s": dt, **metrics.peak_memory_gb(device)}
            writer.write(rec)
            metrics.log(metrics.progress_line(done, cfg.steps, loss_val, ips, rec["mfu"], now - t0))
        saved = (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.steps
        if saved:
            ckpt.save(ckpt_dir, done, model, opt, {"step": done, "world_size": world, "strategy": cfg.strategy,
                                                   "model": cfg.model, "fingerprint": fp}, cfg.keep_last)
        if done < cfg.steps and stop.agreed(device):
            if not saved:  # the same fingerprint, so the resubmitted chunk resumes it (train.fingerprint)
                ckpt.save(ckpt_dir, done, model, opt, {"step": done, "world_size": world, "strategy": cfg.strategy,
                                                       "model": cfg.model, "fingerprint": fp}, cfg.keep_last)
            writer.close()
            stop.restore()
            launch.shutdown()
            raise WalltimeStop(f"{stop.name()} at step {done} of {cfg.steps}: checkpoint "
                               f"{ckpt.step_dir(ckpt_dir, done)} written; run again to resume from it")
    stop.restore()
    writer.close()
    summary = {"model": cfg.model, "params": count_params(cfg.model, cfg.image_size, cfg.in_chans),
               "steps": cfg.steps, "final_loss": loss_val, "world_size": world, "strategy": cfg.strategy,
               # intra-op threads per rank: on a CPU their number changes the trained weights' last bits
               "threads_per_rank": torch.get_num_threads(),
               "precision": cfg.precision,
               "flops_per_image": fl_img, "peak_tflops": peak, "peak_source": peak_src,
               "device": metrics.device_name(device), "resumed_from": start, "fingerprint": fp,
               "provenance": provenance(fp)}
    state = ckpt.full_model_state(model)  # a collective: every rank takes part
    if de.is_main:
        enc = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        enc = {k.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", ""): v for k, v in enc.items()}
        meta = {"model": cfg.model, "step": cfg.steps, "image_size": cfg.image_size, "in_chans": cfg.in_chans,
                "fingerprint": fp}
        if not data.synthetic:  # evaluation normalises with the pretraining set's statistics
            meta["norm"] = {"mean": [float(v) for v in data.ds.stats["mean"]],
                            "std": [float(v) for v in data.ds.stats["std"]], "tiles": str(cfg.data)}
        save_torch(out_dir / "encoder.pt", {"meta": meta, "state_dict": enc})
        with atomic_path(out_dir / "metrics.jsonl") as tmp:
            shutil.copyfile(metrics_path, tmp)
        write_json(out_dir / "summary.json", summary, newline=False)
    launch.shutdown()
    return summary
