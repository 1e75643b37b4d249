"""The MAE training step: the one function pretraining, the profiler and the GPU check run.

Per optimizer step: for each of ``grad_accum`` micro-batches a forward (bf16 autocast where the model is not
FSDP-cast) and a backward of ``loss / grad_accum`` (gradient synchronisation only on the last micro-batch:
FSDP2's ``set_requires_gradient_sync`` or DDP's ``no_sync``); the mean loss reduced over ranks; a non-finite
loss stops here, before any update; gradient clipping (a collective under FSDP: the norm of sharded
gradients); the optimizer step; gradients dropped.

``mark(phase)``, where given, is called as each phase begins -- ``"forward"`` and ``"backward"`` once per
micro-batch, ``"optimizer"`` (loss reduction, clipping, optimizer step) once -- and with ``"end"`` last, so
that a profiler can time the phases (it synchronises the device inside ``mark``). Without it the step adds
no synchronisation beyond the loss value it returns.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from ..common.precision import bf16_autocast


class NonFiniteLoss(RuntimeError):
    """The step's loss is NaN or infinite; the parameters were not updated."""

    def __init__(self, loss: float, message: str | None = None):
        super().__init__(message or f"loss is {loss}")
        self.loss = loss


@dataclass(frozen=True)
class StepOptions:
    mask_ratio: float = 0.75
    grad_accum: int = 1
    grad_clip: float = 0.0  # 0: no clipping
    autocast: bool = False  # bf16 autocast (DDP / one process; FSDP2 casts itself)


@dataclass
class StepResult:
    loss: float  # mean over the global batch
    grad_norm: float  # before clipping; NaN when not clipping


class PhaseTimer:
    """A ``mark`` for :func:`train_step` that sums wall time per phase; ``sync`` (e.g. a device
    synchronisation) runs before each reading, so that a phase's kernels are charged to it. Call it with a
    phase name of your own (``"data"``) before the step to time what precedes it."""

    def __init__(self, sync: Callable[[], None] = lambda: None):
        import time

        self._clock, self._sync = time.perf_counter, sync
        self.totals: dict[str, float] = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        self._phase: str | None = None
        self._t = 0.0

    def __call__(self, phase: str) -> None:
        self._sync()
        now = self._clock()
        if self._phase is not None:
            self.totals[self._phase] = self.totals.get(self._phase, 0.0) + now - self._t
        self._phase, self._t = (None if phase == "end" else phase), now


def _no_mark(_phase: str) -> None:
    return None


def reduce_mean(value: torch.Tensor, world: int) -> torch.Tensor:
    """Mean of a scalar over ranks (gloo has no AVG: sum, then divide)."""
    if world <= 1:
        return value
    if value.device.type == "cpu":
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / world
    dist.all_reduce(value, op=dist.ReduceOp.AVG)
    return value


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, noise: torch.Tensor | None,
               opts: StepOptions, world: int = 1, mark: Callable[[str], None] | None = None,
               poison: bool = False) -> StepResult:
    """One optimizer step on this rank's batch ``x`` (and its mask ``noise``); see the module docs.

    ``poison`` (a testing aid) makes the loss NaN. Raises :class:`NonFiniteLoss` before updating anything.
    """
    mark = mark or _no_mark
    n = opts.grad_accum
    if x.shape[0] % n:
        raise ValueError(f"a local batch of {x.shape[0]} does not split into grad_accum={n} equal micro-batches")
    micro = x.shape[0] // n
    loss_sum = torch.zeros((), device=x.device)
    for m in range(n):
        sl = slice(m * micro, (m + 1) * micro)
        last = m == n - 1
        sync = contextlib.nullcontext()
        if hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(last)
        elif hasattr(model, "no_sync") and not last:
            sync = model.no_sync()
        with sync:
            mark("forward")
            with bf16_autocast(x.device.type, opts.autocast):
                loss = model(x[sl], opts.mask_ratio, None if noise is None else noise[sl])[0]
            if poison:
                loss = loss * float("nan")
            mark("backward")
            (loss / n).backward()
        loss_sum += loss.detach() / n
    mark("optimizer")
    loss_val = float(reduce_mean(loss_sum, world))
    if not math.isfinite(loss_val):
        opt.zero_grad(set_to_none=True)
        mark("end")
        raise NonFiniteLoss(loss_val)
    grad_norm = float("nan")
    if opts.grad_clip > 0:
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
        grad_norm = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)
    opt.step()
    opt.zero_grad(set_to_none=True)
    mark("end")
    return StepResult(loss_val, grad_norm)
