#!/usr/bin/env python
"""Benchmark: a local pretraining's two ways to use a machine's cores, as the rules run them.

- ``R ranks x 1 thread``: ``pretrain.procs_per_node: R`` (DDP over gloo, one intra-op thread per rank);
- ``1 rank x R threads``: ``procs_per_node: 1, threads_per_rank: R`` (one process, R intra-op threads).

Each layout runs ``geofm pretrain --model M`` for ``--steps`` steps through the CLI, with the thread variables
Snakemake sets for such a job (its threads: ranks x threads_per_rank), into a scratch results folder whose tiles are
the config's (``R/tiles/<pretrain_dataset>``, made first by e.g. ``snakemake R/tiles/realmix/stats.json --profile
profiles/local --configfile config/demo-real.yaml``). The layouts alternate round by round, so that other load on the
machine hits both alike. Prints per layout the best wall time (start-up included) and median step time (from
``metrics.jsonl``), and each layout's speed relative to the first.

Measured 2026-12-07 (2 cores, AMD EPYC, demo_base of config/demo-real.yaml, bf16, 400 steps): two DDP ranks
38.7 s, one rank of two threads 34.4 s (per-tensor AdamW; 32.8 s with the fused one): on a CPU, DDP's gradient
all-reduce competes for the cores the ranks compute on, while two threads split each matrix product.

Usage: ``python scripts/bench_local_layout.py [--config config/demo-real.yaml] [--model demo_base] [--steps 400]
[--rounds 2] [--cores 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "config" / "demo-real.yaml"))
    ap.add_argument("--model", default="demo_base")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cores", type=int, default=min(2, os.cpu_count() or 1))
    a = ap.parse_args()

    from geofm.cli import THREAD_VARS
    from geofm.config import ConfigError, load_config

    try:
        cfg = load_config(a.config)
    except ConfigError as exc:
        print(f"bench_local_layout: {exc}", file=sys.stderr)
        return 2
    tiles = Path(cfg["results"]) / "tiles" / cfg["pretrain_dataset"]
    if not tiles.is_absolute():
        tiles = Path.cwd() / tiles
    if not (tiles / "stats.json").is_file():
        print(f"bench_local_layout: no tiles at {tiles}: make them first (snakemake {cfg['results']}/tiles/"
              f"{cfg['pretrain_dataset']}/stats.json --profile profiles/local --configfile {a.config})", file=sys.stderr)
        return 2
    n = a.cores
    key = f"pretrain.per_model.{a.model}"
    layouts = {f"{n} ranks x 1 thread": (n, 1), f"1 rank x {n} threads": (1, n)}
    walls: dict[str, list[float]] = {k: [] for k in layouts}
    steps: dict[str, list[float]] = {k: [] for k in layouts}
    with tempfile.TemporaryDirectory(prefix="geofm-layout-") as tmp:
        res = Path(tmp)
        (res / "tiles").mkdir()
        (res / "tiles" / cfg["pretrain_dataset"]).symlink_to(tiles)
        for _ in range(a.rounds):
            for name, (ranks, threads) in layouts.items():
                shutil.rmtree(res / "pretrain", ignore_errors=True)
                cmd = [sys.executable, "-m", "geofm.cli", "pretrain", "--config", a.config, "--model", a.model,
                       "--set", f"results={res}", "--set", f"{key}.steps={a.steps}",
                       "--set", f"{key}.warmup_steps={max(1, a.steps // 10)}",
                       "--set", f"{key}.procs_per_node={ranks}", "--set", f"{key}.threads_per_rank={threads}",
                       "--set", f"pretrain.checkpoint_every={a.steps}"]
                env = {**os.environ, **{v: str(ranks * threads) for v in THREAD_VARS}}
                t = time.perf_counter()
                p = subprocess.run(cmd, env=env, capture_output=True, text=True)
                walls[name].append(time.perf_counter() - t)
                if p.returncode:
                    print(f"bench_local_layout: {name} failed:\n{p.stderr[-2000:]}", file=sys.stderr)
                    return 1
                recs = [json.loads(line) for line in
                        (res / "pretrain" / a.model / "metrics.jsonl").read_text().splitlines()]
                ts = sorted(r["step_time_s"] for r in recs[1:])
                steps[name].append(ts[len(ts) // 2])
    print(f"{a.model} ({a.config}), {a.steps} steps, {n} cores; best of {a.rounds} rounds, layouts alternating")
    print(f"{'layout':22s} {'wall s':>8s} {'median step ms':>15s} {'speed vs first':>15s}")
    first = min(next(iter(walls.values())))
    for name in layouts:
        print(f"{name:22s} {min(walls[name]):8.1f} {min(steps[name]) * 1000:15.1f} {first / min(walls[name]):15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
