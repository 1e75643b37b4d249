"""The one learning-rate schedule (MAE's ``util/lr_sched.py``): linear warm-up from ~0 to ``peak`` over
``warmup`` steps, then a half-cosine down to ``min_lr`` at ``total``; used by pretraining, the linear probe and
fine-tuning."""
from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup: int, peak: float, min_lr: float = 0.0) -> float:
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
