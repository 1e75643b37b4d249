"""``geofm``: one command, a subcommand per stage. Snakemake rules call exactly one subcommand each.

    geofm validate  --config C
    geofm download  --config C --dataset D
    geofm tile      --config C --dataset D
    geofm pretrain  --config C --model M [--nprocs N]
    geofm evaluate  --config C --protocol P --model M --dataset D --out F
    geofm profile   --config C --model M --strategy S --nodes N [--variant V] --out F
    geofm profile-bundle  --config C --cells F [F ...] [--launch CMD]   (profile cells of one batch job)
    geofm evaluate-bundle --config C --model M [--launch CMD]          (every protocol x dataset of M)
    geofm plan      --config C          (batch jobs, submissions and node-hours of the study)
    geofm figures   --config C

Multi-process stages (pretrain, profile) run as one rank each when started by torchrun or srun; started
plainly with more than one process requested, they re-launch themselves under a local torchrun.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from .config import ConfigError, load_config


def _in_distributed_env() -> bool:
    from .distributed.launch import detect

    return detect().launcher != "single"


def _relaunch(nprocs: int, argv: list[str]) -> int:
    """Re-run this very command as ``nprocs`` local ranks (gloo on CPU, nccl on GPUs)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nprocs}",
           "-m", "geofm.cli", *argv]
    # split this job's threads (Snakemake sets OMP_NUM_THREADS to the rule's threads) between the ranks
    budget = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, budget // nprocs))}
    return subprocess.call(cmd, env=env)


def _train_config(cfg: dict, model: str, data: str, section: dict, **over) -> "TrainConfig":
    from .train.pretrain import TrainConfig

    d = {k: v for k, v in section.items() if k not in ("nodes", "procs_per_node", "runtime_min", "models",
                                                        "strategies", "device_memory_gb", "warmup_steps_profile",
                                                        "retries", "expected_mfu", "device_peak_tflops",
                                                        "per_model")}
    d.update(over)
    return TrainConfig.from_dict({**d, "model": model, "image_size": cfg["image_size"], "data": data,
                                  "seed": cfg["seed"], "device": cfg["device"]})


def _in_chans(cfg: dict, dataset: str) -> int:
    stats = Path(cfg["results"]) / "tiles" / dataset / "stats.json"
    return int(json.loads(stats.read_text())["bands"]) if stats.exists() else 3


def cmd_validate(args, cfg):
    print(f"{args.config}: valid ({len(cfg['models'])} models, {len(cfg['datasets'])} datasets)")


def cmd_download(args, cfg):
    from .data.stages import run_download

    print(run_download(cfg, args.dataset))


def cmd_tile(args, cfg):
    from .data.stages import run_tile

    print(run_tile(cfg, args.dataset))


def cmd_pretrain(args, cfg, argv):
    from .config import pretrain_settings

    p = pretrain_settings(cfg, args.model)
    nprocs = args.nprocs or p.get("nodes", 1) * p.get("procs_per_node", 1)
    if nprocs > 1 and not _in_distributed_env():
        return _relaunch(nprocs, argv)
    from .train.pretrain import WalltimeStop, train

    ds = cfg["pretrain_dataset"]
    data = str(Path(cfg["results"]) / "tiles" / ds)
    tc = _train_config(cfg, args.model, data, p, in_chans=_in_chans(cfg, ds))
    try:
        train(tc, Path(cfg["results"]) / "pretrain" / args.model)
    except WalltimeStop as exc:
        print(f"geofm pretrain: {exc}", file=sys.stderr)
        return WalltimeStop.EXIT_CODE
    return 0


def profile_settings(pr: dict, variant: str) -> tuple[dict, dict]:
    """(effective profile settings, the variant's own overrides) for ``variant`` (``base``: none)."""
    from .config import PROFILE_VARIANT_KEYS as VARIANT_KEYS

    variants = pr.get("variants") or {}
    if variant != "base" and variant not in variants:
        raise ValueError(f"unknown profile variant {variant!r} (profile.variants: {', '.join(variants) or 'none'})")
    own = {k: v for k, v in (variants.get(variant) or {}).items() if k in VARIANT_KEYS}
    return {**pr, **own}, own


def cmd_profile(args, cfg, argv):
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiled step: no Kineto start/stop chatter in the log
    pr = cfg["profile"]
    variant = args.variant or "base"
    try:
        eff, own = profile_settings(pr, variant)
    except ValueError as exc:
        print(f"geofm profile: error: {exc}", file=sys.stderr)
        return 2
    nprocs = args.nodes * pr.get("procs_per_node", 1)
    if nprocs > 1 and not _in_distributed_env():
        return _relaunch(nprocs, argv)
    from .profile.throughput import profile_run, write_json

    ds = cfg["pretrain_dataset"]
    real = eff.get("data", "synthetic") == "real"
    data = str(Path(cfg["results"]) / "tiles" / ds) if real else "synthetic"
    from .distributed.launch import detect

    world = detect().world_size
    over = {k: eff[k] for k in ("precision", "activation_checkpointing", "compile", "backward_prefetch",
                                "forward_prefetch") if k in eff}
    if real:
        over["in_chans"] = _in_chans(cfg, ds)
    p = dict(cfg["pretrain"])
    p.pop("strategy", None)
    tc = _train_config(cfg, args.model, data, p, strategy=args.strategy,
                       batch_size=pr.get("batch_size", 8) * world, **over)
    rec = profile_run(tc, args.nodes, pr.get("warmup_steps", 2), pr.get("steps", 5), pr.get("device_memory_gb"),
                      variant=variant, variant_settings=own)
    if detect().rank == 0:
        write_json(rec, args.out)
        print(json.dumps({k: rec.get(k) for k in ("model", "strategy", "nodes", "variant", "status", "images_per_s",
                                                  "mfu", "comm_share")}))
    return 0


