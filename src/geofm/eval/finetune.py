"""End-to-end fine-tuning of an encoder for scene classification (the MAE / BEiT recipe, scaled down).

The model is :class:`Classifier`: the encoder (optionally with stochastic depth), pooled patch tokens
(``pool="mean"``) or the cls token (``pool="cls"``), a norm (``LayerNorm``, or ``BatchNorm1d`` without
affine as in the linear probe) and a ``Linear`` head (``trunc_normal(std=2e-5)``, zero bias, as MAE).

Training (:func:`finetune`): AdamW (betas 0.9/0.999) with **layer-wise learning-rate decay** — parameter
group of layer ``l`` (0 = patch embedding / cls token, ``i+1`` = block ``i``, ``depth+1`` = final norm and
head) gets ``lr · layer_decay^(depth+1-l)`` — no weight decay on biases, norms and tokens; linear warm-up
then a half-cosine per iteration; absolute lr = ``base_lr · global_batch / 256``; cross-entropy on soft
targets with label smoothing and optional mixup (``lam ~ Beta(a, a)``, the partner is the batch rolled
by one within the rank's slice); MAE's augmentation: a random-resized-crop (bicubic) + horizontal flip,
normalised with the pretraining set's statistics, through the one preprocessing path
(:func:`geofm.data.augment.train_view`; :func:`~geofm.data.augment.eval_batch` for the test split).

Distribution: under ``torch.distributed`` with more than one rank the model is sharded with FSDP2 through
:func:`geofm.distributed.parallelize.parallelize` (blocks, then the root — ``Classifier`` has
``.encoder.blocks`` as the engine expects), or, with ``strategy`` DDP, replicated and its gradients
all-reduced by ``DistributedDataParallel``. Batches come from the one step-indexed sampler
(:class:`geofm.data.sampler.StepSampler`, as pretraining's): the samples of step ``s`` and their crop boxes
and flips are functions of (seed, s, row of the global batch), and rank ``r`` of ``W`` takes rows ``r::W``
(an "epoch" is ``len(images) // batch`` steps of the sampler's endless stream); the mean loss over the local
rows, averaged across ranks by the gradient reduction, equals the 1-rank loss over the global batch. So without mixup, drop path and BatchNorm (whose randomness
or statistics are per rank), W ranks follow the 1-rank run up to float reduction order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from geofm.common.lr import warmup_cosine
from geofm.common.precision import bf16_autocast
from geofm.common.ranks import rank_world
from geofm.common.seeding import seed_global_torch, seeded_generator
from geofm.config import complete_section
from geofm.data.augment import eval_batch, train_view
from geofm.data.sampler import StepSampler


# FinetuneConfig field -> the evaluate key it comes from; the defaults are the schema's (geofm.config)
EVALUATE_KEYS = {"epochs": "finetune_epochs", "batch_size": "finetune_batch_size", "base_lr": "finetune_lr",
                 "weight_decay": "finetune_weight_decay", "layer_decay": "layer_decay", "drop_path": "drop_path",
                 "label_smoothing": "label_smoothing", "mixup": "mixup", "warmup_epochs": "finetune_warmup_epochs",
                 "augment": "finetune_augment", "crop_scale": "finetune_crop_scale", "crop_pct": "crop_pct",
                 "pool": "pool", "head_norm": "finetune_head_norm", "strategy": "finetune_strategy",
                 "precision": "finetune_precision", "activation_checkpointing": "finetune_activation_checkpointing"}
_DEFAULTS = complete_section({}, "evaluate")


def _default(field_name: str):
    value = _DEFAULTS[EVALUATE_KEYS[field_name]]
    return tuple(value) if isinstance(value, list) else value


@dataclass
class FinetuneConfig:
    """Fine-tuning settings; each default is the schema's value of the ``evaluate`` key in
    :data:`EVALUATE_KEYS` (e.g. ``base_lr`` = ``finetune_lr``: MAE's blr, absolute lr = base_lr * batch / 256;
    ``warmup_epochs`` None = 10 % of the epochs; ``strategy`` applies when the world size is > 1)."""
    epochs: int = _default("epochs")
    batch_size: int = _default("batch_size")  # global
    base_lr: float = _default("base_lr")
    weight_decay: float = _default("weight_decay")
    layer_decay: float = _default("layer_decay")
    drop_path: float = _default("drop_path")
    label_smoothing: float = _default("label_smoothing")
    mixup: float = _default("mixup")
    warmup_epochs: float | None = _default("warmup_epochs")
    min_lr: float = 1e-6  # not a setting: the floor of the cosine
    augment: bool = _default("augment")
    crop_scale: tuple = _default("crop_scale")
    crop_pct: float = _default("crop_pct")
    pool: str = _default("pool")
    head_norm: str = _default("head_norm")
    strategy: str = _default("strategy")
    precision: str = _default("precision")
    activation_checkpointing: int = _default("activation_checkpointing")
    seed: int = 0

    @classmethod
    def from_evaluate(cls, ev: dict, seed: int) -> "FinetuneConfig":
        """From a filled ``evaluate`` section (:func:`geofm.config.complete_section`)."""
        kw = {f: ev[k] for f, k in EVALUATE_KEYS.items()}
        for f in ("epochs", "batch_size", "activation_checkpointing"):
            kw[f] = int(kw[f])
        for f in ("base_lr", "weight_decay", "layer_decay", "drop_path", "label_smoothing", "mixup", "crop_pct"):
            kw[f] = float(kw[f])
        for f in ("pool", "head_norm", "strategy", "precision"):
            kw[f] = str(kw[f])
        kw["augment"] = bool(kw["augment"])
        kw["crop_scale"] = tuple(float(v) for v in kw["crop_scale"])
        kw["warmup_epochs"] = None if kw["warmup_epochs"] is None else float(kw["warmup_epochs"])
        return cls(**kw, seed=seed)


class Classifier(nn.Module):
    """``encoder`` → pooled features → norm → ``Linear``; ``forward(x)`` returns logits."""

    def __init__(self, encoder: nn.Module, n_classes: int, pool: str = "mean", head_norm: str = "layernorm"):
        super().__init__()
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {pool!r}")
        if head_norm not in ("layernorm", "batchnorm"):
            raise ValueError(f"head_norm must be 'layernorm' or 'batchnorm', got {head_norm!r}")
        if pool == "mean":  # MAE deletes the final norm for its global pool (models_vit.py): unused, it
            encoder.norm = nn.Identity()  # would leave DDP with parameters that never get a gradient
        self.encoder, self.pool = encoder, pool
        dim = int(encoder.width)
        self.fc_norm = (nn.LayerNorm(dim, eps=1e-6) if head_norm == "layernorm"
                        else nn.BatchNorm1d(dim, affine=False, eps=1e-6))
        self.head = nn.Linear(dim, n_classes)
        with torch.no_grad():
            if isinstance(self.fc_norm, nn.LayerNorm):
                self.fc_norm.weight.fill_(1.0)
                self.fc_norm.bias.zero_()
            g = seeded_generator(1234)
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=g).clamp_(-2, 2) * 2e-5)
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(self.encoder.forward_features(x, pool=self.pool)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, under the name :func:`geofm.eval.features.extract_features` calls (goes through
        ``forward`` so that FSDP2's root hooks run)."""
        return self(x)


