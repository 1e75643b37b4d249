"""bf16 autocast, the one way every stage enters it.

On a CPU the autocast region also computes ``scaled_dot_product_attention`` (without mask or dropout, as the
ViTs here call it) as explicit matrix products: ``(q * scale) @ k^T``, a softmax, ``@ v``, as timm's non-fused attention path and
MAE's reference implementation compute it. Autocast runs the products in bf16 (accumulating in fp32); CPU autocast
leaves the softmax in its input's bf16, and PyTorch's CPU kernel computes it in fp32 and rounds the result
(measured: equal to the fp32 softmax rounded to bf16 in all but 6e-6 of the entries), which the product with
``v`` would round to bf16 anyway, as under GPU autocast. Two PyTorch CPU kernels are slower: the fused one PyTorch picks
(``_scaled_dot_product_flash_attention_for_cpu``) is far slower in bf16 than in fp32 at this project's sequence
lengths (measured 2026-12-06 on the development machine's 2-core AMD EPYC (avx512_bf16), one demo_base MAE step of
32 images, 17 encoder and 65 decoder tokens: its backward 96 ms per step in bf16 against 16 ms in fp32), and the
math backend (stop 31's choice) upcasts bf16 query, key and value to fp32 (``_scaled_dot_product_attention_math``
in aten/src/ATen/native/transformers/attention.cpp, unless ``allow_fp16_bf16_reduction_math_sdp``) and adds its
``_safe_softmax`` checks: a demo_base step of 32 images on two threads took 112.2 ms with it and 95.8 ms with the
explicit products (2026-12-07, one interleaved run). fp32 runs and GPUs are untouched: there the default backend
choice stands. Other calls (a mask, dropout, a causal flag) go to PyTorch's math backend.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


class _ExplicitCpuAttention(torch.overrides.TorchFunctionMode):
    """Within it, ``F.scaled_dot_product_attention(q, k, v[, scale=])`` runs as explicit matrix products."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        if (len(args) == 3 and set(kwargs) <= {"attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"}
                and kwargs.get("attn_mask") is None and not kwargs.get("dropout_p")
                and not kwargs.get("is_causal") and not kwargs.get("enable_gqa")):
            q, k, v = args
            scale = kwargs.get("scale")
            scale = q.shape[-1] ** -0.5 if scale is None else scale
            return ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.MATH]):
            return func(*args, **kwargs)


def bf16_autocast(device_type: str, enabled: bool = True) -> contextlib.AbstractContextManager:
    """``torch.autocast(device_type, bfloat16)`` when ``enabled`` (on a CPU with attention as explicit matrix
    products); a no-op context otherwise."""
    if not enabled:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device_type, dtype=torch.bfloat16))
    if device_type == "cpu":
        stack.enter_context(_ExplicitCpuAttention())
    return stack
