# Paths, wildcard lists and the effective config that every rule hands to the `geofm` CLI.
import hashlib
import math
import json
from pathlib import Path

import yaml

from geofm.common.io import write_text
from geofm.config import evaluate_settings, pretrain_settings, profile_effective, rule_params
from geofm.plots.registry import figure_paths, table_paths
from geofm.plots.registry import rule_inputs as figure_rule_inputs
from geofm.schedule import TILE_RETRIES, profile_bundles

RES = config["results"]
RAW = config["resources"]
PRETRAIN_DS = config["pretrain_dataset"]
MODELS = config["models"]
EVAL_DS = config["eval_datasets"]
PROTOCOLS = config["evaluate"]["protocols"]
PROF = config["profile"]

wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    model="[A-Za-z0-9_]+",
    protocol="[a-z]+",
    strategy="[A-Z0-9_]+[a-z]*",
    nodes="[0-9]+",
    # a profile variant as its file-name suffix: "" (the base variant) or ".<name>"
    variant=r"(\.[a-z][a-z0-9_]*)?",
    # an evaluation at a train ratio as its file-name suffix: "" (the tiles' split) or ".tr<percent>"
    ratio=r"(\.tr[0-9p]+)?",


def effective_config() -> str:
    """The merged config (config files + --config) as one file the CLI reads; rewritten only on change.

    Its content-addressed name appears only in the formatted command of a job, never in a rule's shell text
    (Snakemake's code trigger compares the unformatted text, snakemake/persistence `_code`), so a changed key
    reruns only the jobs whose `params:` (geofm.config.rule_params) it changes, and two runs with different
    configs in one directory never read each other's file."""
    text = yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(".snakemake") / "geofm" / f"config-{digest}.yaml"
    if not path.exists():  # Slurm jobs re-parse the Snakefile in the same directory, possibly on several nodes at once
        write_text(path, text)
    return str(path)


CFG = effective_config()
# the paper study's pretrained encoders are write-protected once made (pretrain.protect; off in the demo)
PROTECT = protected if config["pretrain"]["protect"] else (lambda path: path)


def tiles_of(dataset):
    return [f"{RES}/tiles/{dataset}/stats.json", f"{RES}/tiles/{dataset}/manifest.parquet"]


def download_inputs(wc):
    ds = config["datasets"][wc.dataset]
    if ds["source"] == "derived":
        return [f"{RAW}/raw/{ds['from']}/download.json"]
    return []


def tile_inputs(wc):
    ds = config["datasets"][wc.dataset]
    if ds["source"] == "mixture":  # a mixed pretraining set: the tiles of its parts
        return [f for part in ds["parts"] for f in tiles_of(part)]
    out = [f"{RAW}/raw/{wc.dataset}/download.json"]
    if ds["source"] == "derived":
        out.append(f"{RAW}/raw/{ds['from']}/download.json")
    return out


def pretrain_geometry(model):
    """(nodes, ranks per node) of a model's pretraining: pretrain.per_model.<model> over pretrain."""
    p = pretrain_settings(config, model)
    return p["nodes"], p["procs_per_node"]


def pretrain_threads(model):
    """Cores of a model's local pretraining job: ranks x pretrain.threads_per_rank, capped at --cores
    (rank_threads); the CLI hands each rank its share."""
    p = pretrain_settings(config, model)
    return rank_threads(p["nodes"] * p["procs_per_node"] * p["threads_per_rank"])


def evaluate_geometry(model):
    e = evaluate_settings(config, model)
    return e["nodes"], e["procs_per_node"]


# --- Cluster execution (profiles/frontier, profiles/slurm-cuda, profiles/test-slurm) -------------------
# Multi-rank rules declare their geometry as resources: `nodes`, `ranks` (total) and `ranks_per_node`,
# plus `tasks` / `tasks_per_node` for the Slurm executor plugin, which takes exactly one of the two for
# an `mpi` job (tasks_per_node only when > 1): N nodes x P ranks -> sbatch --nodes=N --ntasks-per-node=P,
# or --nodes=N --ntasks=N when P is 1. Locally these resources are ignored and `mpi` is empty: the CLI
# starts its own ranks (torchrun). A Slurm profile sets `mpi` to its srun command; LAUNCH then hands srun
# the geometry explicitly, because the job step runs with the SLURM_* variables removed and a bare `srun`
# would start one task per node.
def rank_threads(ranks):
    """Threads of a multi-rank rule: one core per rank, capped at --cores, locally. Under a cluster
    executor there is no --cores (workflow.cores raises) and the CPUs per task come from the profile."""
    try:
        cores = workflow.cores
    except Exception:
        return 1
    return min(ranks, cores) if cores else 1


def srun_tasks(nodes, per_node):
    return nodes * per_node if per_node == 1 else 0


def srun_tasks_per_node(per_node):
    return per_node if per_node > 1 else 0


LAUNCH = ('MPI="{resources.mpi}"; ${{MPI:+$MPI --nodes={resources.nodes} --ntasks={resources.ranks} '
          '--ntasks-per-node={resources.ranks_per_node}}} ')
