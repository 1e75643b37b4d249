"""The MAE training step as the performance and memory models see it: FSDP units (one per transformer block,
encoder and decoder, plus the root: patch embedding, norms, decoder embedding and prediction), each with its
parameters, forward FLOPs and activation sizes per image.

Shapes come from the one registry (``geofm.models.registry``) and FLOPs from ``geofm.train.flops``; the unit
list matches how ``geofm.distributed.parallelize`` wraps the model (``fully_shard`` per block, then the root).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..models.registry import count_params, decoded_masked, get_spec, num_patches
from ..train import flops


def run_setting(cfg: dict, section: str, key: str, model: str | None = None):
    """``key`` of a ``section`` ("profile" or "pretrain") as the run resolves it: the section's value (pretrain:
    ``pretrain.per_model.<model>`` over the section, where ``model`` is given), else the schema's default, which
    for a profile cell's training settings is the pretrain section's value (``x-default-from``).
    :func:`geofm.config.load_config` fills every default at load; a hand-built dict gets them here, from the
    same schema (:func:`geofm.config.complete_section`): the planner holds no defaults of its own."""
    from ..config import complete_section, pretrain_settings

    sec = pretrain_settings(cfg, model) if section == "pretrain" and model and "pretrain" in cfg \
        else (cfg.get(section) or {})
    if key in sec:
        return sec[key]
    return complete_section(cfg, section)[key]


@dataclass(frozen=True)
class Unit:
    name: str
    params: int
    fwd_flops: float  # per image
    tokens: int  # sequence length through the unit
    width: int
    mlp: int


@dataclass(frozen=True)
class Workload:
    model: str
    image_size: int = 224
    in_chans: int = 3
    mask_ratio: float = 0.75
    decoder_dim: int = 512
    decoder_depth: int = 8
    batch_per_gpu: int = 32
    precision: str = "bf16"
    activation_checkpointing: int = 1
    backward_prefetch: int = 1
    # DDP's gradient bucket (torch.nn.parallel.DistributedDataParallel's default bucket_cap_mb = 25 MiB, which
    # geofm.distributed.parallelize keeps): one all-reduce per bucket
    ddp_bucket_mb: float = 25.0
    # the FSDP API the run uses: "fsdp2" (``fully_shard``, geofm.distributed.parallelize: this project's runs) or
    # "fsdp1" (``FullyShardedDataParallel``: the paper's runs, whose prefetch study sets BackwardPrefetch
    # BACKWARD_PRE/BACKWARD_POST and limit_all_gathers, arguments only FSDP1 has). They differ for a hybrid
    # with a 1-rank shard group (geofm.perf.model)
    fsdp_api: str = "fsdp2"
    # the fraction of masked patches the decoder sees (pretrain.prediction_ratio; 1 = MAE: all of them)
    prediction_ratio: float = 1.0

    def __post_init__(self):
        if self.fsdp_api not in ("fsdp1", "fsdp2"):
            raise ValueError(f"Workload.fsdp_api: 'fsdp1' or 'fsdp2'; got {self.fsdp_api!r}")

    @classmethod
    def from_config(cls, cfg: dict, model: str, section: str = "profile", **over) -> "Workload":
        """A profile cell (``section`` = "profile": per-device batch ``profile.batch_size``) or a pretraining run
        (``"pretrain"``: the global ``pretrain.batch_size`` over its ranks) of ``model``, each key resolved as
        that run resolves it (``run_setting``; the pretrain keys as ``model`` sees them: ``pretrain.per_model``)."""
        def get(key, sec=section):
            return run_setting(cfg, sec, key, model)

        if section == "profile":
            batch = get("batch_size")
        else:
            batch = max(1, get("batch_size") // max(1, get("nodes") * get("procs_per_node")))
        d = dict(model=model, image_size=cfg["image_size"], mask_ratio=get("mask_ratio", "pretrain"),
                 decoder_dim=get("decoder_dim", "pretrain"), decoder_depth=get("decoder_depth", "pretrain"),
                 prediction_ratio=get("prediction_ratio", "pretrain"),
                 batch_per_gpu=batch, precision=get("precision"),
                 activation_checkpointing=get("activation_checkpointing"), backward_prefetch=get("backward_prefetch"))
        d.update(over)
        return cls(**d)

    # ---------------------------------------------------------------- shapes
    def units(self) -> list[Unit]:
        return list(_units(self))

    def _units(self) -> tuple[Unit, ...]:
        s = get_spec(self.model)
        n = num_patches(self.model, self.image_size)
        keep = int(n * (1 - self.mask_ratio))
        d, m, dd = s.width, s.mlp, self.decoder_dim
        dec = keep + decoded_masked(n, self.mask_ratio, self.prediction_ratio)  # the decoder's tokens, less the cls

        def block_params(w, h):
            return 2 * 2 * w + (3 * w * w + 3 * w) + (w * w + w) + (w * h + h) + (h * w + w)

        out = [Unit(f"encoder.{i}", block_params(d, m), flops.block_flops(keep + 1, d, m), keep + 1, d, m)
               for i in range(s.depth)]
        out += [Unit(f"decoder.{i}", block_params(dd, 4 * dd), flops.block_flops(dec + 1, dd, 4 * dd), dec + 1, dd,
                     4 * dd) for i in range(self.decoder_depth)]
        total_fwd = flops.mae_forward_flops(self.model, self.image_size, self.in_chans, self.mask_ratio, dd,
                                            self.decoder_depth, self.prediction_ratio)
        root_params = self.params_total() - sum(u.params for u in out)
        root_fwd = total_fwd - sum(u.fwd_flops for u in out)
        return (Unit("root", root_params, root_fwd, dec + 1, dd, 0), *out)

    def params_total(self) -> int:
        """Encoder + decoder parameters of the MAE (what FSDP shards and Adam updates)."""
        s = get_spec(self.model)
        dd = self.decoder_dim
        patch_dim = s.patch * s.patch * self.in_chans
        dec_block = 2 * 2 * dd + (3 * dd * dd + 3 * dd) + (dd * dd + dd) + (dd * 4 * dd + 4 * dd) + (4 * dd * dd + dd)
        decoder = (s.width * dd + dd) + dd + self.decoder_depth * dec_block + 2 * dd + (dd * patch_dim + patch_dim)
        return count_params(self.model, self.image_size, self.in_chans) + decoder

    def train_flops_per_image(self) -> float:
        """Useful FLOPs per image (forward + backward, no recomputation): the MFU numerator."""
        return float(flops.mae_train_flops_per_image(self.model, self.image_size, self.in_chans, self.mask_ratio,
                                                     self.decoder_dim, self.decoder_depth, self.prediction_ratio))

    def checkpointed(self, i_block: int) -> bool:
        k = self.activation_checkpointing
        return k > 0 and i_block % k == 0


@lru_cache(maxsize=4096)
def _units(w: Workload) -> tuple[Unit, ...]:
    """``Workload.units`` of one (immutable, hashable) workload, computed once: the planner's calibration and
    sensitivity sweeps ask for the same workloads' units many times."""
    return w._units()
