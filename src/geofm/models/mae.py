"""Masked autoencoder (He et al., 2022) on timm ViT blocks, for any number of input bands.

* ``ViTEncoder``: patch embedding (timm ``PatchEmbed``), a cls token, fixed 2-D sin-cos position
  embeddings (a buffer, not a parameter), timm ``Block`` s (SDPA attention), final LayerNorm.
* ``MAE``: random masking by argsort/gather, a light decoder (512 wide, 8 blocks by default), the
  per-patch pixel loss on masked patches, optionally on normalised pixels (``norm_pix_loss``).

Models are built on the meta device by default-free code paths: nothing here allocates more than the
module's own parameters, and :func:`init_weights` fills parameters (plain tensors or FSDP2 DTensor
shards) deterministically per parameter name, so the same seed gives the same model at every world size
and strategy.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from ..common.seeding import param_generator
from .registry import ViTSpec, decoded_masked, get_spec


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, shape (1, grid*grid (+1), dim)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    gh, gw = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))

    def one(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one(gw), one(gh)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return torch.from_numpy(emb).float().unsqueeze(0)


# MAE's norm_layer=partial(nn.LayerNorm, eps=1e-6) in every block, encoder and decoder (models_mae.py);
# timm's Block would otherwise use nn.LayerNorm's default eps=1e-5
layer_norm = partial(nn.LayerNorm, eps=1e-6)
FC_NORM_EPS = 1e-6  # MAE's fc_norm of the global pool: norm_layer(embed_dim), the same eps


class ViTEncoder(nn.Module):
    def __init__(self, spec: ViTSpec, img_size: int, in_chans: int = 3, drop_path: float = 0.0):
        super().__init__()
        if img_size % spec.patch:
            raise ValueError(f"image size {img_size} is not a multiple of the patch size {spec.patch}")
        self.spec, self.img_size, self.in_chans = spec, img_size, in_chans
        self.grid = img_size // spec.patch
        self.patch_embed = PatchEmbed(img_size, spec.patch, in_chans, spec.width)
        self.cls_token = nn.Parameter(torch.empty(1, 1, spec.width))
        self.register_buffer("pos_embed", torch.empty(1, self.grid**2 + 1, spec.width), persistent=False)
        dpr = [drop_path * i / max(spec.depth - 1, 1) for i in range(spec.depth)]
        self.blocks = nn.ModuleList(
            Block(spec.width, spec.heads, mlp_ratio=spec.mlp / spec.width, qkv_bias=True, drop_path=dpr[i],
                  norm_layer=layer_norm)
            for i in range(spec.depth)
        )
        self.norm = layer_norm(spec.width)

    @property
    def width(self) -> int:
        return self.spec.width

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(x) + self.pos_embed[:, 1:, :].to(x.dtype if x.is_floating_point() else torch.float32)

    def run_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)

    def with_cls(self, x: torch.Tensor) -> torch.Tensor:
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        return torch.cat([cls.to(x.dtype), x], dim=1)

    def forward_features(self, x: torch.Tensor, pool: str = "mean") -> torch.Tensor:
        """Pooled features (B, width), as MAE's ``models_vit.VisionTransformer.forward_features`` pools:

        - ``pool="mean"``, MAE's global pool (``global_pool=True``): the mean of the patch tokens as the last
          block leaves them (MAE deletes the final ``norm`` for it), through a fresh LayerNorm (``fc_norm``,
          eps 1e-6) at its initialisation, unit weight and zero bias, which is where MAE's linear probe
          leaves it (``main_linprobe.py`` trains the head only);
        - ``pool="cls"``: the cls token after the final ``norm``."""
        tokens = self.with_cls(self.embed(x))
        for blk in self.blocks:
            tokens = blk(tokens)
        if pool == "mean":
            pooled = tokens[:, 1:].mean(dim=1)
            return F.layer_norm(pooled, pooled.shape[-1:], eps=FC_NORM_EPS)
        return self.norm(tokens)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


class MAE(nn.Module):
    def __init__(
        self,
        spec: ViTSpec,
        img_size: int,
        in_chans: int = 3,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = False,
        prediction_ratio: float = 1.0,
    ):
        super().__init__()
        if not 0.0 < prediction_ratio <= 1.0:
            raise ValueError(f"prediction_ratio must be in (0, 1], got {prediction_ratio}")
        self.encoder = ViTEncoder(spec, img_size, in_chans)
        self.patch, self.in_chans, self.norm_pix_loss = spec.patch, in_chans, norm_pix_loss
        self.prediction_ratio = prediction_ratio
        self.decoder_embed = nn.Linear(spec.width, decoder_dim)
        self.mask_token = nn.Parameter(torch.empty(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed", torch.empty(1, self.encoder.grid**2 + 1, decoder_dim), persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=layer_norm)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = layer_norm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, spec.patch**2 * in_chans)

    # -- masking -------------------------------------------------------------------------------------
    @staticmethod
    def shuffle_keep(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """The tokens' order by argsort of ``noise`` (per sample; fresh uniform noise where none is given) and
        the first ``keep`` = n (1 - mask_ratio) of that order gathered: (kept tokens, order, keep)."""
        b, n, d = x.shape
        keep = int(n * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(b, n, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        kept = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).expand(-1, -1, d))
        return kept, ids_shuffle, keep

    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """Keep a random (1 - mask_ratio) subset of tokens per sample by argsort of noise, gather them.

        Returns the kept tokens, the binary mask (1 = removed) and the indices that restore the order.
        """
        b, n, _ = x.shape
        kept, ids_shuffle, keep = MAE.shuffle_keep(x, mask_ratio, noise)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return kept, mask, ids_restore

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        p, c = self.patch, self.in_chans
        b, _, h, w = imgs.shape
        x = imgs.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p, c = self.patch, self.in_chans
        g = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    # -- forward ---------------------------------------------------------------------------------------
    def forward_encoder(self, imgs, mask_ratio, noise=None):
        x = self.encoder.embed(imgs)
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        return self.encoder.run_blocks(self.encoder.with_cls(x)), mask, ids_restore

    def forward_decoder(self, latent, ids_restore):
        x = self.decoder_embed(latent)
        b, n = ids_restore.shape
        masked = self.mask_token.to(x.dtype).expand(b, n + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:, :], masked], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1, :], patches], dim=1) + self.decoder_pos_embed.to(x.dtype)
        for blk in self.decoder_blocks:
            x = blk(x)
        # a copy, not a view of the cls row's tensor: FSDP2 warns that an in-place op on a view returned by a
        # wrapped module would drop its pre-backward hook (torch/distributed/fsdp/_fully_shard/_fsdp_state.py)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :].clone(memory_format=torch.contiguous_format)

    def forward_partial(self, imgs, mask_ratio, noise=None):
        """MAE with partial reconstruction: the decoder sees the visible tokens and only ``prediction_ratio`` of
        the masked ones, and the loss is taken on those (Fu et al., "Rethinking Patch Dependence for Masked
        Autoencoders", TMLR 2025, arXiv 2401.14391: MAE's encoder, not the decoder's mask-token interactions,
        carries the reconstruction, so decoding a random subset of masked patches trains the encoder as well
        at a fraction of the decoder's compute; CrossMAE reads them out with cross-attention, here MAE's own
        self-attention decoder runs on the shorter sequence).

        Which masked patches are decoded is drawn from the same ``noise`` as the mask: the first ones of the
        masked part of its order, so a resumed run draws the same (CrossMAE's ``models_cross.py`` takes the last
        ones of the order: the same uniform draw). ``prediction_ratio`` is a share of the *masked* patches;
        CrossMAE's ``kept_mask_ratio`` is a share of *all* patches (its default 0.5 at mask ratio 0.75 is 2/3 here). Returns the loss, the predictions of the
        decoded patches (b, k, p*p*c) and the mask of decoded patches (b, n; 1 = decoded and in the loss).
        """
        x = self.encoder.embed(imgs)
        b, n, _ = x.shape
        kept, order, keep = self.shuffle_keep(x, mask_ratio, noise)
        k = decoded_masked(n, mask_ratio, self.prediction_ratio)
        ids_keep, ids_pred = order[:, :keep], order[:, keep:keep + k]
        latent = self.encoder.run_blocks(self.encoder.with_cls(kept))
        y = self.decoder_embed(latent)
        dd = y.shape[2]
        pos = self.decoder_pos_embed.to(y.dtype)
        grid_pos = pos[:, 1:, :].expand(b, -1, -1)
        pos_keep = torch.gather(grid_pos, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dd))
        pos_pred = torch.gather(grid_pos, 1, ids_pred.unsqueeze(-1).expand(-1, -1, dd))
        z = torch.cat([y[:, :1, :] + pos[:, :1, :], y[:, 1:, :] + pos_keep,
                       self.mask_token.to(y.dtype).expand(b, k, -1) + pos_pred], dim=1)
        for blk in self.decoder_blocks:
            z = blk(z)
        pred = self.decoder_pred(self.decoder_norm(z))[:, 1 + keep:, :].clone(memory_format=torch.contiguous_format)
        target = torch.gather(self.patchify(imgs), 1, ids_pred.unsqueeze(-1).expand(-1, -1, pred.shape[2]))
        decoded = torch.zeros(b, n, device=x.device).scatter_(1, ids_pred, 1.0)
        return self._pixel_loss(pred, target).mean(), pred, decoded

    def _pixel_loss(self, pred, target):
        """Mean squared error per patch, against the patch's own mean and variance with ``norm_pix_loss``."""
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return ((pred.float() - target.float()) ** 2).mean(dim=-1)

    def loss(self, imgs, pred, mask):
        per_patch = self._pixel_loss(pred, self.patchify(imgs))
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None):
        if self.prediction_ratio < 1.0:
            return self.forward_partial(imgs, mask_ratio, noise)
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.loss(imgs, pred, mask), pred, mask


