"""Names the figures and tables print: series (paper / this project / plan), model display names and order
(from ``geofm.models.registry``), strategy spelling and order (from ``geofm.distributed.strategies``)."""
from __future__ import annotations

import re

from geofm.distributed.strategies import BASE_STRATEGIES
from geofm.models.registry import MODELS, count_params, display_name

PAPER = "paper"
PROJECT = "this project"
PLAN = "plan"
PAPER_CITATION = "Tsaris et al., IPDPSW 2024 (OLCF Frontier, MI250X)"


def display(model: str) -> str:
    """Registry display name (``vit_3b`` → ``ViT-3B``); a name the registry does not know passes through."""
    try:
        return display_name(model)
    except KeyError:
        return str(model)


def param_count(model: str, **shape) -> float:
    """Encoder parameters (``count_params``; ``shape``: ``image_size`` / ``in_chans`` where known, else the
    registry's defaults); NaN for a model the registry does not know."""
    try:
        return float(count_params(model, **shape))
    except (KeyError, ValueError):
        return float("nan")


# the paper writes HYBRID_1GPU / HYBRID_2GPUs; results may spell either, in any case
_HYBRID = re.compile(r"^HYBRID_(\d+)GPUS?$", re.IGNORECASE)


def canonical_strategy(name: str) -> str:
    """``HYBRID_1GPUs``/``hybrid_2gpu`` → ``HYBRID_1GPU``/``HYBRID_2GPUs`` (the paper's spelling)."""
    s = str(name).strip()
    m = _HYBRID.match(s)
    if m:
        k = int(m.group(1))
        return f"HYBRID_{k}GPU" + ("s" if k > 1 else "")
    return s.upper()


def strategy_order(names) -> list[str]:
    """The distinct names in the registry's order (DDP, NO_SHARD, SHARD_GRAD_OP, FULL_SHARD), then HYBRID_k by
    k; unknown names last."""
    base = list(BASE_STRATEGIES)

    def key(s):
        m = _HYBRID.match(s)
        return (len(base), int(m.group(1))) if m else (base.index(s) if s in base else len(base) + 1, 0)

    return sorted(set(names), key=key)


def model_order(names) -> list[str]:
    """Distinct display names ordered by registry parameter count (unknown names last, alphabetical)."""
    size = {spec.display: count_params(k) for k, spec in MODELS.items()}
    return sorted(set(names), key=lambda n: (size.get(n, float("inf")), n))
