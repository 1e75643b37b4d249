"""Entry point for the multi-process tests: ``torchrun ... worker.py '<json>'``.

``{"mode": "train", "cfg": {...TrainConfig...}, "out": dir}`` runs pretraining;
``{"mode": "meta", "model": name, "image_size": n, "strategy": s}`` reports per-rank parameter memory.
"""
import json
import resource
import sys


def main():
    args = json.loads(sys.argv[1])
    if args["mode"] == "train":
        from geofm.train.pretrain import TrainConfig, WalltimeStop, train

        try:
            train(TrainConfig.from_dict(args["cfg"]), args["out"])
        except WalltimeStop as exc:  # what `geofm pretrain` does: say so, exit 75 for a resubmission
            print(f"walltime stop: {exc}", flush=True)
            sys.exit(WalltimeStop.EXIT_CODE)
        return
    import torch
    from torch.distributed.tensor import DTensor

    from geofm.distributed import launch
    from geofm.distributed.parallelize import parallelize, parse_strategy
    from geofm.models.mae import build_mae, materialize

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    de, dev = launch.init("cpu")
    model = build_mae(args["model"], args["image_size"], 3, device="meta")
    parallelize(model, parse_strategy(args["strategy"]), de.world_size, dev, precision="fp32")
    materialize(model, dev, seed=0)
    local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"rank": de.rank, "local": local, "total": total, "rss_growth_mb": (rss1 - rss0) / 1024}
    with open(f"{args['out']}.{de.rank}.json", "w") as fh:
        json.dump(out, fh)
    launch.shutdown()


if __name__ == "__main__":
    main()
