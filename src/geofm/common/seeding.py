"""Every seeded random stream of the package is made here (a test keeps ``manual_seed`` / ``default_rng``
out of every other module).

The scheme: a seed is a hash of its keys, so every consumer (a dataset's split, a shard's order, a step's
crops) gets its own independent, reproducible stream from the study's one ``seed`` without coordinating
offsets. ``derive_seed`` hashes ``repr`` of the key tuple as given: callers pass the same key types each time
(ints stay ints, names stay strings), which keeps every stream stable across versions. Per-sample randomness
inside a training step is counter-based instead (:mod:`geofm.data.sampler`), keyed by (seed, step, global
row), so it costs O(local batch) per rank.

Four streams predate ``derive_seed`` and keep their own formulas, so that every encoder, probe and demo scene
stays bit-identical to earlier runs (``scripts/compare-runs``): ``param_generator`` (a parameter's initial
value), ``seeded_generator`` (the linear probe's order and the fine-tuning head), ``seed_global_torch``
(the draws modules make themselves: dropout, drop path, ``nn.Linear``'s default init) and ``sequence_rng``
(the demo scenes)."""
from __future__ import annotations

import hashlib
import zlib


def derive_seed(*keys, bits: int = 63) -> int:
    """A seed of ``bits`` bits (at most 64) from ``keys``: the first 8 bytes of sha256 of their tuple's repr,
    little-endian, masked. 63 bits fit a signed 64-bit ``torch.Generator.manual_seed``; the tiler's numpy
    streams were keyed by all 64 bits before this module existed and keep them (``bits=64``)."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be 1..64, got {bits}")
    h = hashlib.sha256(repr(tuple(keys)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << bits) - 1)


def numpy_rng(*keys, bits: int = 63):
    import numpy as np

    return np.random.default_rng(derive_seed(*keys, bits=bits))


def torch_generator(*keys):
    import torch

    g = torch.Generator()
    g.manual_seed(derive_seed(*keys))
    return g


def param_generator(seed: int, name: str):
    """The stream of one parameter's initial value, ``seed * 1_000_003 + crc32(name)``: the same on every rank
    and under any sharding, because it depends on the parameter's name alone (:func:`geofm.models.mae.materialize`)."""
    import torch

    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def seeded_generator(seed: int):
    """A torch generator seeded with ``seed`` itself (no hashing)."""
    import torch

    return torch.Generator().manual_seed(int(seed))


def seed_global_torch(seed: int) -> None:
    """Seed torch's global generator with ``seed`` itself: the draws that modules make on their own (dropout,
    drop path, default parameter init); wrap it in ``torch.random.fork_rng`` to leave the caller's state alone."""
    import torch

    torch.manual_seed(int(seed))


def sequence_rng(*entropy: int):
    """numpy's generator on a SeedSequence of ``entropy`` (several integers, no hashing)."""
    import numpy as np

    return np.random.default_rng(list(entropy))
