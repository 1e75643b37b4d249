"""ViT/MAE models on timm blocks and the project's single model registry.

The model classes are imported lazily (PEP 562): the registry alone (config validation, the CLI's
parent process, the Snakefile) does not pay for importing torch, timm and torchvision.
"""
from .registry import MODELS, PAPER_MODELS, ViTSpec, count_params, display_name, get_spec

_MAE_NAMES = ("MAE", "ViTEncoder", "build_encoder", "build_mae", "init_weights", "load_encoder", "materialize")

__all__ = [*_MAE_NAMES, "MODELS", "PAPER_MODELS", "ViTSpec", "count_params", "display_name", "get_spec"]


def __getattr__(name: str):
    if name in _MAE_NAMES:
        from . import mae

        return getattr(mae, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