def cmd_evaluate(args, cfg):
    from .config import evaluate_settings
    from .eval.stages import run_evaluate

    cfg = {**cfg, "evaluate": evaluate_settings(cfg, args.model)}  # the model's own geometry and settings
    enc = Path(cfg["results"]) / "pretrain" / args.model / "encoder.pt"
    run_evaluate(cfg, args.protocol, args.model, args.dataset, enc, args.out)


def _passthrough(args) -> list[str]:
    out = ["--config", args.config]
    for item in args.set:
        out += ["--set", item]
    return out


def cmd_profile_bundle(args, cfg):
    """The profile cells of one allocation (one model x node count), one after another, each its own
    srun step, output and log; a failing or over-budget cell records its failure and the rest go on."""
    from .bundle import BundleCell, run_bundle
    from .plan import parse_cell

    res = Path(cfg["results"])
    cells = []
    for out in args.cells:
        c = parse_cell(out)
        variant = c.variant.lstrip(".") or "base"
        cells.append(BundleCell(
            ["profile", *_passthrough(args), "--model", c.model, "--strategy", c.strategy, "--nodes",
             str(c.nodes), "--variant", variant, "--out", out],
            out, str(res / "logs" / "profile" / c.model / c.strategy / f"{c.nodes}n{c.variant}.log"),
            {"model": c.model, "strategy": c.strategy, "nodes": c.nodes, "variant": variant}))
    done = run_bundle(cells, args.launch or "", cfg["profile"].get("runtime_min", 10) * 60)
    return 0 if all(Path(o).exists() for o in done) else 1


def cmd_evaluate_bundle(args, cfg):
    """Every protocol x dataset of one model in one batch job, each its own srun step on all the job's
    ranks; a failing cell writes its own failed record and the others still run."""
    from .bundle import BundleCell, run_bundle

    res = Path(cfg["results"])
    cells = []
    for proto in cfg["evaluate"]["protocols"]:
        for ds in cfg["eval_datasets"]:
            out = str(res / "eval" / proto / args.model / f"{ds}.json")
            cells.append(BundleCell(
                ["evaluate", *_passthrough(args), "--protocol", proto, "--model", args.model, "--dataset", ds,
                 "--out", out], out, str(res / "logs" / "eval" / proto / args.model / f"{ds}.log"),
                {"protocol": proto, "model": args.model, "dataset": ds}))
    done = run_bundle(cells, args.launch or "")
    return 0 if all(Path(o).exists() for o in done) else 1


def cmd_plan(args, cfg):
    from .plan import cell_paths_of, format_plan, study_plan

    plan = study_plan(cfg, cell_paths_of(cfg))
    print(format_plan(plan))
    return 1 if plan["problems"] else 0


def cmd_figures(args, cfg):
    from .plots.figures import run_figures

    res = Path(cfg["results"])
    for p in run_figures(cfg, res / "figures", res / "tables"):
        print(p)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="geofm", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def add(name, *opts):
        sp = sub.add_parser(name)
        sp.add_argument("--config", required=True)
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (YAML value), e.g. --set pretrain.steps=10")
        for o in opts:
            sp.add_argument(f"--{o}", required=o not in ("nprocs", "variant"),
                            type=int if o in ("nodes", "nprocs") else str)
        return sp

    add("validate")
    add("download", "dataset")
    add("tile", "dataset")
    add("pretrain", "model", "nprocs")
    add("evaluate", "protocol", "model", "dataset", "out")
    add("profile", "model", "strategy", "nodes", "variant", "out")
    add("figures")
    add("plan")
    add("evaluate-bundle", "model").add_argument("--launch", default="", help="launcher prefix (srun ...)")
    pb = add("profile-bundle")
    pb.add_argument("--cells", nargs="+", required=True, help="profile cell output paths")
    pb.add_argument("--launch", default="", help="launcher prefix of each cell (srun ...)")
    args = ap.parse_args(argv)
    try:
        import yaml

        over: dict = {}
        for item in args.set:
            key, _, val = item.partition("=")
            node = over
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = yaml.safe_load(val)
        cfg = load_config(args.config, over)
    except ConfigError as exc:
        print(f"geofm: {exc}", file=sys.stderr)
        return 2
    if args.cmd in ("pretrain", "profile"):
        fn = cmd_pretrain if args.cmd == "pretrain" else cmd_profile
        return int(fn(args, cfg, argv) or 0)
    if args.cmd in ("profile-bundle", "evaluate-bundle", "plan"):
        fn = {"profile-bundle": cmd_profile_bundle, "evaluate-bundle": cmd_evaluate_bundle, "plan": cmd_plan}
        return int(fn[args.cmd](args, cfg) or 0)
    try:
        {"validate": cmd_validate, "download": cmd_download, "tile": cmd_tile, "evaluate": cmd_evaluate,
         "figures": cmd_figures}[args.cmd](args, cfg)
    except Exception as exc:  # noqa: BLE001 - user-facing errors get one clear line, bugs a traceback
        from .data import DataError
        from .eval.stages import EvalError

        if not isinstance(exc, (FileNotFoundError, ValueError, KeyError, DataError, EvalError)):
            raise
        print(f"geofm {args.cmd}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
