"""The GPU check (``scripts/gpu-check``): one command, a time budget, a JSON and a markdown table.

On one device, for each model size (ViT-Base, -Huge, -1B, -3B, then -5B where it fits) and one batch:

``plain``           a plain timm MAE, written as anyone would: timm ``PatchEmbed`` + ``Block`` s, noise by
                    ``torch.rand`` on the device, bf16 autocast, fused AdamW, eager, ``loss.backward()``;
``geofm``           this project's model and step (:func:`geofm.train.step.train_step`, the step that
                    pretraining and the profiler run), eager;
``geofm_compile``   the same with per-block ``torch.compile``;
``fsdp2_1rank``     the project's step under FSDP2 (FULL_SHARD) on a one-rank process group, eager;

each with images/s (median step), achieved TFLOP/s (analytic FLOPs, :mod:`geofm.train.flops`), MFU against the
device's peak, peak memory, energy per image from NVML/amdsmi where the platform has it. Then ``loader``: the
training batches (:class:`geofm.data.loader.StepBatches`) over synthetic tiles with the augmentation on the
device (``augment_on_device: all``) and on the CPU, images/s delivered to the device.

Every measurement is time-boxed (``--measure-s``) inside an overall budget (``--budget-s``, default 400 s
so that the whole command stays under 8 minutes on one GPU); a size that runs out of memory is recorded as
such and the larger sizes after it are skipped; results are rewritten after every measurement, so an interrupted
check leaves what it measured. ``--cpu`` runs the same code on tiny models (the test suite does).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..common.io import write_json, write_text
from ..common.seeding import seed_global_torch, seeded_generator, sequence_rng

GPU_MODELS = ("vit_base", "vit_1b", "vit_huge", "vit_3b", "vit_5b")  # in order of priority
GPU_BATCH = {"vit_base": 256, "vit_huge": 64, "vit_1b": 64, "vit_3b": 32, "vit_5b": 16}
CPU_MODELS = ("test_micro", "demo_tiny")
KINDS = ("plain", "geofm", "geofm_compile", "fsdp2_1rank")


@dataclass
class Settings:
    models: tuple
    batch: dict
    image_size: int
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    precision: str
    compile_backend: str
    budget_s: float
    measure_s: float
    warmup: int
    steps: int
    loader_tile: int
    loader_workers: int
    fsdp_models: tuple


def settings(cpu: bool, budget_s: float | None = None) -> Settings:
    if cpu:
        return Settings(CPU_MODELS, {m: 8 for m in CPU_MODELS}, 32, 32, 1, 2, "fp32", "eager",
                        budget_s or 60.0, 3.0, 1, 3, 40, 0, CPU_MODELS[:1])
    return Settings(GPU_MODELS, dict(GPU_BATCH), 224, 512, 8, 16, "bf16", "inductor", budget_s or 400.0, 40.0, 3, 10,
                    256, min(8, os.cpu_count() or 1), ("vit_base", "vit_1b"))


# ------------------------------------------------------------------------------------------ plain timm MAE
class PlainMAE(nn.Module):
    """The MAE of He et al. on timm blocks, nothing else: the baseline the project's step is held against."""

    def __init__(self, model: str, image_size: int, decoder_dim: int, decoder_depth: int, decoder_heads: int):
        super().__init__()
        from timm.layers import PatchEmbed
        from timm.models.vision_transformer import Block

        from ..models.mae import sincos_pos_embed
        from ..models.registry import get_spec

        s = get_spec(model)
        self.p = s.patch
        self.patch_embed = PatchEmbed(image_size, s.patch, 3, s.width)
        n = self.patch_embed.num_patches
        g = int(n ** 0.5)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, s.width))
        self.register_buffer("pos", sincos_pos_embed(s.width, g))
        self.blocks = nn.ModuleList(Block(s.width, s.heads, s.mlp / s.width, qkv_bias=True) for _ in range(s.depth))
        self.norm = nn.LayerNorm(s.width, eps=1e-6)
        self.decoder_embed = nn.Linear(s.width, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("dpos", sincos_pos_embed(decoder_dim, g))
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads, 4.0, qkv_bias=True)
                                            for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, s.patch ** 2 * 3)

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75) -> torch.Tensor:
        x = self.patch_embed(imgs) + self.pos[:, 1:]
        b, n, d = x.shape
        keep = int(n * (1 - mask_ratio))
        shuffle = torch.argsort(torch.rand(b, n, device=x.device), dim=1)
        restore = torch.argsort(shuffle, dim=1)
        x = torch.gather(x, 1, shuffle[:, :keep, None].expand(-1, -1, d))
        x = torch.cat([(self.cls_token + self.pos[:, :1]).expand(b, -1, -1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, n - keep, -1).to(x.dtype)], dim=1)
        tokens = torch.gather(tokens, 1, restore[:, :, None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.dpos
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        p = self.p
        c, h = imgs.shape[1], imgs.shape[2] // p
        target = imgs.reshape(b, c, h, p, h, p).permute(0, 2, 4, 3, 5, 1).reshape(b, h * h, p * p * c)
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, restore)
        return (((pred.float() - target) ** 2).mean(-1) * mask).sum() / mask.sum()


# ------------------------------------------------------------------------------------------ measurements
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak(device: torch.device, precision: str) -> tuple[float, str]:
    """The device's peak: ``geofm.profile.peaks`` where that table exists, else the metrics module's."""
    try:
        from . import peaks  # type: ignore[attr-defined]

        got = peaks.peak_tflops(device, precision)
        if isinstance(got, tuple):
            return float(got[0]), str(got[1])
        if isinstance(got, dict):
            return float(got["tflops"]), str(got.get("source", "geofm.profile.peaks"))
        return float(got), "geofm.profile.peaks"
    except (ImportError, AttributeError, KeyError, TypeError):
        from ..train import metrics

        return metrics.peak_tflops(device, precision)


def _timed_steps(step, device: torch.device, st: Settings, deadline: float) -> tuple[list[float], float | None]:
    """Run ``step()`` for warm-up then timed steps until ``st.steps`` or the deadline; (times, joules)."""
    from .throughput import _energy_j

    for _ in range(st.warmup):
        step()
        if time.monotonic() > deadline:
            break
    _sync(device)
    e0 = _energy_j(device)
    times = []
    while len(times) < st.steps and (not times or time.monotonic() < deadline):
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    e1 = _energy_j(device)
    return times, (e1 - e0) if e0 is not None and e1 is not None else None


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _build(kind: str, model: str, st: Settings, device: torch.device):
    """(module, step(x) -> None) of one kind; the optimizer is fused AdamW on GPUs."""
    from ..distributed.parallelize import apply_compile, parallelize, parse_strategy
    from ..models.mae import build_mae, materialize
    from ..models.registry import num_patches
    from ..data.sampler import mask_noise
    from ..train.pretrain import TrainConfig, build_model, param_groups, step_options
    from ..train.step import train_step

    fused = device.type == "cuda" or None
    bf16 = st.precision == "bf16"
    if kind == "plain":
        seed_global_torch(0)
        m = PlainMAE(model, st.image_size, st.decoder_dim, st.decoder_depth, st.decoder_heads).to(device)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=fused)

        def plain_step(x):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = m(x)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return m, plain_step
    cfg = TrainConfig(model=model, image_size=st.image_size, decoder_dim=st.decoder_dim, decoder_depth=st.decoder_depth,
                      decoder_heads=st.decoder_heads, precision=st.precision, compile=False, device=device.type,
                      strategy="FULL_SHARD" if kind == "fsdp2_1rank" else "NO_SHARD")
    if kind == "fsdp2_1rank":
        m = build_mae(model, st.image_size, 3, device="meta", decoder_dim=st.decoder_dim,
                      decoder_depth=st.decoder_depth, decoder_heads=st.decoder_heads)
        parallelize(m, parse_strategy("FULL_SHARD"), 1, device, st.precision)
        materialize(m, device, 0)
        autocast = False  # FSDP2's MixedPrecisionPolicy casts
    else:
        m, autocast = build_model(cfg, 1, device)
        if kind == "geofm_compile":
            apply_compile(m, backend=st.compile_backend)
    opt = torch.optim.AdamW(param_groups(m, cfg.weight_decay), lr=1e-4, betas=cfg.betas, fused=fused)
    sopts = step_options(cfg, autocast)
    n_patch = num_patches(model, st.image_size)
    counter = [0]

    def geofm_step(x):
        # as the trainer's loop: this step's mask noise drawn on the host for this rank's rows, then copied
        noise = mask_noise(0, counter[0], 0, x.shape[0], n_patch, 0, 1).to(device, non_blocking=True)
        counter[0] += 1
        train_step(m, opt, x, noise, sopts, 1)

    return m, geofm_step


