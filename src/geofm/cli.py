"""``geofm``: one command, a subcommand per stage. Snakemake rules call exactly one subcommand each.

    geofm validate  --config C
    geofm download  --config C --dataset D
    geofm tile      --config C --dataset D
    geofm pretrain  --config C --model M [--nprocs N]
    geofm evaluate  --config C --protocol P --model M --dataset D --out F [--train-ratio R]
    geofm profile   --config C --model M --strategy S --nodes N [--variant V] --out F
    geofm profile-bundle  --config C --cells F [F ...] [--launch CMD]   (profile cells of one batch job)
    geofm evaluate-bundle --config C --model M [--launch CMD]          (every protocol x dataset of M)
    geofm schedule  --config C          (batch jobs, submissions, walltime chunks vs the scheduler's limits)
    geofm figures   --config C
    geofm plan      --config C --out plan.csv [--summary S.json] [--cluster NAME] [--validate]

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
from typing import TYPE_CHECKING

from .config import PROFILE_VARIANT_KEYS, ConfigError, digest, load_config, rule_params, set_overrides
from .provenance import provenance

if TYPE_CHECKING:  # pragma: no cover
    from .train.pretrain import TrainConfig


def _in_distributed_env() -> bool:
    from .distributed.launch import detect

    return detect().launcher != "single"


def _relaunch(nprocs: int, argv: list[str]) -> int:
    """Re-run this very command as ``nprocs`` local ranks (gloo on CPU, nccl on GPUs)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nprocs}",
           "-m", "geofm.cli", *argv]
    # split this job's threads (Snakemake sets OMP_NUM_THREADS to the rule's threads) between the ranks, in every
    # variable Snakemake sets: left at the job's count, MKL_NUM_THREADS gave each of demo_base's two ranks two
    # GEMM threads on a 2-core job (four busy threads on two cores, 94 img/s instead of about 150)
    budget = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    per_rank = str(max(1, budget // nprocs))
    env = {**os.environ, **{v: per_rank for v in THREAD_VARS}}
    return subprocess.call(cmd, env=env)


# The thread variables Snakemake sets to a job's threads (snakemake/shell.py, 9.x: OpenMP, GotoBLAS, OpenBLAS,
# MKL, Accelerate, numexpr); a rank started by _relaunch gets its share in each.
THREAD_VARS = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def _train_config(cfg: dict, model: str, data: str, section: dict, **over) -> "TrainConfig":
    from .train.pretrain import TrainConfig

    d = {k: v for k, v in section.items() if k not in TrainConfig.NOT_TRAINING}
    d.update(over)
    return TrainConfig.from_dict({**d, "model": model, "image_size": cfg["image_size"], "data": data,
                                  "seed": cfg["seed"], "device": cfg["device"]})


class ArgumentError(ValueError):
    """A command-line argument that cannot be right (checked before anything loads): one line, no traceback."""


def _check_model(name: str) -> None:
    from .models.registry import MODELS

    if name not in MODELS:
        raise ArgumentError(f"--model {name!r} is not a registry model (known: {', '.join(MODELS)})")


def _in_chans(cfg: dict, dataset: str) -> int:
    from .data.shards import read_stats

    tiles = Path(cfg["results"]) / "tiles" / dataset
    return int(read_stats(tiles)["bands"]) if (tiles / "stats.json").exists() else 3


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

    _check_model(args.model)
    p = pretrain_settings(cfg, args.model)
    nprocs = args.nprocs or p["nodes"] * p["procs_per_node"]
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


def cmd_profile(args, cfg, argv):
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiled step: no Kineto start/stop chatter in the log
    from .config import pretrain_settings, profile_effective

    _check_model(args.model)
    from .distributed.strategies import parse_strategy

    try:
        parse_strategy(args.strategy)
    except ValueError as exc:
        raise ArgumentError(f"--strategy {args.strategy!r}: {exc}") from None
    variant = args.variant or "base"
    try:
        cell = profile_effective(cfg, variant, args.model)
    except ValueError as exc:
        print(f"geofm profile: error: {exc}", file=sys.stderr)
        return 2
    eff = cell["profile"]  # the profile section under the variant's overrides
    nprocs = args.nodes * eff["procs_per_node"]
    if nprocs > 1 and not _in_distributed_env():
        return _relaunch(nprocs, argv)
    from .common.io import write_json
    from .profile.throughput import profile_run

    ds = cfg["pretrain_dataset"]
    real = eff["data"] == "real"
    data = str(Path(cfg["results"]) / "tiles" / ds) if real else "synthetic"
    from .distributed.launch import detect

    world = detect().world_size
    over = {k: eff[k] for k in PROFILE_VARIANT_KEYS if k != "data"}  # a cell's step settings (schema)
    if real:
        over["in_chans"] = _in_chans(cfg, ds)
    p = pretrain_settings(cfg, args.model)  # the model's own recipe (pretrain.per_model) under the cell's settings
    p.pop("strategy", None)
    tc = _train_config(cfg, args.model, data, p, strategy=args.strategy, batch_size=eff["batch_size"] * world, **over)
    rec = profile_run(tc, args.nodes, eff["warmup_steps"], eff["steps"], eff["device_memory_gb"],
                      variant=variant, variant_settings=cell["own"])
    if detect().rank == 0:
        rec["provenance"] = provenance(digest(rule_params(cfg, "profile", model=args.model, variant=variant)))
        write_json(args.out, rec)
        print(json.dumps({k: rec.get(k) for k in ("model", "strategy", "nodes", "variant", "status", "images_per_s",
                                                  "mfu", "comm_share")}))
    return 0


def cmd_evaluate(args, cfg):
    from .config import evaluate_settings
    from .eval.stages import run_evaluate

    # what can be said before anything is loaded
    _check_model(args.model)
    ds = cfg["datasets"].get(args.dataset)
    if ds is None:
        raise ArgumentError(f"--dataset {args.dataset!r} is not under datasets in {args.config} "
                         f"(known: {', '.join(cfg['datasets'])})")
    if ds.get("kind") != "classification":
        raise ArgumentError(f"--dataset {args.dataset!r} has kind {ds.get('kind')!r} in {args.config}: only "
                         "labelled (kind: classification) datasets are evaluated")
    ratio = None
    if args.train_ratio is not None:
        try:
            ratio = float(args.train_ratio)
        except ValueError:
            raise ArgumentError(f"--train-ratio {args.train_ratio!r} is not a number") from None
        if not 0 < ratio < 1:
            raise ArgumentError(f"--train-ratio {args.train_ratio} must lie strictly between 0 and 1 (the fraction "
                             "of each class that trains)")
    cfg = {**cfg, "evaluate": evaluate_settings(cfg, args.model)}  # the model's own geometry and settings
    enc = Path(cfg["results"]) / "pretrain" / args.model / "encoder.pt"
    run_evaluate(cfg, args.protocol, args.model, args.dataset, enc, args.out, train_ratio=ratio)


def _passthrough(args) -> list[str]:
    out = ["--config", args.config]
    for item in args.set:
        out += ["--set", item]
    return out


def cmd_profile_bundle(args, cfg):
    """The profile cells of one allocation (one model x node count), one after another, each its own
    srun step, output and log; a failing or over-budget cell records its failure and the rest go on."""
    from .bundle import BundleCell, run_bundle
    from .schedule import parse_cell

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
    done = run_bundle(cells, args.launch or "", cfg["profile"]["runtime_min"] * 60)
    return 0 if all(Path(o).exists() for o in done) else 1


def cmd_evaluate_bundle(args, cfg):
    """Every protocol x dataset of one model in one batch job, each its own srun step on all the job's
    ranks; a failing cell writes its own failed record and the others still run."""
    from .bundle import BundleCell, run_bundle

    from .eval.stages import ratio_tag

    res = Path(cfg["results"])
    cells = []
    for proto in cfg["evaluate"]["protocols"]:
        for ds in cfg["eval_datasets"]:
            # the tiles' own split, or one evaluation per datasets.<D>.train_ratios ({D}.tr<percent>.json)
            for ratio in cfg["datasets"][ds]["train_ratios"] or [None]:
                stem = ds if ratio is None else f"{ds}.{ratio_tag(ratio)}"
                out = str(res / "eval" / proto / args.model / f"{stem}.json")
                extra = [] if ratio is None else ["--train-ratio", str(float(ratio))]
                cells.append(BundleCell(
                    ["evaluate", *_passthrough(args), "--protocol", proto, "--model", args.model, "--dataset", ds,
                     *extra, "--out", out], out, str(res / "logs" / "eval" / proto / args.model / f"{stem}.log"),
                    {"protocol": proto, "model": args.model, "dataset": ds, "train_ratio": ratio}))
    done = run_bundle(cells, args.launch or "")
    return 0 if all(Path(o).exists() for o in done) else 1


def cmd_schedule(args, cfg):
    from .schedule import cell_paths_of, format_schedule, study_schedule

    sched = study_schedule(cfg, cell_paths_of(cfg))
    print(format_schedule(sched))
    return 1 if sched["problems"] else 0


def cmd_figures(args, cfg):
    from .plots.figures import run_figures

    res = Path(cfg["results"])
    if not res.is_dir():  # a typo'd results path would give empty "no data" figures
        raise FileNotFoundError(f"results directory {res} does not exist (results: in {args.config}): nothing "
                                "to draw")
    for p in run_figures(cfg, res / "figures", res / "tables"):
        print(p)


# What each stage reads, writes and does, with one example: `geofm <stage> --help` (R: results, S: resources).
STAGES = {
    "validate": ("check a config file against the schema and its cross-references; writes nothing",
                 "reads the config file; prints its model and dataset counts, or the offending key path, the bad "
                 "value and what is allowed",
                 "geofm validate --config config/config.yaml"),
    "download": ("fetch, copy or synthesize one dataset and verify its checksums",
                 "reads datasets.<D> (url / path / synthetic settings); writes S/raw/<D>/ and "
                 "S/raw/<D>/download.json (files, sha256, bytes); resumes and retries downloads",
                 "geofm download --config config/demo.yaml --dataset demo_scenes"),
    "tile": ("cut scenes into tiles / pack classification images into uint8 shards",
             "reads S/raw/<D>/ and datasets.<D> (tile_size, stride, splits); writes R/tiles/<D>/: shard-*.npy, "
             "manifest.parquet (GeoParquet), stats.json (band mean/std), rejected.csv",
             "geofm tile --config config/demo.yaml --dataset demo_scenes"),
    "pretrain": ("MAE pretraining of one model under the config's FSDP2 strategy",
                 "reads R/tiles/<pretrain_dataset>/ and the pretrain section; writes R/pretrain/<M>/: "
                 "checkpoints/ (sharded DCP), metrics.jsonl, encoder.pt, summary.json; resumes a checkpoint of the "
                 "same config fingerprint whose run is unfinished, else moves old checkpoints aside and starts at "
                 "step 0; starts its own ranks with torchrun when more than one is configured",
                 "geofm pretrain --config config/demo.yaml --model demo_tiny"),
    "evaluate": ("scene classification with the pretrained encoder and the same encoder at random init",
                 "reads R/pretrain/<M>/encoder.pt, R/tiles/<D>/ and the evaluate section; writes --out (top-1, "
                 "top-5, per class, provenance) and its .confusion.csv/.png; protocols linprobe, knn, finetune; "
                 "--train-ratio R re-splits the labelled tiles (stratified, seeded) with R of each class training, "
                 "the rest testing (the workflow writes R/eval/<P>/<M>/<D>.tr<percent>.json for each of "
                 "datasets.<D>.train_ratios)",
                 "geofm evaluate --config config/demo.yaml --protocol knn --model demo_tiny "
                 "--dataset demo_landcover --out results/eval/knn/demo_tiny/demo_landcover.json"),
    "profile": ("throughput and memory of the training step for one model x strategy x node count (x variant)",
                "reads the profile section (and R/tiles/ for data: real); writes --out: images/s, TFLOP/s, MFU, "
                "peak memory, time split, communication share, energy, or status 'impossible: ...'",
                "geofm profile --config config/demo.yaml --model demo_base --strategy FULL_SHARD --nodes 1 "
                "--out results/profile/demo_base/FULL_SHARD/1n.json"),
    "figures": ("figures and tables of every result, with the paper's published numbers overlaid",
                "reads R/eval/, R/pretrain/*/metrics.jsonl, R/profile/ and the paper's reference CSVs; writes "
                "R/figures/*.png and R/tables/*.csv",
                "geofm figures --config config/demo.yaml"),
    "schedule": ("lay the study out as batch jobs and check them against the scheduler's limits",
                 "reads the config (scheduler, per-model pretrain/evaluate geometry, the profile grid less the cells "
                 "the memory model rules out); writes nothing; prints every batch job (tile, pretrain chunks, "
                 "evaluate, profile bundles) with nodes and walltime, the submissions, node-hours and any limit "
                 "exceeded (exit status 1)",
                 "geofm schedule --config config/config.yaml"),
    "profile-bundle": ("run the profile cells of one batch job one after another, each its own launch",
                       "reads the profile section; writes each --cells file (a failing or over-budget cell its "
                       "own 'status: failed: ...') and R/logs/profile/<M>/<S>/<N>n.log per cell",
                       "geofm profile-bundle --config config/demo.yaml "
                       "--cells results/profile/demo_base/FULL_SHARD/1n.json results/profile/demo_base/DDP/1n.json"),
    "evaluate-bundle": ("run every protocol x dataset evaluation of one model in one batch job",
                        "reads R/pretrain/<M>/encoder.pt, R/tiles/<D>/ and the evaluate section; writes "
                        "R/eval/<P>/<M>/<D>.json per protocol x dataset (a failing one its own failed record) and "
                        "R/logs/eval/<P>/<M>/<D>.log",
                        "geofm evaluate-bundle --config config/demo.yaml --model demo_tiny"),
}
PLAN_HELP = """Predict images/s, the step's parts (compute, exposed communication, optimizer), peak memory per GPU
and node-hours of every model x strategy x node count of the config's profile grid on a described cluster
(plan.cluster; Frontier and a generic 8x H100 InfiniBand cluster ship in geofm/perf/clusters.yaml, more under
plan.clusters), before any allocation. Cells whose predicted memory exceeds the device's are marked
"impossible: needs ~X GB of Y" (fits = False); the DAG skips them. The model is calibrated on 1-node figures
only (the paper's, on Frontier, and this project's own 1-node profile results); its free parameters are
printed. --validate scores it against the paper's multi-node Frontier measurements and peak memory."""


def cmd_plan(args, cfg):
    from .perf.cluster import load_cluster
    from .perf.plan import (calibration_for, one_node_times_nodes, plan_rows, pretrain_node_hours,
                            model_sensitivity, validate, validation_report, write_plan)

    cluster = load_cluster(cfg, args.cluster)
    cal = calibration_for(cfg, cluster)
    rows = plan_rows(cfg, cluster, cal)
    if args.out:
        write_plan(rows, args.out)
    ok = [r for r in rows if r["fits"]]
    grid_nh = sum(r.get("profile_node_hours") or 0.0 for r in ok)
    pre = pretrain_node_hours(cfg, cluster, cal)
    pre_nh = sum(v["node_hours"] or 0.0 for v in pre.values())
    print(f"cluster {cluster.name}: {cluster.description}")
    print("\n".join(cal.describe()))
    print("\n".join(cluster.describe_comm()))
    print(f"profile grid: {len(rows)} cells, {len(ok)} feasible, {len(rows) - len(ok)} impossible; "
          f"predicted {grid_nh:,.1f} node-hours (feasible cells, {cfg['profile']['warmup_steps']} + "
          f"{cfg['profile']['steps']} + 1 steps each plus the job overhead)")
    from .config import pretrain_settings

    for m, v in pre.items():
        nh = f"{v['node_hours']:,.1f} node-hours ({v['images_per_s']:,.0f} img/s)" if v["node_hours"] is not None \
            else v["status"]
        pt = pretrain_settings(cfg, m)
        print(f"pretrain {m}: {pt['strategy']} on {v['nodes']} nodes, {pt['steps']} steps: {nh}")
    print(f"study: {grid_nh + pre_nh:,.1f} node-hours (profile grid {grid_nh:,.1f} + pretraining {pre_nh:,.1f})")
    summary = {"cluster": cluster.name, "cells": len(rows), "feasible": len(ok),
               "impossible": [f"{r['model']}/{r['strategy']}/{r['nodes']}n: {r['status']}" for r in rows if not r["fits"]],
               "profile_node_hours": grid_nh, "pretrain": pre, "pretrain_node_hours": pre_nh,
               "study_node_hours": grid_nh + pre_nh,
               "calibration": {"efficiency": cal.efficiency, "ddp_factor": cal.ddp_factor,
                               "strategy_factor": cal.strategy_factor,
                               "default_efficiency": cal.default_efficiency, "one_node_cells": len(cal.cells)}}
    if args.validate:
        v = validate(cfg)
        naive = validate(cfg, one_node_times_nodes())
        print("\nvalidation against the paper (Frontier; calibrated on its 1-node cells only):\n")
        print(validation_report(v, naive))
        print()
        print(model_sensitivity(cfg))
        summary["validation"] = {"fastest_named": v.fastest_named, "pairs": v.fastest_pairs,
                                 "efficiency_mean_abs_diff_points": v.eff_mean_abs_diff_points,
                                 "images_per_s_median_abs_err": v.ips_median_abs_err,
                                 "memory_median_abs_err": v.memory_median_abs_err}
    if args.summary:
        from .common.io import write_json

        write_json(args.summary, summary, default=str)
    if args.out:
        print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    import textwrap

    ap = argparse.ArgumentParser(
        prog="geofm", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="GeoFM-Scale: one subcommand per stage of the study (download -> tile -> pretrain -> evaluate,\n"
                    "profile -> figures); the Snakemake rules call exactly one each.",
        epilog="example: geofm tile --config config/demo.yaml --dataset demo_scenes\n"
               "         geofm pretrain --help   (what a stage reads and writes)")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="STAGE")

    def add(name, *opts):
        what, io, example = STAGES[name]
        text = textwrap.fill(f"{io}.", 100) + "\n(R: the config's results directory, S: its resources directory)"
        sp = sub.add_parser(name, help=what, description=f"{what[0].upper()}{what[1:]}.\n\n{text}",
                            epilog=f"example: {example}", formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.add_argument("--config", required=True, help="the study's YAML config (validated against the schema)")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (YAML value), e.g. --set pretrain.steps=10")
        helps = {"dataset": "a name under datasets", "model": "a model registry name (geofm.models.registry)",
                 "nprocs": "ranks to start (default: nodes x procs_per_node of the config)",
                 "protocol": "linprobe, knn or finetune", "out": "the result JSON to write",
                 "strategy": "DDP, NO_SHARD, SHARD_GRAD_OP, FULL_SHARD or HYBRID_<k>GPUs",
                 "nodes": "node count of the cell (ranks = nodes x profile.procs_per_node)",
                 "variant": "a name under profile.variants (default: base)",
                 "train-ratio": "evaluate on a stratified, seeded re-split with this fraction of the labelled tiles "
                                "for training (one of datasets.<D>.train_ratios; the workflow's {D}.tr<percent>.json); "
                                "default: the tiles' own split"}
        for o in opts:
            sp.add_argument(f"--{o}", required=o not in ("nprocs", "variant", "train-ratio"),
                            type=int if o in ("nodes", "nprocs") else str, help=helps[o])
        return sp

    add("validate")
    add("download", "dataset")
    add("tile", "dataset")
    add("pretrain", "model", "nprocs")
    add("evaluate", "protocol", "model", "dataset", "out", "train-ratio")
    add("profile", "model", "strategy", "nodes", "variant", "out")
    add("figures")
    add("schedule")
    add("evaluate-bundle", "model").add_argument("--launch", default="", help="launcher prefix (srun ...)")
    pb = add("profile-bundle")
    pb.add_argument("--cells", nargs="+", required=True, help="profile cell output paths")
    pb.add_argument("--launch", default="", help="launcher prefix of each cell (srun ...)")
    sp = sub.add_parser("plan", help="predict throughput, memory and node-hours of the profile grid",
                        description=PLAN_HELP)
    sp.add_argument("--config", required=True, help="study config (e.g. config/config.yaml)")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value (YAML value), e.g. --set plan.cluster=h100_ib")
    sp.add_argument("--out", help="plan CSV: one row per model x strategy x node count")
    sp.add_argument("--summary", help="JSON with node-hours, impossible cells, calibration (and validation)")
    sp.add_argument("--cluster", help="cluster to plan for (default: plan.cluster, frontier)")
    sp.add_argument("--validate", action="store_true",
                    help="print the validation against the paper's Frontier measurements (markdown tables)")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, set_overrides(args.set))
    except ConfigError as exc:
        print(f"geofm: {exc}", file=sys.stderr)
        return 2
    try:
        if args.cmd in ("pretrain", "profile"):
            fn = cmd_pretrain if args.cmd == "pretrain" else cmd_profile
            return int(fn(args, cfg, argv) or 0)
        if args.cmd in ("profile-bundle", "evaluate-bundle", "schedule"):
            fn = {"profile-bundle": cmd_profile_bundle, "evaluate-bundle": cmd_evaluate_bundle,
                  "schedule": cmd_schedule}
            return int(fn[args.cmd](args, cfg) or 0)
        {"validate": cmd_validate, "download": cmd_download, "tile": cmd_tile, "evaluate": cmd_evaluate,
         "figures": cmd_figures, "plan": cmd_plan}[args.cmd](args, cfg)
    except Exception as exc:  # noqa: BLE001 - user-facing errors get one clear line, bugs a traceback
        from .data import DataError
        from .distributed.checkpoint import CheckpointError
        from .eval.stages import EvalError

        user = (ArgumentError, DataError, CheckpointError)
        if args.cmd not in ("pretrain", "profile", "profile-bundle", "evaluate-bundle"):
            user += (FileNotFoundError, ValueError, KeyError, EvalError)  # ClusterError: a ValueError
        if not isinstance(exc, user):  # deep in training a ValueError or KeyError is a bug: its traceback
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # KeyError's str() adds quotes
        print(f"geofm {args.cmd}: error: {msg}", file=sys.stderr)
        return 1
    finally:
        # what still holds a finished run's process group goes now, not at interpreter finalisation
        from .distributed.launch import release

        release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
