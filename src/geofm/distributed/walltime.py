"""Stop a training run cleanly before its batch job's walltime: checkpoint, then exit for resubmission.

Slurm sends the signal of ``sbatch --signal=USR1@<seconds>`` to the processes of every job step (here: the
ranks that srun started) that many seconds before the walltime, and SIGTERM to all of them at the
walltime (or at ``scancel``/pre-emption), SIGKILL ``KillWait`` seconds later. :class:`StopRequest`
records SIGUSR1 and SIGTERM instead of dying; the training loop asks :meth:`StopRequest.agreed` after
every step (an all-reduce: the ranks may see the signal a step apart, and the checkpoint is a
collective), writes a checkpoint at that step and raises :class:`WalltimeStop`. Why not
``--signal=B:USR1``: ``B:`` signals only the batch shell, which under Snakemake's Slurm executor is the
``sbatch --wrap`` script; it would die of the signal (no trap there) and take the ranks with it.

DataLoader worker processes are in the same job step and get the signal too; :func:`ignore_in_worker`
(a ``worker_init_fn``) makes them ignore it so that only the main process reacts.
"""
from __future__ import annotations

import signal

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class WalltimeStop(RuntimeError):
    """Raised after the checkpoint at a stop signal; the CLI exits with :attr:`EXIT_CODE`."""

    EXIT_CODE = 75  # EX_TEMPFAIL: try again (the job is resubmitted and resumes)


class StopRequest:
    def __init__(self, signals=SIGNALS):
        self.received: int | None = None
        self._old = {}
        for s in signals:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. an in-process test harness): no handler
                pass

    def _handle(self, signum, frame):
        self.received = signum

    def agreed(self, device: torch.device) -> bool:
        """True on every rank once any rank got a stop signal (a collective when distributed)."""
        flag = self.received is not None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.tensor([1 if flag else 0], device=device, dtype=torch.int32)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a stop signal on another rank"

    def restore(self) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}


def ignore_in_worker(_worker_id: int) -> None:
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
