"""One seeding scheme: a seed is a hash of its keys, so every consumer (a dataset's split, a shard's order, a
step's crops) gets its own independent, reproducible stream from the study's one ``seed`` without
coordinating offsets. ``derive_seed`` hashes ``repr`` of the key tuple as given: callers pass the same key types
each time (ints stay ints, names stay strings), which keeps every stream stable across versions.
Per-sample randomness inside a training step is counter-based instead (:mod:`geofm.data.sampler`), keyed by
(seed, step, global row), so it costs O(local batch) per rank."""
from __future__ import annotations

import hashlib


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
