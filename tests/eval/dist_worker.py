"""One rank of the distributed evaluation tests (run plainly for 1 rank, under torchrun for more).

argv[1]: JSON payload ``{"modes": [...], "out": path}`` with modes ``features`` (mean and cls pooled, a copy
of the encoder per rank), ``features_sharded`` (the encoder sharded with FSDP2), ``finetune`` (FSDP2 when
more than one rank). Rank 0 saves a dict of tensors to ``out``. 31 images: the last rank's slice is padded.
"""
import json
import sys

import torch

from geofm.distributed import launch
from geofm.eval.features import extract_features, shard_encoder
from geofm.eval.finetune import FinetuneConfig, finetune
from geofm.models import build_encoder


def data(n=31, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randint(0, 120, (n, 3, size, size), generator=g, dtype=torch.uint8)
    x[torch.arange(n), y] += 100  # class c: band c brighter
    return x, y


def main():
    p = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    de, dev = launch.init("cpu")
    enc = build_encoder("test_micro", 16, 3, seed=3)
    x, y = data()
    mean, std = [0.3] * 3, [0.2] * 3
    out = {}
    modes = p["modes"]
    if "features" in modes:
        out["mean"] = extract_features(enc, x, mean, std, 16, batch_size=4, pool="mean")
        out["cls"] = extract_features(enc, x, mean, std, 16, batch_size=4, pool="cls")
    if "features_sharded" in modes:
        fresh = build_encoder("test_micro", 16, 3, seed=3)  # fully_shard applies to a module once
        out["sharded_mean"] = extract_features(shard_encoder(fresh, dev, "mean"), x, mean, std, 16, batch_size=4)
    if "finetune" in modes:
        cfg = FinetuneConfig(epochs=3, batch_size=8, base_lr=1e-2, drop_path=0.0, mixup=0.0, warmup_epochs=1,
                             label_smoothing=0.1, layer_decay=0.75, augment=True, pool="mean", seed=0)
        model, hist = finetune(enc, x, y, 3, mean, std, 16, cfg, device=dev)
        out["logits"] = extract_features(model, x, mean, std, 16, batch_size=4)
        out["train_top1"] = torch.tensor([h["train_top1"] for h in hist])
    if "finetune_ac" in modes:  # the same fine-tuning with every block's activations recomputed
        cfg = FinetuneConfig(epochs=3, batch_size=8, base_lr=1e-2, drop_path=0.0, mixup=0.0, warmup_epochs=1,
                             label_smoothing=0.1, layer_decay=0.75, augment=True, pool="mean", seed=0, activation_checkpointing=1)
        model, hist = finetune(build_encoder("test_micro", 16, 3, seed=3), x, y, 3, mean, std, 16, cfg, device=dev)
        out["ac_logits"] = extract_features(model, x, mean, std, 16, batch_size=4)
        out["ac_wrapped"] = torch.tensor(sum("CheckpointWrapper" in type(m).__name__ for m in model.modules()))
    if "finetune_ddp" in modes:  # evaluate.finetune_strategy: DDP: replicas whose gradients are all-reduced
        import torch.distributed as dist

        cfg = FinetuneConfig(epochs=3, batch_size=8, base_lr=1e-2, drop_path=0.0, mixup=0.0, warmup_epochs=1,
                             label_smoothing=0.1, layer_decay=0.75, augment=True, pool="mean", seed=0, strategy="DDP")
        model, hist = finetune(build_encoder("test_micro", 16, 3, seed=3), x, y, 3, mean, std, 16, cfg, device=dev)
        out["ddp_logits"] = extract_features(model, x, mean, std, 16, batch_size=4)
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        every = [torch.empty_like(flat) for _ in range(de.world_size)]
        dist.all_gather(every, flat)
        out["ddp_replica_spread"] = torch.stack(every).std(dim=0).max().reshape(1)
    if "features_bf16" in modes:
        out["bf16_mean"] = extract_features(build_encoder("test_micro", 16, 3, seed=3), x, mean, std, 16,
                                            batch_size=4, precision="bf16")
    if de.rank == 0:
        torch.save(out, p["out"])
    launch.shutdown()


if __name__ == "__main__":
    main()
