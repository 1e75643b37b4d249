"""Frozen-encoder features, with an optional on-disk cache.

``extract_features`` turns uint8 tiles ``N×C×S×S`` into ``(N, D)`` float32 features: MAE's test transform
(antialiased bicubic resize to ``image_size / crop_pct``, centre crop ``image_size``), normalised with the
band ``mean``/``std`` given (0..1 units; the pretraining set's), through :func:`geofm.data.augment.eval_batch`,
run ``encoder.forward_features`` in eval mode without gradients. The encoder's train/eval mode is
restored afterwards.

The cache is a ``torch.save`` file holding ``{"key": {...}, "features": tensor}``; it is reused only
when the stored key equals the requested one (model, step, dataset, split plus whatever the caller adds,
e.g. the encoder file's size and mtime) and the row count matches; otherwise it is recomputed and
rewritten atomically.

Pooling: ``pool="mean"`` (MAE's global pool: the mean of the last block's patch tokens, layer-normed; the
default here) or ``"cls"`` (the cls token) is passed to ``forward_features(x, pool=...)``; it belongs in the
cache key (and a non-mean pool in the file name).

Several processes: when ``torch.distributed`` is initialised with more than one rank, rank ``r`` runs the
encoder on rows ``[r·m, (r+1)·m)`` (``m = ceil(N / W)``, the last slice padded by repeating a row so that
every rank makes the same number of forward calls — needed when the encoder is an FSDP2 module, whose
forward is a collective), the slices are all-gathered and every rank returns the full ``(N, D)`` tensor.
Only rank 0 writes the cache; a cache hit counts only if every rank sees it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import torch

from geofm.common.io import save_torch
from geofm.common.precision import bf16_autocast
from geofm.common.ranks import rank_world
from geofm.data.augment import CROP_PCT, eval_batch


def cache_key(model: str, step, dataset: str, split: str, **extra) -> dict:
    """The identity of a feature file. ``extra`` (image size, encoder fingerprint, ...) is folded in."""
    key = {"model": str(model), "step": step, "dataset": str(dataset), "split": str(split)}
    key.update({k: v for k, v in sorted(extra.items())})
    return key


def cache_file(cache_dir: str | os.PathLike, key: Mapping) -> Path:
    """``{cache_dir}/{model}/step-{step}/{dataset}.{split}.pt`` (``.{split}.{pool}.pt`` for a pool other
    than ``mean``)."""
    pool = key.get("pool", "mean")
    suffix = "" if pool == "mean" else f".{pool}"
    return Path(cache_dir) / str(key["model"]) / f"step-{key['step']}" / f"{key['dataset']}.{key['split']}{suffix}.pt"


def _all_ranks_true(flag: bool) -> bool:
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def _on_device(module: torch.nn.Module, device) -> bool:
    dev = torch.device(device)
    for p in module.parameters():
        if p.device.type != dev.type or (dev.index is not None and p.device.index != dev.index):
            return False
    return True


def shard_encoder(encoder: torch.nn.Module, device, pool: str = "mean", strategy: str = "FULL_SHARD",
                  precision: str = "fp32") -> torch.nn.Module:
    """Shard a loaded encoder over the ranks with FSDP2 (for models that do not fit one device); returns a
    module whose ``forward_features(x)`` is ``encoder.forward_features(x, pool=pool)`` run through the FSDP
    root. Every rank must call it the same number of times (:func:`extract_features` does)."""
    from geofm.distributed.parallelize import parallelize, parse_strategy

    _, world = rank_world()

    class _Sharded(torch.nn.Module):
        def __init__(self, enc):
            super().__init__()
            self.encoder = enc

        def forward(self, x):
            return self.encoder.forward_features(x, pool=pool)

        def forward_features(self, x):
            return self(x)

    holder = _Sharded(encoder)
    if world > 1:  # from the CPU: fully_shard moves one block at a time to the device (15B: 58.5 GB fp32)
        parallelize(holder, parse_strategy(strategy), world, torch.device(device), precision)
    else:
        holder.to(device)
    return holder


def _load_cached(path: Path, key: Mapping, n: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # corrupt / foreign file: recompute
        return None
    if not isinstance(blob, dict) or blob.get("key") != dict(key):
        return None
    feats = blob.get("features")
    if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or feats.shape[0] != n:
        return None
    return feats


def _save_cached(path: Path, key: Mapping, feats: torch.Tensor) -> None:
    save_torch(path, {"key": dict(key), "features": feats})


def preprocess(batch_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float],
               image_size: int, crop_pct: float = CROP_PCT) -> torch.Tensor:
    """uint8 ``B×C×S×S`` → float ``B×C×image_size×image_size``, normalised: MAE's test transform, the one
    of :func:`geofm.data.augment.eval_batch` (antialiased bicubic resize to ``image_size / crop_pct``, centre
    crop)."""
    return eval_batch(batch_uint8, image_size, mean, std, crop_pct)


@torch.no_grad()
def extract_features(encoder: torch.nn.Module, images_uint8, mean: Sequence[float], std: Sequence[float],
                     image_size: int, batch_size: int = 256, *, device: str | torch.device = "cpu",
                     cache_path: str | os.PathLike | None = None, cache_key: Mapping | None = None,
                     pool: str = "mean", distributed: bool = True, crop_pct: float = CROP_PCT,
                     precision: str = "fp32") -> torch.Tensor:
    """Features ``(N, D)`` float32 on CPU of ``images_uint8`` (uint8 tensor or array ``N×C×S×S``).

    With ``cache_path`` the result is loaded from / saved to that file; ``cache_key`` (see
    :func:`cache_key`) must then be given and identifies the content. ``pool`` other than ``"mean"`` is
    passed as ``forward_features(x, pool=pool)``. With ``distributed`` (default) and more than one
    initialised rank the work is split across ranks (see the module docstring). ``precision="bf16"`` runs
    the encoder under bf16 autocast (features are returned as float32 either way).
    """
    if pool not in ("mean", "cls"):
        raise ValueError(f"pool must be 'mean' or 'cls', got {pool!r}")
    rank, world = rank_world() if distributed else (0, 1)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images = torch.as_tensor(images_uint8)
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    n = images.shape[0]
    path = None
    if cache_path is not None:
        if cache_key is None:
            raise ValueError("cache_path given without cache_key")
        path = Path(cache_path)
        cached = _load_cached(path, cache_key, n)
        hit = cached is not None
        if world > 1:
            hit = _all_ranks_true(hit)
        if hit:
            return cached

    def forward(x):
        return encoder.forward_features(x) if pool == "mean" else encoder.forward_features(x, pool=pool)

    mine = images
    if world > 1 and n > 0:
        per = -(-n // world)
        rows = torch.arange(rank * per, (rank + 1) * per).clamp_max(n - 1)
        mine = images[rows]
    was_training = encoder.training
    encoder.eval()
    try:
        if not _on_device(encoder, device):
            encoder.to(device)
        chunks = []
        for i in range(0, mine.shape[0], batch_size):
            x = preprocess(mine[i:i + batch_size], mean, std, image_size, crop_pct).to(device)
            with bf16_autocast(torch.device(device).type, precision == "bf16"):
                f = forward(x)
            if f.ndim != 2:
                raise ValueError(f"encoder.forward_features must return (B, D), got {tuple(f.shape)}")
            chunks.append(f.detach().float().cpu())
        if chunks:
            feats = torch.cat(chunks)
        else:  # empty split: ask the encoder for its width on a dummy input
            dummy = torch.zeros(1, images.shape[1], image_size, image_size, device=device)
            feats = torch.zeros(0, forward(dummy).shape[1])
    finally:
        encoder.train(was_training)
    if world > 1 and n > 0:
        import torch.distributed as dist

        parts = [torch.empty_like(feats) for _ in range(world)]
        dist.all_gather(parts, feats.contiguous())
        feats = torch.cat(parts)[:n]
    feats = feats.contiguous()
    if path is not None and rank == 0:
        _save_cached(path, cache_key, feats)
    return feats
