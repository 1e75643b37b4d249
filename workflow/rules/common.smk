# Paths, wildcard lists and the effective config that every rule hands to the `geofm` CLI.
import hashlib
import json
import os
from pathlib import Path

import yaml

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


def effective_config() -> str:
    """The merged config (config files + --config) as one file the CLI reads; rewritten only on change."""
    text = yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(".snakemake") / "geofm" / f"config-{digest}.yaml"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return str(path)


CFG = effective_config()
GEOFM = "geofm"


def tiles_of(dataset):
    return [f"{RES}/tiles/{dataset}/stats.json", f"{RES}/tiles/{dataset}/manifest.parquet"]


def download_inputs(wc):
    ds = config["datasets"][wc.dataset]
    if ds["source"] == "derived":
        return [f"{RAW}/raw/{ds['from']}/download.json"]
    return []


def tile_inputs(wc):
    ds = config["datasets"][wc.dataset]
    out = [f"{RAW}/raw/{wc.dataset}/download.json"]
    if ds["source"] == "derived":
        out.append(f"{RAW}/raw/{ds['from']}/download.json")
    return out


def pretrain_tasks(wc=None):
    p = config["pretrain"]
    return p.get("nodes", 1) * p.get("procs_per_node", 1)


EVAL_OUT = expand(f"{RES}/eval/{{protocol}}/{{model}}/{{dataset}}.json",
                  protocol=PROTOCOLS, model=MODELS, dataset=EVAL_DS)
PROFILE_OUT = expand(f"{RES}/profile/{{model}}/{{strategy}}/{{nodes}}n.json",
                     model=PROF["models"], strategy=PROF["strategies"], nodes=PROF["nodes"])
METRICS_OUT = expand(f"{RES}/pretrain/{{model}}/metrics.jsonl", model=MODELS)

FIGURE_NAMES = ["accuracy_vs_size", "loss_curves", "throughput_per_strategy", "peak_memory",
                "paper_weak_scaling", "paper_peak_memory", "paper_prefetch_vit5b"]
TABLE_NAMES = ["accuracy", "profile", "best_strategy", "weak_scaling_efficiency"]
FIGURES = [f"{RES}/figures/{n}.png" for n in FIGURE_NAMES]
TABLES = [f"{RES}/tables/{n}.csv" for n in TABLE_NAMES]