def _structure(m: nn.Module) -> dict:
    """What was actually built: compiled blocks (``torch.compile`` wrappers) and FSDP2-sharded parameters."""
    from torch.distributed.tensor import DTensor

    compiled = sum(isinstance(x, torch._dynamo.eval_frame.OptimizedModule) for x in m.modules())
    sharded = sum(isinstance(p, DTensor) for p in m.parameters())
    return {"compiled_modules": compiled, "sharded_params": sharded, "n_params_tensors": len(list(m.parameters()))}


def measure(kind: str, model: str, batch: int, st: Settings, device: torch.device, deadline: float) -> dict:
    from ..models.registry import count_params
    from ..train import flops, metrics

    row = {"kind": kind, "model": model, "batch": batch, "params": count_params(model, st.image_size)}
    t0 = time.monotonic()
    _free(device)

    def run_kind():  # its locals (model, optimizer state) go when it returns or raises
        m, step = _build(kind, model, st, device)
        row.update(_structure(m))
        x = torch.randn(batch, 3, st.image_size, st.image_size, generator=seeded_generator(0)).to(device)
        times, joules = _timed_steps(lambda: step(x), device, st, deadline)
        return times, joules, metrics.peak_memory_gb(device)

    try:
        times, joules, mem = run_kind()
    except torch.OutOfMemoryError as exc:
        row.update(status=f"out of memory: {str(exc).splitlines()[0][:160]}", seconds=time.monotonic() - t0)
        times = None
    _free(device)
    if times is None:
        return row
    fl = flops.mae_train_flops_per_image(model, st.image_size, 3, 0.75, st.decoder_dim, st.decoder_depth)
    peak, src = _peak(device, st.precision)
    med = statistics.median(times)
    ips = batch / med
    row.update(status="ok", steps=len(times), step_s=med, images_per_s=ips, tflops=ips * fl / 1e12,
               mfu=metrics.mfu(ips * fl, peak), peak_tflops=peak, peak_source=src,
               **mem, energy_j_per_image=(joules / (len(times) * batch)) if joules is not None else "n/a",
               seconds=time.monotonic() - t0)
    return row


