"""Sharded, atomic checkpoints with ``torch.distributed.checkpoint`` (DCP).

Layout: ``<dir>/step-0000100/`` holds DCP shards plus ``.complete`` (written last, by rank 0, after every
rank has finished). A directory without ``.complete`` is a half-written checkpoint: it is never loaded
and is removed by the next save. ``get_state_dict`` / ``set_state_dict`` give FQNs that do not depend on
the wrapping (DDP, FSDP2, none), so a checkpoint resumes at another world size and another strategy.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict, set_state_dict)

from ..common.io import write_json, write_text
from ..common.ranks import barrier, is_main

_MARK = ".complete"


class CheckpointError(RuntimeError):
    """A complete-marked checkpoint that cannot be read back (a shard truncated or damaged after it was
    written): the message names its directory and what to do."""


def complete_steps(ckpt_dir: Path) -> list[int]:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.exists():
        return []
    return sorted(int(p.name.split("-")[1]) for p in ckpt_dir.glob("step-*")
                  if p.is_dir() and (p / _MARK).exists() and p.name.split("-")[1].isdigit())


def latest_step(ckpt_dir: Path) -> int | None:
    steps = complete_steps(ckpt_dir)
    return steps[-1] if steps else None


def step_dir(ckpt_dir: Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step-{step:07d}"


def save(ckpt_dir: Path, step: int, model, optimizer, extra: dict, keep_last: int = 2) -> Path:
    ckpt_dir = Path(ckpt_dir)
    final = step_dir(ckpt_dir, step)
    if is_main():
        for p in ckpt_dir.glob("step-*"):  # half-written leftovers of a killed run
            if p.is_dir() and not (p / _MARK).exists():
                shutil.rmtree(p, ignore_errors=True)
        if final.exists():
            shutil.rmtree(final)
        final.mkdir(parents=True)
    barrier()
    msd, osd = get_state_dict(model, optimizer)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(final))
    barrier()
    if is_main():
        write_json(final / "extra.json", extra, indent=None, newline=False)
        write_text(final / _MARK, str(step))
        for old in complete_steps(ckpt_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(step_dir(ckpt_dir, old), ignore_errors=True)
    barrier()
    return final


def read_extra(ckpt_dir: Path, step: int) -> dict:
    """The ``extra`` dict saved with a checkpoint ({} when it is gone or unreadable)."""
    try:
        return json.loads((step_dir(ckpt_dir, step) / "extra.json").read_text())
    except (OSError, ValueError):
        return {}


def load(ckpt_dir: Path, step: int, model, optimizer) -> dict:
    path = step_dir(ckpt_dir, step)
    if not (path / _MARK).exists():
        raise FileNotFoundError(f"checkpoint {path} is missing or incomplete")
    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optim": osd}
    try:
        dcp.load(state, checkpoint_id=str(path))
        extra = json.loads((path / "extra.json").read_text())
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - DCP's CheckpointException is a BaseException
        damage = _damage(e)
        if damage is None:  # out of memory, a collective timing out, a transient I/O error: not the file's fault
            raise
        raise CheckpointError(
            f"checkpoint {path} is damaged ({damage}); move it aside to resume from the previous one, or move "
            f"{Path(ckpt_dir)} aside to start again") from e
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return extra


def _damage(exc: BaseException) -> str | None:
    """What says that a checkpoint's files are damaged (a truncated or corrupt shard or extra.json), or None
    when the load failed for another reason. DCP wraps each rank's exception in ``CheckpointException.failures``
    (torch 2.14 ``torch/distributed/checkpoint/api.py``: rank -> (exception, traceback))."""
    import pickle
    import zipfile

    causes = [exc]
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict):
        causes += [f[0] for f in failures.values() if isinstance(f, tuple) and f]
    for c in causes:
        if isinstance(c, (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, json.JSONDecodeError,
                          UnicodeDecodeError)):
            text = str(c).strip().splitlines()[0][:160] if str(c).strip() else ""
            return type(c).__name__ + (f": {text}" if text else "")
    return None


def full_model_state(model) -> dict:
    """The whole (unsharded) model state on rank 0's CPU, for the evaluation hand-off."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=opts)
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in sd.items()}