def with_drop_path(encoder: nn.Module, drop_path: float) -> nn.Module:
    """A copy of a ``ViTEncoder`` with stochastic depth ``drop_path`` (linearly increasing per block)."""
    if drop_path <= 0:
        return encoder
    from geofm.models.mae import ViTEncoder, sincos_pos_embed

    if not isinstance(encoder, ViTEncoder):
        raise TypeError(f"drop_path needs a geofm ViTEncoder, got {type(encoder).__name__}")
    new = ViTEncoder(encoder.spec, encoder.img_size, encoder.in_chans, drop_path=drop_path)
    new.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        new.pos_embed.copy_(sincos_pos_embed(encoder.spec.width, encoder.grid))
    return new


def layer_id(name: str, depth: int) -> int:
    """MAE/BEiT layer index of a parameter of :class:`Classifier` (names with or without ``encoder.``)."""
    n = name[len("encoder."):] if name.startswith("encoder.") else name
    if n in ("cls_token", "pos_embed") or n.startswith("patch_embed"):
        return 0
    if n.startswith("blocks."):
        return int(n.split(".")[1]) + 1
    return depth + 1


def param_groups_lrd(model: nn.Module, weight_decay: float, layer_decay: float, depth: int) -> list[dict]:
    """Parameter groups with ``lr_scale = layer_decay^(depth+1-layer)`` and weight decay only on matrices."""
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_wd = p.ndim < 2 or "token" in name
        lid = layer_id(name, depth)
        key = (lid, no_wd)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "weight_decay": 0.0 if no_wd else weight_decay,
                           "lr_scale": layer_decay ** (depth + 1 - lid), "layer": lid}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]




def soft_targets(labels: torch.Tensor, n_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / n_classes
    t = torch.full((labels.shape[0], n_classes), off)
    t.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)
    return t