def synthetic_tiles(out: Path, n: int, size: int, bands: int = 3) -> Path:
    """A tiles directory in the tile stage's layout (one shard, manifest, stats) of random uint8 tiles."""
    import numpy as np
    import pandas as pd

    from ..data.shards import MANIFEST, STATS, shard_name

    out.mkdir(parents=True, exist_ok=True)
    rng = sequence_rng(0)
    np.save(out / shard_name(0), rng.integers(0, 256, (n, bands, size, size), dtype=np.uint8))
    pd.DataFrame({"tile_id": [f"t{i}" for i in range(n)], "split": "train", "shard": 0, "index": np.arange(n),
                  "label": np.zeros(n, dtype=np.int64)}).to_parquet(out / MANIFEST)
    (out / STATS).write_text(json.dumps({"mean": [0.5] * bands, "std": [0.25] * bands, "bands": bands,
                                         "tile_size": size}))
    return out


def measure_loader(stage: str, tiles: Path, batch: int, st: Settings, device: torch.device, deadline: float) -> dict:
    """Images/s of the training batches delivered to the device as normalised float (``stage``: where the
    augmentation runs, see :mod:`geofm.data.augment`)."""
    from ..data.loader import StepBatches

    t0 = time.monotonic()
    data = StepBatches(tiles, batch, st.image_size, seed=0, split="train", steps=10**6, augment_on_device=stage)
    dl = iter(torch.utils.data.DataLoader(data, batch_size=None, num_workers=st.loader_workers,
                                          pin_memory=device.type == "cuda"))
    for _ in range(max(st.warmup, st.loader_workers)):
        next(dl).to(device, non_blocking=True)
    _sync(device)
    n, t = 0, time.perf_counter()
    while n < 4 * st.steps and (n == 0 or time.monotonic() < deadline):
        x = next(dl).to(device, non_blocking=True)
        n += 1
    _sync(device)
    dt = time.perf_counter() - t
    assert x.dtype == torch.float32 and x.shape == (batch, 3, st.image_size, st.image_size)
    return {"kind": f"loader_{stage}", "model": "-", "batch": batch, "status": "ok", "batches": n,
            "images_per_s": n * batch / dt, "workers": st.loader_workers, "seconds": time.monotonic() - t0}