# The same geometry as a launcher prefix in $GEOFM_LAUNCH, for commands that start several launches in one
# job (geofm profile-bundle / evaluate-bundle: one srun step per cell); empty locally.
LAUNCH_PREFIX = ('MPI="{resources.mpi}"; GEOFM_LAUNCH="${{MPI:+$MPI --nodes={resources.nodes} '
                 '--ntasks={resources.ranks} --ntasks-per-node={resources.ranks_per_node}}}"; ')
# A site environment script (modules, venv, RCCL/NCCL and MIOpen settings) sourced first by the rules
# that run on compute nodes; a cluster profile sets the resource `site_env` (e.g. envs/frontier/env.sh),
# relative to the repository; locally it is empty and nothing is sourced.
# The repository's path is filled in when the job runs ({workflow.basedir} is formatted then, like {CFG}):
# Snakemake's code trigger compares the rule's unformatted shell text, which therefore names no path of the
# checkout, and a moved checkout reruns nothing.
SITE_ENV = ('SITE_ENV="{resources.site_env}"; if [ -n "$SITE_ENV" ]; then case "$SITE_ENV" in /*) ;; '
            '*) SITE_ENV="{workflow.basedir}/$SITE_ENV" ;; esac; . "$SITE_ENV"; fi; ')


def ratio_tag(r):
    """0.2 -> "tr20" (geofm.eval.stages.ratio_tag): the file-name suffix of an evaluation at a train ratio."""
    from geofm.eval.stages import ratio_tag as tag

    return tag(r)


def eval_stems(name):
    """`{dataset}` (the tiles' own split) or, with `train_ratios`, `{dataset}.tr<percent>` per ratio."""
    ratios = config["datasets"][name]["train_ratios"]
    return [f"{name}.{ratio_tag(r)}" for r in ratios] if ratios else [name]


def eval_ratio(wc):
    """The train ratio named by an evaluation's `{ratio}` tag (one of datasets.<D>.train_ratios), None when none."""
    return stem_ratio(wc.dataset, f"{wc.dataset}{wc.ratio}")


def stem_ratio(dataset, stem):
    """The train ratio of an evaluation stem (`{dataset}` -> None, `{dataset}.tr<percent>` -> one of
    datasets.<D>.train_ratios)."""
    if stem == dataset:
        return None
    for r in config["datasets"][dataset]["train_ratios"] or []:
        if f"{dataset}.{ratio_tag(r)}" == stem:
            return float(r)
    raise ValueError(f"{stem}: no such train ratio under datasets.{dataset}.train_ratios")


EVAL_OUT = expand(f"{RES}/eval/{{protocol}}/{{model}}/{{stem}}.json",
                  protocol=PROTOCOLS, model=MODELS, stem=[s for d in EVAL_DS for s in eval_stems(d)])
VARIANTS = PROF["variants"]


def profile_setting_of(variant, key):
    """A profile setting as a cell's variant ("" / ".name" / "base" / "name") sees it (the variant's
    override, else profile.<key>: geofm.config.profile_effective)."""
    return profile_effective(config, variant.lstrip(".") or "base")["profile"][key]


def feasible_cells(models, strategies, nodes, settings=None):
    """The (model, strategy, nodes) cells of a grid that can run: the memory model (geofm.perf.memory, the one
    `geofm plan`, `geofm schedule` and the profiler use) decides before any allocation; a cell that cannot
    fit, or whose shard group does not divide the job, is not a job and in no bundle (the figures' tables
    list it as impossible)."""
    from geofm.perf.plan import cell_feasibility

    return [(m, s, n) for m in models for s in strategies for n in nodes
            if cell_feasibility(config, m, s, int(n), settings)[0] == "ok"]


def profile_outputs():
    """Every feasible profile cell: the base grid, then each variant over its part of the grid (its models,
    strategies and nodes are a subset of the grid's; geofm.config checks that before any job)."""
    out = [f"{RES}/profile/{m}/{s}/{n}n.json"
           for m, s, n in feasible_cells(PROF["models"], PROF["strategies"], PROF["nodes"])]
    for name, v in VARIANTS.items():
        cells = {k: v.get(k, PROF[k]) for k in ("models", "strategies", "nodes")}
        out += [f"{RES}/profile/{m}/{s}/{n}n.{name}.json"
                for m, s, n in feasible_cells(cells["models"], cells["strategies"], cells["nodes"], v)]
    return out


PROFILE_OUT = profile_outputs()
# Profile cells that share an allocation shape (model x node count) run in one batch job (geofm.schedule):
# one rule per bundle, its outputs the bundle's feasible cell files (so each cell stays its own tracked
# output and an impossible cell is in no bundle).
PROFILE_BUNDLES = profile_bundles(config, PROFILE_OUT)
METRICS_OUT = expand(f"{RES}/pretrain/{{model}}/metrics.jsonl", model=MODELS)

# The figures rule's outputs and inputs come from the one figure registry (geofm.plots.registry): each figure
# and table by name, and the result kinds they read (the paper's tables are package data, in its params).
FIGURES = figure_paths(RES)
TABLES = table_paths(RES)
RESULTS_OF_KIND = {"eval": EVAL_OUT, "pretrain": METRICS_OUT, "profile": PROFILE_OUT, "plan": [f"{RES}/plan/plan.csv"]}
FIGURE_INPUTS = [f for kind in figure_rule_inputs() for f in RESULTS_OF_KIND[kind]]
