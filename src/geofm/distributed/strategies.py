"""The paper's strategy names parsed into what they mean (kind, shard-group size, resharding), without torch:
the DAG (feasibility at planning time) and the performance model read them too. ``parallelize`` turns them
into FSDP2 calls."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

BASE_STRATEGIES = ("DDP", "NO_SHARD", "SHARD_GRAD_OP", "FULL_SHARD")
_HYBRID = re.compile(r"^HYBRID_(\d+)GPUs?$")


@dataclass(frozen=True)
class Strategy:
    name: str
    kind: str  # ddp | fsdp
    reshard_after_forward: bool = True
    shard_size: int | None = None  # None = the whole world; 1 = no sharding

    def mesh_shape(self, world_size: int) -> tuple[int, ...]:
        if self.kind == "ddp":
            return (world_size,)
        k = world_size if self.shard_size is None else self.shard_size
        if k > world_size or world_size % k:
            raise ImpossibleStrategy(f"{self.name} needs a shard group of {k} ranks, "
                                     f"which does not divide a world of {world_size}")
        return (world_size // k, k) if self.shard_size is not None else (world_size,)


class ImpossibleStrategy(ValueError):
    """The strategy cannot run on this many ranks (reported as such by the profiler, not crashed on)."""


@lru_cache(maxsize=256)  # a Strategy is immutable; the planner parses the same few names millions of times
def parse_strategy(name: str) -> Strategy:
    if name == "DDP":
        return Strategy(name, "ddp")
    if name == "NO_SHARD":
        return Strategy(name, "fsdp", reshard_after_forward=False, shard_size=1)
    if name == "SHARD_GRAD_OP":
        return Strategy(name, "fsdp", reshard_after_forward=False)
    if name == "FULL_SHARD":
        return Strategy(name, "fsdp", reshard_after_forward=True)
    m = _HYBRID.match(name)
    if m:
        k = int(m.group(1))
        if k < 1:
            raise ValueError(f"strategy {name!r}: shard group must be at least 1 GPU")
        return Strategy(name, "fsdp", reshard_after_forward=True, shard_size=k)
    raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(BASE_STRATEGIES)} or HYBRID_<k>GPUs")

