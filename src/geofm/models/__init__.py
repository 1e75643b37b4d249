"""ViT/MAE models on timm blocks and the project's single model registry."""
from .mae import MAE, ViTEncoder, build_encoder, build_mae, init_weights, load_encoder, materialize
from .registry import MODELS, PAPER_MODELS, ViTSpec, count_params, display_name, get_spec

__all__ = ["MAE", "ViTEncoder", "build_encoder", "build_mae", "init_weights", "load_encoder", "materialize",
           "MODELS", "PAPER_MODELS", "ViTSpec", "count_params", "display_name", "get_spec"]
