"""Which checkpoint a pretraining job may resume: a fingerprint of what shapes the training trajectory.

The fingerprint covers the model's shape (the registry's spec), every ``TrainConfig`` setting except those the
schema marks as not changing the trajectory (``x-rerun: never | outputs`` under ``pretrain``: log_every,
checkpoint_every, strategy, workers, ...; plus the process's device and the NaN-injection test aid), the seed,
and the identity of the pretraining data (the sha256 of the tiles' ``stats.json``, which the tile stage writes
together with the shards and the manifest; never the path, so a moved checkout keeps its fingerprint).
World size and strategy are left out: a checkpoint resumes at any of them (``geofm.distributed.checkpoint``).

A job resumes the latest complete checkpoint only if it carries the same fingerprint and its run is
unfinished (a crash, a Slurm requeue, a Snakemake retry). A checkpoint of another config, one without a
fingerprint, or the last checkpoint of a finished run (Snakemake reran the job: ``--forcerun``, a params
change, a missing output) is not resumed: the whole ``checkpoints/`` folder is moved aside, never deleted.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

from ..common.ranks import barrier
from ..config import digest, schema, unset_default
from ..distributed import checkpoint as ckpt

# TrainConfig fields outside the schema's pretrain section that do not change the trajectory
_NOT_TRAJECTORY = ("data", "device", "fail_at_step")


def data_identity(data: str) -> str:
    """``synthetic``, or the sha256 of a tiles folder's ``stats.json`` (its path is not part of it). Tiles
    that are missing or unreadable are an error here, before any checkpoint is looked at: they are not
    "another config" whose checkpoints would be moved aside."""
    if data == "synthetic":
        return data
    from ..data.shards import read_stats

    read_stats(data)  # DataError naming the file
    return hashlib.sha256((Path(data) / "stats.json").read_bytes()).hexdigest()


def fingerprint(cfg) -> str:
    """The fingerprint of a ``TrainConfig``: 16 hex digits of the sha256 of what shapes training."""
    from ..models.registry import get_spec

    props = schema()["properties"]["pretrain"]["properties"]
    skip = {k for k, v in props.items() if v.get("x-rerun") in ("never", "outputs")} | set(_NOT_TRAJECTORY)
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip and not unset_default(props, k, v)}
    spec = dataclasses.asdict(get_spec(cfg.model))
    shape = {k: spec[k] for k in ("width", "depth", "mlp", "heads", "patch")}
    return digest({"settings": settings, "spec": shape, "data": data_identity(cfg.data)})


def resumable_step(ckpt_dir: Path, fp: str, steps: int, is_main: bool, log=print) -> int | None:
    """The step to resume from, or None (start at 0). Checkpoints that may not be resumed are moved to
    ``<ckpt_dir>-aside-<time>-<their fingerprint>`` by the main rank (the others only read), with a log line
    naming where. The caller synchronises the ranks after this."""
    ckpt_dir = Path(ckpt_dir)
    latest = ckpt.latest_step(ckpt_dir)
    if latest is None:
        barrier()
        return None
    old = ckpt.read_extra(ckpt_dir, latest).get("fingerprint")
    if old == fp and latest < steps:
        barrier()
        return latest
    if is_main:
        why = ("its run finished: the job was rerun on purpose" if old == fp else
               f"they were made with another config (fingerprint {old or 'none'}, this job {fp})")
        dest = ckpt_dir.with_name(f"{ckpt_dir.name}-aside-{time.strftime('%Y%m%dT%H%M%S')}-{old or 'none'}")
        ckpt_dir.rename(dest)
        log(f"not resuming the checkpoints in {ckpt_dir} ({why}); moved them to {dest}; training from step 0")
    barrier()  # no rank starts saving into ckpt_dir before it has been moved
    return None