# -- construction and initialisation --------------------------------------------------------------------

def build_mae(name: str, image_size: int, in_chans: int = 3, device: str | torch.device = "meta", **kw) -> MAE:
    with torch.device(device):
        return MAE(get_spec(name), image_size, in_chans, **kw)


def _param_init(module: nn.Module, pname: str, shape, generator: torch.Generator) -> torch.Tensor:
    if isinstance(module, nn.LayerNorm):
        return torch.ones(shape) if pname == "weight" else torch.zeros(shape)
    if pname == "bias":
        return torch.zeros(shape)
    if pname in ("cls_token", "mask_token"):
        return torch.randn(shape, generator=generator) * 0.02
    # Linear and the patch-embedding conv: xavier uniform over the weight viewed as (out, in)
    fan_out, fan_in = shape[0], int(np.prod(shape[1:]))
    bound = (6.0 / (fan_in + fan_out)) ** 0.5
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


@torch.no_grad()
def init_weights(model: nn.Module, seed: int = 0) -> None:
    """Fill every parameter and the fixed position buffers, deterministically per parameter name.

    Works on plain tensors and on FSDP2/DTensor shards: the full value of one parameter is drawn on the
    CPU (at most one parameter at a time is whole on a host) and each rank copies its own shard.
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    for mod_name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            full_name = f"{mod_name}.{pname}" if mod_name else pname
            # strip wrapper prefixes (DDP "module.", activation-checkpoint and compile wrappers)
            key = full_name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")
            key = key[len("module."):] if key.startswith("module.") else key
            gen = param_generator(seed, key)
            full = _param_init(module, pname, tuple(param.shape), gen)
            if isinstance(param, DTensor):
                local = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None).to_local()
                param.to_local().copy_(local)
            else:
                param.copy_(full)
    for module in model.modules():
        if isinstance(module, ViTEncoder):
            module.pos_embed.copy_(sincos_pos_embed(module.spec.width, module.grid))
        if isinstance(module, MAE):
            module.decoder_pos_embed.copy_(sincos_pos_embed(module.decoder_pos_embed.shape[-1], module.encoder.grid))


def materialize(model: nn.Module, device: str | torch.device, seed: int = 0) -> nn.Module:
    """Allocate a meta-device model (or its shards) on ``device`` and initialise it."""
    model.to_empty(device=device)
    init_weights(model, seed)
    return model


def build_encoder(name: str, image_size: int, in_chans: int = 3, seed: int = 0, device="cpu") -> ViTEncoder:
    """The encoder of ``name`` at (seeded) random initialisation, as MAE initialises it."""
    with torch.device("meta"):
        enc = ViTEncoder(get_spec(name), image_size, in_chans)
    return materialize(enc, device, seed)


def load_encoder(path, device="cpu") -> tuple[ViTEncoder, dict]:
    """Load ``encoder.pt`` written at the end of pretraining; returns (encoder, meta)."""
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"encoder checkpoint {path} does not exist (has pretraining run?)")
    try:
        # mmap: the ranks of a node share the file's pages instead of each reading its own copy
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        meta, state = blob["meta"], blob["state_dict"]
    except Exception as exc:  # noqa: BLE001 - name the file whatever went wrong
        raise ValueError(f"cannot read encoder checkpoint {path}: {exc}") from exc
    enc = build_encoder(meta["model"], meta["image_size"], meta["in_chans"], device="cpu")
    missing, unexpected = enc.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"encoder checkpoint {path} does not match model {meta['model']}: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return enc.to(device), meta
