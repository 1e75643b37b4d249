"""bf16 autocast, the one way every stage enters it.

On a CPU the autocast region also restricts ``scaled_dot_product_attention`` to its math backend: the
attention as batched matrix products and a softmax, which PyTorch's math path computes in fp32 (it upcasts
bf16 query, key and value unless ``torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)`` was set,
off by default: ``_scaled_dot_product_attention_math`` in PyTorch's aten/src/ATen/native/transformers/attention.cpp,
"Keep query, key, value in high precision for accuracy"), while the linear layers around it run in bf16. The fused CPU kernel PyTorch picks
otherwise (``_scaled_dot_product_flash_attention_for_cpu``) is far slower in bf16 than in fp32 at this
project's sequence lengths: measured 2026-12-06 on the development machine's 2-core AMD EPYC (avx512_bf16), one
demo_base MAE step of 32 images (17 encoder and 65 decoder tokens), its backward took 96 ms per step in bf16
against 16 ms in fp32, and the bf16 step with it (197 ms) was barely faster than fp32's (251 ms); with the
math backend the bf16 step takes 128 ms (``scripts/bench_cpu_bf16.py``). fp32 runs and GPUs are untouched:
there the default backend choice stands.
"""
from __future__ import annotations

import contextlib

import torch


def bf16_autocast(device_type: str, enabled: bool = True) -> contextlib.AbstractContextManager:
    """``torch.autocast(device_type, bfloat16)`` when ``enabled`` (on a CPU with the math attention backend);
    a no-op context otherwise."""
    if not enabled:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device_type, dtype=torch.bfloat16))
    if device_type == "cpu":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
    return stack