def finetune(encoder: nn.Module, images_uint8: torch.Tensor, labels, n_classes: int, mean: Sequence[float],
             std: Sequence[float], image_size: int, cfg: FinetuneConfig, *,
             device: str | torch.device = "cpu", log=None) -> tuple[nn.Module, list[dict]]:
    """Fine-tune ``encoder`` (modified: it becomes part of the returned model) with a new head on the
    uint8 ``images`` / int ``labels``; returns ``(model in eval mode, per-epoch log)``. ``model(x)`` gives
    logits of normalised float images; under >1 rank it is an FSDP2 module (a collective), or under DDP the
    replica, the same on every rank."""
    from geofm.distributed.parallelize import apply_activation_checkpointing, parallelize, parse_strategy, wrap_ddp

    device = torch.device(device)
    rank, world = rank_world()
    images = torch.as_tensor(images_uint8)
    labels = torch.as_tensor(labels).long()
    n = images.shape[0]
    if n == 0:
        raise ValueError("fine-tuning needs at least one training image")
    bs = min(int(cfg.batch_size), n)
    bs -= bs % world
    if bs < world:
        raise ValueError(f"fine-tuning batch {cfg.batch_size} (capped at {n} images) is smaller than the "
                         f"world size {world}")
    steps_per_epoch = n // bs
    total = steps_per_epoch * int(cfg.epochs)
    warm_epochs = 0.1 * cfg.epochs if cfg.warmup_epochs is None else float(cfg.warmup_epochs)
    warm = int(round(warm_epochs * steps_per_epoch))
    peak = float(cfg.base_lr) * bs / 256
    depth = len(encoder.blocks)

    seed_global_torch(cfg.seed + rank)  # drop path / mixup draws: per rank
    model = Classifier(with_drop_path(encoder, cfg.drop_path), n_classes, cfg.pool, cfg.head_norm)
    apply_activation_checkpointing(model, int(cfg.activation_checkpointing))
    sharded = world > 1 and parse_strategy(cfg.strategy).kind == "fsdp"
    if sharded:  # from the CPU: fully_shard moves one block at a time to the device, then shards it
        parallelize(model, parse_strategy(cfg.strategy), world, device, cfg.precision)
    else:
        model = model.to(device)
    # DDP (finetune_strategy: DDP, more than one rank): replicas with all-reduced gradients, bf16 by autocast
    # as in pretraining; the optimizer's groups and the returned model are the module inside the wrapper
    step_model = wrap_ddp(model, device) if world > 1 and not sharded else model
    autocast = cfg.precision == "bf16" and not sharded
    groups = param_groups_lrd(model, cfg.weight_decay, cfg.layer_decay, depth)
    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups], lr=peak,
                            betas=(0.9, 0.999))
    sampler = StepSampler(n, bs, cfg.seed, rank, world)
    history: list[dict] = []
    it = 0
    step_model.train()
    for epoch in range(int(cfg.epochs)):
        ep_loss, ep_correct, ep_seen = 0.0, 0, 0
        for _ in range(steps_per_epoch):
            lr = warmup_cosine(it, total, warm, peak, cfg.min_lr)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            idx = torch.from_numpy(sampler.indices(it))
            x, y = images[idx], labels[idx]
            if cfg.augment:  # the training view of the one preprocessing path (geofm.data.augment)
                x = train_view(x, image_size, mean, std, *sampler.crops(it, x.shape[-2], x.shape[-1], cfg.crop_scale))
            else:
                x = eval_batch(x, image_size, mean, std, cfg.crop_pct)
            x = x.to(device)
            target = soft_targets(y, n_classes, cfg.label_smoothing)
            if cfg.mixup > 0:
                lam = float(torch.distributions.Beta(cfg.mixup, cfg.mixup).sample())
                x = lam * x + (1 - lam) * x.roll(1, 0)
                target = lam * target + (1 - lam) * target.roll(1, 0)
            target = target.to(device)
            with bf16_autocast(device.type, autocast):
                logits = step_model(x)
            loss = torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            it += 1
            ep_loss += float(loss.detach()) * len(y)
            ep_correct += int((logits.detach().argmax(1).cpu() == y).sum())
            ep_seen += len(y)
        if world > 1:  # the epoch's loss and accuracy over the global batch, not this rank's rows
            import torch.distributed as dist

            tot = torch.tensor([ep_loss, ep_correct, ep_seen], dtype=torch.float64, device=device)
            dist.all_reduce(tot)
            ep_loss, ep_correct, ep_seen = float(tot[0]), int(tot[1]), int(tot[2])
        rec = {"epoch": epoch + 1, "loss": ep_loss / max(ep_seen, 1), "train_top1": ep_correct / max(ep_seen, 1),
               "lr": lr}
        history.append(rec)
        if log is not None:
            log(rec)
    model.eval()
    return model, history
