"""The one model table of the project.

Every stage (pretraining, evaluation, FLOP counting, profiling, figure labels) reads the ViT shapes from
here. The paper's six sizes come from Tsaris et al. (IPDPSW 2024), Table I; the ``demo_*`` sizes are tiny
encoders that train on a laptop CPU so that the size-scaling study shows in the embedded demo.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ViTSpec:
    """Shape of a ViT encoder: embedding width, number of blocks, MLP width, heads, patch size."""

    width: int
    depth: int
    mlp: int
    heads: int
    patch: int
    display: str
    paper_params_m: float | None = None  # the parameter count the paper's table states, in millions

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")


MODELS: dict[str, ViTSpec] = {
    # the paper's table (width / depth / MLP / heads / patch)
    "vit_base": ViTSpec(768, 12, 3072, 12, 16, "ViT-Base", 87),
    "vit_huge": ViTSpec(1280, 32, 5120, 16, 14, "ViT-Huge", 635),
    "vit_1b": ViTSpec(1536, 32, 6144, 16, 14, "ViT-1B", 914),
    "vit_3b": ViTSpec(2816, 32, 11264, 32, 14, "ViT-3B", 3070),
    # the paper states 5,349M for this row; its shapes count ~3.8B, which we report
    "vit_5b": ViTSpec(1792, 56, 15360, 16, 14, "ViT-5B", 5349),
    "vit_15b": ViTSpec(5040, 48, 20160, 48, 14, "ViT-15B", 14700),
    # demo sizes (embedded default): same architecture, CPU-sized
    "demo_tiny": ViTSpec(64, 4, 256, 4, 4, "demo-64"),
    "demo_small": ViTSpec(128, 4, 512, 4, 4, "demo-128"),
    "demo_base": ViTSpec(192, 4, 768, 6, 4, "demo-192"),
    # used by fast tests only
    "test_micro": ViTSpec(32, 2, 64, 2, 4, "test-32"),
}

# what ViTEncoder.forward_features computes for each evaluate.pool (here, torch-free, for the rules' params):
# cached features carry it in their key and the evaluate jobs of a `mean` pool in their params, so results of
# another definition (before 2026-12-06 "mean" averaged the normed tokens) are neither reused nor kept
POOLING = {"mean": "mae-global-pool", "cls": "cls-after-norm"}

PAPER_MODELS = ("vit_base", "vit_huge", "vit_1b", "vit_3b", "vit_5b", "vit_15b")


def get_spec(name: str) -> ViTSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None


def display_name(name: str) -> str:
    """Label used in figures and tables (the paper's names for paper sizes)."""
    return get_spec(name).display


def name_from_display(display: str) -> str | None:
    for key, spec in MODELS.items():
        if spec.display == display:
            return key
    return None


def num_patches(name: str, image_size: int) -> int:
    spec = get_spec(name)
    if image_size % spec.patch:
        raise ValueError(f"image_size {image_size} is not a multiple of {name}'s patch size {spec.patch}")
    return (image_size // spec.patch) ** 2


def count_params(name: str, image_size: int = 224, in_chans: int = 3) -> int:
    """Encoder parameter count, analytic (matches ``sum(p.numel())`` of ``ViTEncoder``; tested).

    Patch embedding (conv as linear + bias), cls token, per block two LayerNorms, qkv + proj, MLP,
    a final LayerNorm. Position embeddings are fixed sin-cos buffers, not parameters.
    """
    s = get_spec(name)
    d, m, p = s.width, s.mlp, s.patch
    patch_embed = in_chans * p * p * d + d
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d)
    return patch_embed + d + s.depth * block + 2 * d


def decoded_masked(n: int, mask_ratio: float, prediction_ratio: float = 1.0) -> int:
    """How many of an image's ``n`` patches' masked ones the decoder sees and reconstructs
    (``pretrain.prediction_ratio``; geofm.models.mae.MAE.forward_partial): all of them at 1.0 (MAE)."""
    masked = n - int(n * (1 - mask_ratio))
    return masked if prediction_ratio >= 1.0 else max(1, round(masked * prediction_ratio))
