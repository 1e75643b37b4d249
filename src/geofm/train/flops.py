"""Analytic FLOP count of an MAE training step (checked against ``torch.utils.flop_counter`` in tests).

Counts matrix multiplications only (2 FLOPs per multiply-add), as MFU conventions do: patch
embedding, per block qkv/proj/MLP linears and the two attention matmuls, decoder embedding and
prediction. Backward costs twice the forward (less the images' own gradient); recomputation by activation checkpointing is *not*
counted (MFU measures useful work).
"""
from __future__ import annotations

from .. models.registry import decoded_masked, get_spec, num_patches


def block_flops(tokens: int, width: int, mlp: int) -> int:
    linears = 2 * tokens * (3 * width * width + width * width + 2 * width * mlp)
    attention = 2 * 2 * tokens * tokens * width
    return linears + attention


def mae_forward_flops(model: str, image_size: int, in_chans: int = 3, mask_ratio: float = 0.75,
                      decoder_dim: int = 512, decoder_depth: int = 8, prediction_ratio: float = 1.0) -> int:
    """Forward FLOPs of one image through the MAE (encoder on visible tokens, decoder on them and on the
    decoded masked ones: all at ``prediction_ratio`` 1)."""
    s = get_spec(model)
    n = num_patches(model, image_size)
    keep = int(n * (1 - mask_ratio))
    dec = keep + decoded_masked(n, mask_ratio, prediction_ratio)
    patch_dim = s.patch * s.patch * in_chans
    f = 2 * n * patch_dim * s.width  # patch embedding sees every patch before masking
    f += s.depth * block_flops(keep + 1, s.width, s.mlp)
    f += 2 * (keep + 1) * s.width * decoder_dim  # decoder_embed
    f += decoder_depth * block_flops(dec + 1, decoder_dim, 4 * decoder_dim)
    f += 2 * (dec + 1) * decoder_dim * patch_dim  # decoder_pred
    return f


def encoder_forward_flops(model: str, image_size: int, in_chans: int = 3) -> int:
    s = get_spec(model)
    n = num_patches(model, image_size)
    return 2 * n * s.patch * s.patch * in_chans * s.width + s.depth * block_flops(n + 1, s.width, s.mlp)


def mae_train_flops_per_image(model: str, image_size: int, in_chans: int = 3, mask_ratio: float = 0.75,
                              decoder_dim: int = 512, decoder_depth: int = 8, prediction_ratio: float = 1.0) -> int:
    s = get_spec(model)
    patch_embed = 2 * num_patches(model, image_size) * s.patch * s.patch * in_chans * s.width
    # the images need no gradient: the patch embedding's backward is its weight gradient only
    return 3 * mae_forward_flops(model, image_size, in_chans, mask_ratio, decoder_dim, decoder_depth,
                                 prediction_ratio) - patch_embed