# ------------------------------------------------------------------------------------------ report
def _fmt(v, pct=False, nd=1):
    if not isinstance(v, (int, float)):
        return "–"
    return f"{100 * v:.{nd}f}%" if pct else f"{v:,.{nd}f}"


def markdown(report: dict) -> str:
    rows = report["rows"]
    by = {(r["kind"], r["model"]): r for r in rows}
    lines = [f"# GPU check: {report['device']}", "",
             f"torch {report['torch']}, {report['precision']}, image {report['image_size']}, decoder "
             f"{report['decoder']}, peak {report.get('peak_tflops', '–')} TFLOP/s ({report.get('peak_source', '?')}); "
             f"{report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget.", "",
             "| model | batch | plain img/s | geofm img/s | geofm+compile img/s | FSDP2 1 rank img/s | best / plain "
             "| TFLOP/s (best) | MFU (best) | peak mem GB plain / best | J/image (best) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in report["models"]:
        got = {k: by.get((k, model)) for k in KINDS}
        if not any(got.values()):
            continue
        ok = {k: r for k, r in got.items() if r and r.get("status") == "ok"}
        cell = {k: (_fmt(r["images_per_s"]) if r and r.get("status") == "ok" else (r["status"].split(":")[0] if r else "–"))
                for k, r in got.items()}
        proj = [r for k, r in ok.items() if k != "plain"]
        best = max(proj, key=lambda r: r["images_per_s"]) if proj else None
        plain = ok.get("plain")
        ratio = f"{best['images_per_s'] / plain['images_per_s']:.2f}×" if best and plain else "–"
        batch = next(r["batch"] for r in got.values() if r)
        lines.append(f"| {model} | {batch} | {cell['plain']} | {cell['geofm']} | {cell['geofm_compile']} | "
                     f"{cell['fsdp2_1rank']} | {ratio} | {_fmt(best and best.get('tflops'))} | "
                     f"{_fmt(best and best.get('mfu'), pct=True)} | {_fmt(plain and plain.get('peak_mem_gb'))} / "
                     f"{_fmt(best and best.get('peak_mem_gb'))} | "
                     f"{_fmt(best and best.get('energy_j_per_image'), nd=3)} |")
    loaders = [r for r in rows if r["kind"].startswith("loader")]
    if loaders:
        lines += ["", "| loader (augmentation) | batch | workers | images/s to the device |", "|---|---|---|---|"]
        for r in loaders:
            lines.append(f"| {r['kind'][7:]} | {r['batch']} | {r.get('workers', '–')} | "
                         f"{_fmt(r.get('images_per_s')) if r.get('status') == 'ok' else r['status']} |")
    skipped = [r for r in rows if r.get("status") != "ok"]
    if skipped:
        lines += ["", "Not measured: " + "; ".join(f"{r['kind']} {r['model']}: {r['status']}" for r in skipped)]
    return "\n".join(lines) + "\n"


def _write(report: dict, out: Path, stem: str) -> None:
    write_json(out / f"{stem}.json", report)
    write_text(out / f"{stem}.md", markdown(report))


def run(cpu: bool, out: Path, budget_s: float | None = None, models: list[str] | None = None,
        batch: dict[str, int] | None = None, steps: int | None = None, kinds: list[str] | None = None,
        loader: bool = True) -> dict:
    from ..train import metrics

    st = settings(cpu, budget_s)
    if models:
        st.models = tuple(models)
    st.batch.update(batch or {})
    st.steps = steps or st.steps
    run_kinds = tuple(kinds or KINDS)
    device = torch.device("cpu") if cpu else torch.device("cuda", 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    start = time.monotonic()
    end = start + st.budget_s
    name = metrics.device_name(device)
    stem = "gpu-check-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    peak, src = _peak(device, st.precision)
    report = {"device": name, "device_full": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
              "torch": torch.__version__, "precision": st.precision, "image_size": st.image_size,
              "decoder": f"{st.decoder_dim}x{st.decoder_depth}", "budget_s": st.budget_s, "models": list(st.models),
              "timed_steps": st.steps, "warmup_steps": st.warmup,
              "peak_tflops": peak, "peak_source": src, "rows": [], "elapsed_s": 0.0, "complete": False}

    def add(row):
        report["rows"].append(row)
        report["elapsed_s"] = time.monotonic() - start
        _write(report, out, stem)
        metrics.log(f"gpu-check: {row['kind']:>14} {row['model']:>10} {row.get('status')} "
                    f"{_fmt(row.get('images_per_s'))} img/s  ({report['elapsed_s']:.0f}/{st.budget_s:.0f} s)")

    pg = _one_rank_group(device)
    oom = False
    try:
        for model in st.models:
            this_oom = False
            for kind in run_kinds:
                if kind == "fsdp2_1rank" and model not in st.fsdp_models and not kinds:
                    continue
                left = end - time.monotonic()
                need = st.measure_s * (2.5 if kind == "geofm_compile" and not cpu else 1.0)
                if oom or left < need:
                    add({"kind": kind, "model": model, "batch": st.batch.get(model, 8 if cpu else 32),
                         "status": "skipped: a smaller size ran out of memory" if oom else
                         f"skipped: {left:.0f} s of the budget left, needs ~{need:.0f} s"})
                    continue
                row = measure(kind, model, st.batch.get(model, 8 if cpu else 32), st, device,
                              time.monotonic() + min(need, left))
                add(row)
                this_oom = this_oom or row["status"].startswith("out of memory")
            oom = oom or this_oom  # the larger sizes that follow will not fit either
        if loader:
            left = end - time.monotonic()
            with tempfile.TemporaryDirectory() as tmp:
                tiles = synthetic_tiles(Path(tmp) / "tiles", 64 if cpu else 512, st.loader_tile)
                loader_batch = 8 if cpu else 256
                for stage in ("all", "none"):
                    left = end - time.monotonic()
                    if left < st.measure_s / 2:
                        add({"kind": f"loader_{stage}", "model": "-", "batch": loader_batch,
                             "status": f"skipped: {left:.0f} s of the budget left"})
                        continue
                    add(measure_loader(stage, tiles, loader_batch, st, device,
                                       time.monotonic() + min(st.measure_s / 2, left)))
    finally:
        if pg:
            torch.distributed.destroy_process_group()
    report["complete"] = True
    report["elapsed_s"] = time.monotonic() - start
    _write(report, out, stem)
    return report


def _batches(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        model, sep, n = item.partition("=")
        if not sep or not n.isdigit() or int(n) < 1:
            raise ValueError(f"--batch takes MODEL=N with N a positive integer, got {item!r}")
        out[model] = int(n)
    return out


def _one_rank_group(device: torch.device) -> bool:
    """A one-rank process group (an in-memory store) for FSDP2 on one device."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu-check", description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="tiny models on the CPU (what the test suite runs)")
    ap.add_argument("--out", default="docs/gpu-check", help="directory for gpu-check-<device>.json and .md")
    ap.add_argument("--budget-s", type=float, default=None, help="overall time budget (default 400 s; --cpu 60 s)")
    ap.add_argument("--models", nargs="+", default=None, help="model sizes, in order (default: Base, 1B, Huge, 3B, 5B)")
    ap.add_argument("--batch", nargs="+", default=[], metavar="MODEL=N",
                    help="batch per model instead of the defaults (e.g. vit_huge=128), for a batch sweep")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 10; --cpu 3)")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=None,
                    help="measure only these kinds (named here, fsdp2_1rank runs at every size)")
    ap.add_argument("--no-loader", action="store_true", help="leave out the loader measurements")
    args = ap.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        ap.error("no GPU visible (torch.cuda.is_available() is False); use --cpu for the CPU mode")
    try:
        batch = _batches(args.batch)
    except ValueError as exc:
        ap.error(str(exc))
    if args.steps is not None and args.steps < 1:
        ap.error("--steps must be at least 1")
    report = run(args.cpu, Path(args.out), args.budget_s, args.models, batch, args.steps, args.kinds,
                 not args.no_loader)
    print(markdown(report))
    return 0
