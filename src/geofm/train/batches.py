"""Pretraining's batches and masking noise, both from the one step-indexed sampler (:mod:`geofm.data.sampler`):
the batch of step ``s`` depends only on (seed, s), never on the world size, so one process and N processes
see the same samples per step and a resumed run continues with the batches an uninterrupted run would use.
:class:`StepBatches` is the one loader (:mod:`geofm.data.loader`)."""
from __future__ import annotations

from ..data.loader import StepBatches
from ..data.sampler import global_rows, mask_noise, permute, uniform

__all__ = ["StepBatches", "mask_noise", "global_rows", "permute", "uniform"]
