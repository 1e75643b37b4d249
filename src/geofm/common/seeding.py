"""One seeding scheme: a seed is a hash of its keys, so every consumer (a dataset's split, a shard's order, a
step's crops) gets its own independent, reproducible stream from the study's one ``seed`` without
coordinating offsets. ``derive_seed`` hashes ``repr`` of the key tuple as given: callers pass the same key types
each time (ints stay ints, names stay strings), which keeps every stream stable across versions.
Per-sample randomness inside a training step is counter-based instead (:mod:`geofm.train.batches`), keyed by
(seed, step, global row), so it costs O(local batch) per rank."""
from __future__ import annotations

import hashlib


def derive_seed(*keys) -> int:
    """A 63-bit seed from ``keys`` (sha256 of their tuple's repr)."""
    h = hashlib.sha256(repr(tuple(keys)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def numpy_rng(*keys):
    import numpy as np

    return np.random.default_rng(derive_seed(*keys))


def torch_generator(*keys):
    import torch

    g = torch.Generator()
    g.manual_seed(derive_seed(*keys))
    return g
