"""The workflow under Slurm.

1. Without Slurm: a dry run of config/config.yaml with profiles/frontier (and profiles/slurm-cuda) and a
   dummy account lists every job of the study, and the sbatch command that
   snakemake-executor-plugin-slurm builds for a pretrain / profile / evaluate job (its own
   ``get_submit_command``, fed the resources the dry run prints) has the nodes, tasks, GPUs, CPUs and
   time limit that the config and the profile ask for.
2. With a running Slurm (scripts/start-test-slurm.sh: nodes n1, n2, partition batch, slurmdbd): the tiny
   demo DAG runs through the slurm executor; pretraining is 2 srun tasks over the 2 nodes (gloo), the
   profile job 2 tasks on 1 node; sacct shows the sbatch jobs; the outputs are checked.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from geofm.perf.plan import cell_feasibility

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
COPY = ["Snakefile", "workflow", "config", "profiles", "envs"]


def _copy_workflow(dst: Path) -> Path:
    """Copy the workflow (symlinks resolved: workflow/schemas points into src/) into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, symlinks=False, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst / name)
    return dst


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ----------------------------------------------------------------------------- dry runs, no Slurm
class _Resources(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


def _value(v: str):
    return int(v) if re.fullmatch(r"-?\d+", v) else v


def _parse_dry_run(text: str) -> list[dict]:
    """Jobs of `snakemake -n` output: rule, wildcards, resources (typed), shell command."""
    jobs, cur = [], None
    for line in text.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            cur = {"rule": m.group(1), "wildcards": {}, "resources": _Resources(), "shell": ""}
            jobs.append(cur)
            continue
        if cur is None:
            continue
        s = line.strip()
        if s.startswith("wildcards:"):
            cur["wildcards"] = dict(kv.split("=", 1) for kv in s[len("wildcards:"):].strip().split(", "))
        elif s.startswith("resources:"):
            for kv in s[len("resources:"):].strip().split(", "):
                k, _, v = kv.partition("=")
                if v != "<TBD>":
                    cur["resources"][k] = _value(v)
        elif line.startswith("Shell command:"):
            cur["shell"] = line[len("Shell command:"):].strip()
    return jobs


def _job_stats(text: str) -> dict[str, int]:
    block = text.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def _sbatch(job: dict) -> str:
    """The sbatch command line the Slurm plugin builds for this job (account/partition as it adds them)."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    res = job["resources"]
    fake = SimpleNamespace(resources=res, threads=1, name=job["rule"], wildcards=job["wildcards"])
    validate_slurm_extra(fake)  # raises on a flag the plugin manages itself
    params = {"run_uuid": "uuid", "slurm_logfile": "/dev/null", "comment_str": f"rule_{job['rule']}",
              "account": f"-A {res['slurm_account']}", "partition": f"-p {res['slurm_partition']}",
              "workdir": "/work"}
    settings = SimpleNamespace(requeue=True, no_requeue=False, qos=None, reservation=None)
    return get_submit_command(fake, params, settings)


def _flag(cmd: str, name: str):
    m = re.search(rf"(?:^|\s){re.escape(name)}[=\s]'?([^\s']+)", cmd)
    return m.group(1) if m else None


SITES = {
    # profile, extra config files merged over config/config.yaml, GPUs per node
    "frontier": ([], 8, 7),
    "slurm-cuda": (["profiles/slurm-cuda/gpus-per-node.yaml"], 4, 8),
}


@pytest.fixture(scope="module")
def dry_runs(paper_dry_run, tmp_path_factory):
    """`snakemake -n` of the full study with each cluster profile (dummy account), in a copy; the Frontier one
    is the session's paper dry run (tests/conftest.py)."""
    out = {"frontier": paper_dry_run}
    for site in SITES:
        if site in out:
            continue
        wd = _copy_workflow(tmp_path_factory.mktemp(f"dry-{site}"))
        env = {**os.environ, "SBATCH_ACCOUNT": "dummy123", "GEOFM_ORION": str(wd / "orion")}
        p = subprocess.run([*SNAKEMAKE, "-n", "--profile", f"profiles/{site}"], cwd=wd, env=env,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        out[site] = (wd, p.stdout + p.stderr)
    return out


def _study_config(site: str) -> dict:
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for extra in SITES[site][0]:
        cfg = _merge(cfg, yaml.safe_load((REPO / extra).read_text()))
    return cfg


@pytest.mark.parametrize("site", list(SITES))
def test_cluster_dry_run_lists_every_job(dry_runs, site):
    _, text = dry_runs[site]
    cfg = _study_config(site)
    used = {cfg["pretrain_dataset"], *cfg["eval_datasets"]}
    used |= {cfg["datasets"][d]["from"] for d in used if cfg["datasets"][d].get("source") == "derived"}
    from geofm.config import validate
    from geofm.schedule import cell_paths_of, profile_bundles

    bundles = profile_bundles(validate(cfg), cell_paths_of(validate(cfg)))
    expected = {
        "download": len(used), "tile": len(used), "pretrain": len(cfg["models"]),
        "evaluate": len(cfg["models"]),  # one job per model: every protocol x dataset
        # one job per model x node count, holding only the cells the memory model finds feasible
        **{"profile_" + b.name.replace("-", "_"): 1 for b in bundles},
        "plan": 1, "figures": 1, "all": 1,
    }
    expected["total"] = sum(expected.values())
    assert _job_stats(text) == expected
    # the base grid + its variants, less the cells the memory model rules out (README: Impossible cells)
    pr = cfg["profile"]
    feasible = sum(1 for v in [{}, *(pr.get("variants") or {}).values()]
                   for m in v.get("models", pr["models"]) for s in v.get("strategies", pr["strategies"])
                   for n in v.get("nodes", pr["nodes"]) if cell_feasibility(validate(cfg), m, s, n, v)[0] == "ok")
    assert sum(len(b.cells) for b in bundles) == feasible and len(bundles) == 49
    # every batch job of the study at once stays under Frontier's 100 queued jobs per user
    assert expected["total"] - expected["download"] - expected["figures"] - expected["all"] <= 100
    # the account comes from the environment, never from the repository
    jobs = _parse_dry_run(text)
    assert {j["resources"].get("slurm_account") for j in jobs if j["rule"] not in ("download", "figures", "all")} \
        == {"dummy123"}


@pytest.mark.parametrize("site", list(SITES))
def test_cluster_sbatch_matches_config(dry_runs, site):
    _, text = dry_runs[site]
    cfg = _study_config(site)
    prof = yaml.safe_load((REPO / f"profiles/{site}/config.v8+.yaml").read_text())
    gpus_per_node, cpus = SITES[site][1], SITES[site][2]
    jobs = _parse_dry_run(text)

    from geofm.config import evaluate_settings, pretrain_settings, validate
    from geofm.schedule import cell_paths_of, profile_bundles

    vcfg = validate(cfg)
    assert not any("runtime" in r for r in prof.get("set-resources", {}).values())  # the config's runtime wins

    def check_multi(job, nodes, per_node, minutes):
        cmd = _sbatch(job)
        assert _flag(cmd, "--nodes") == str(nodes), cmd
        if per_node > 1:
            assert _flag(cmd, "--ntasks-per-node") == str(per_node), cmd
            assert _flag(cmd, "--ntasks") is None, cmd
        else:
            assert _flag(cmd, "--ntasks") == str(nodes), cmd
        assert _flag(cmd, "--gpus-per-task") == "1" and "--gpu-bind=closest" in cmd, cmd
        assert _flag(cmd, "--cpus-per-task") == str(cpus), cmd
        assert _flag(cmd, "-t") == str(minutes), cmd
        assert _flag(cmd, "-A") == "dummy123" and _flag(cmd, "-p") == job["resources"]["slurm_partition"], cmd
        assert "--requeue" in cmd and "--ntasks-per-gpu" not in cmd and "--gpus " not in cmd, cmd
        # srun inside the job gets the same geometry explicitly, one GPU per task
        m = re.search(r'MPI="([^"]*)"', job["shell"])
        assert m and m.group(1).startswith("srun ") and "--gpus-per-task=1" in m.group(1), job["shell"]
        assert f"--nodes={nodes} --ntasks={nodes * per_node} --ntasks-per-node={per_node}}}" in job["shell"]
        assert f'SITE_ENV="envs/{site}/env.sh"' in job["shell"]
        return cmd

    pre = [j for j in jobs if j["rule"] == "pretrain"]
    assert {j["wildcards"]["model"] for j in pre} == set(cfg["models"])
    for job in pre:  # each model its own nodes and walltime (pretrain.per_model)
        p = pretrain_settings(vcfg, job["wildcards"]["model"])
        assert p["procs_per_node"] == gpus_per_node
        cmd = check_multi(job, p["nodes"], p["procs_per_node"], p["runtime_min"])
        if site == "frontier":
            assert _flag(cmd, "--mem") is None  # whole nodes
            assert "--signal=USR1@300" in cmd and "--network=disable_rdzv_get" in cmd, cmd
    assert len({pretrain_settings(vcfg, m)["nodes"] for m in cfg["models"]}) > 1

    prof_jobs = {j["rule"]: j for j in jobs if j["rule"].startswith("profile_")}
    bundles = profile_bundles(vcfg, cell_paths_of(vcfg))
    for b in (bundles[0], bundles[-1], max(bundles, key=lambda b: len(b.cells))):
        job = prof_jobs["profile_" + b.name.replace("-", "_")]
        check_multi(job, b.nodes, cfg["profile"]["procs_per_node"], b.runtime_min)
        assert "profile-bundle" in job["shell"] and all(c.path.split("profile/", 1)[1] in job["shell"]
                                                         for c in b.cells)

    for ev in (j for j in jobs if j["rule"] == "evaluate"):  # several ranks, geometry per model
        e = evaluate_settings(vcfg, ev["wildcards"]["model"])
        check_multi(ev, e["nodes"], e["procs_per_node"], e["runtime_min"])
        assert "evaluate-bundle" in ev["shell"]

    # download and figures stay on the login node (a dry run does not mark local rules; the Slurm test
    # below checks that they are never submitted)
    local = " ".join(re.findall(r"^localrules:(.*)$", "\n".join(
        f.read_text() for f in (REPO / "workflow/rules").glob("*.smk")), re.M))
    assert {"download", "figures"} <= set(re.split(r"[\s,]+", local.strip()))


def test_local_profile_unaffected():
    """The demo under profiles/local: no srun, no site script, the CLI starts its own ranks."""
    p = subprocess.run([*SNAKEMAKE, "-n", "--forceall", "--profile", "profiles/local"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = _parse_dry_run(p.stdout + p.stderr)
    pre = next(j for j in jobs if j["rule"] == "pretrain")
    assert 'MPI=""' in pre["shell"] and 'SITE_ENV=""' in pre["shell"]


# ----------------------------------------------------------------------------- the real Slurm run
def _slurm_reason() -> str | None:
    """Why the Slurm test cannot run here, or None."""
    for tool in ("sbatch", "srun", "sacct", "sinfo", "scontrol"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found: no Slurm client here (start one with: sudo scripts/start-test-slurm.sh)"

    def run(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            return SimpleNamespace(returncode=1, stdout="", stderr="timeout")

    if run("scontrol", "ping").returncode != 0 or "UP" not in run("scontrol", "ping").stdout:
        return "no Slurm controller answering `scontrol ping` (start one: sudo scripts/start-test-slurm.sh)"
    nodes = run("sinfo", "-h", "-N", "-p", "batch", "-o", "%N %T").stdout.split("\n")
    ok = {ln.split()[0] for ln in nodes if ln.strip() and re.match(r"(idle|mixed|allocated|planned)", ln.split()[1])}
    if len(ok) < 2:
        return f"partition 'batch' needs 2 usable nodes (scripts/start-test-slurm.sh makes n1, n2): {nodes}"
    if run("sacct", "-n", "-X", "-S", "now-1minute").returncode != 0:
        return "sacct does not work (no slurmdbd): the Slurm executor's status checks need it"
    return None


# A tiny study shaped like the paper's: two models (each its own pretraining geometry, evaluated on 2 ranks,
# one with its encoder sharded), two strategies over 1 and 2 nodes plus a variant (5 profile cells in 2
# bundles: model x node count), under the local cluster's limits (QOS: 100 queued jobs per user,
# partition time limit): every job's walltime inside it, the whole study far below the submit limit.
TINY = """
results: results
resources: resources
seed: 0
device: cpu
image_size: 16
pretrain_dataset: demo_scenes
eval_datasets: [demo_landcover]
models: [test_micro, demo_tiny]
scheduler:
  max_submissions: 100
  walltime_bins: [{max_nodes: 2, max_min: 120}]
datasets:
  demo_scenes: {kind: scenes, source: synthetic, format: geotiff_scenes, n_scenes: 2, size: 256, bands: 3,
                tile_size: 16, stride: 16, min_valid_fraction: 0.9, split_block: 64}
  demo_landcover: {kind: classification, source: derived, from: demo_scenes, format: derived_landcover,
                   tile_size: 16, train_ratio: 0.5, min_purity: 0.9, max_per_class: 40}
pretrain: {steps: 5, batch_size: 8, lr: 1.0e-3, warmup_steps: 1, weight_decay: 0.05, mask_ratio: 0.75,
           norm_pix_loss: false, decoder_dim: 16, decoder_depth: 1, decoder_heads: 2, strategy: NO_SHARD,
           nodes: 2, procs_per_node: 1, precision: fp32, checkpoint_every: 2, log_every: 1, runtime_min: 10,
           retries: 1, per_model: {demo_tiny: {nodes: 1, procs_per_node: 2, runtime_min: 8}}}
evaluate: {protocols: [knn, linprobe], bundle: true, batch_size: 64, linprobe_epochs: 2, knn_k: 5, knn_temperature: 0.07,
           runtime_min: 10, nodes: 1, procs_per_node: 2, per_model: {demo_tiny: {shard_encoder: true}}}
profile: {models: [test_micro], strategies: [NO_SHARD, FULL_SHARD], nodes: [1, 2], procs_per_node: 2,
          batch_size: 4, steps: 2, warmup_steps: 1, precision: fp32, data: synthetic, runtime_min: 5,
          variants: {noprefetch: {backward_prefetch: 0, models: [test_micro], strategies: [FULL_SHARD], nodes: [2]}}}
"""


def _sacct(workdir: Path, since: str) -> list[dict]:
    out = subprocess.run(["sacct", "-a", "-P", "-n", "-S", since, "-o",
                          "JobID,State,NNodes,NTasks,NodeList,WorkDir%300,Comment%200"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    rows = [dict(zip(("id", "state", "nnodes", "ntasks", "nodes", "workdir", "comment"), ln.split("|")))
            for ln in out.splitlines() if ln.strip()]
    jobs = {r["id"]: r for r in rows if "." not in r["id"] and r["workdir"].rstrip("/") == str(workdir)}
    for r in rows:
        jid, _, step = r["id"].partition(".")
        if step and jid in jobs:
            jobs[jid].setdefault("steps", {})[step] = r
    return list(jobs.values())


@pytest.mark.slurm
@pytest.mark.slow
def test_paper_shaped_study_through_slurm(tmp_path):
    reason = _slurm_reason()
    if reason:
        pytest.skip(reason)
    # the cluster carries Frontier's limits that matter here
    qos = subprocess.run(["sacctmgr", "-n", "-P", "show", "qos", "where", "name=normal", "format=MaxSubmitPU"],
                         capture_output=True, text=True, timeout=30).stdout.split()
    part = subprocess.run(["scontrol", "show", "partition", "batch"], capture_output=True, text=True, timeout=30).stdout
    enforce = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    if qos != ["100"] or "MaxTime=02:00:00" not in part or "limits" not in enforce:
        pytest.skip("the local Slurm lacks the submit/time limits: restart it with scripts/start-test-slurm.sh")
    too_long = subprocess.run(["sbatch", "--parsable", "-t", "121", "-o", "/dev/null", "--wrap", "true"],
                              capture_output=True, text=True, timeout=30)
    assert too_long.returncode != 0  # over the partition's limit: rejected at submission, as on Frontier

    from geofm.config import validate
    from geofm.schedule import cell_paths_of, study_schedule

    wd = _copy_workflow(tmp_path / "wf")
    (wd / "tiny.yaml").write_text(TINY)
    cfg = validate(yaml.safe_load(TINY))
    plan = study_schedule(cfg, cell_paths_of(cfg))
    assert plan["problems"] == [] and plan["profile_cells"] == 5
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    t0 = time.time()
    # SIGINT, not SIGTERM: Snakemake then cancels its Slurm jobs and stops
    p = subprocess.run(["timeout", "-s", "INT", "540", *SNAKEMAKE, "--profile", "profiles/test-slurm",
                        "--configfile", "tiny.yaml"], cwd=wd, capture_output=True, text=True, timeout=600)
    log = p.stdout + p.stderr
    if p.returncode != 0:
        tails = "".join(f"\n--- {f}\n{f.read_text()[-1500:]}" for f in sorted((wd / "results/logs").rglob("*.log")))
        pytest.fail(f"snakemake exited {p.returncode} after {time.time() - t0:.0f}s\n{log[-4000:]}{tails}")
    res = wd / "results"

    # every non-local job went through sbatch and completed; download/figures ran locally
    jobs = _sacct(wd, since)
    by_rule: dict[str, list] = {}
    for j in jobs:
        m = re.match(r"rule_(\w+?)(?:_wildcards|$)", j["comment"])
        by_rule.setdefault(m.group(1) if m else j["comment"], []).append(j)
    assert {j["state"] for j in jobs} == {"COMPLETED"}, jobs
    bundles = sorted(r for r in by_rule if r.startswith("profile_"))
    assert bundles == ["profile_test_micro_1n", "profile_test_micro_2n"], sorted(by_rule)
    assert sorted(set(by_rule) - set(bundles)) == ["evaluate", "pretrain", "tile"], sorted(by_rule)
    # as many submissions as planned (no retry was needed), far under the QOS limit
    assert len(jobs) == plan["submissions"] - sum(j["submissions"] - 1 for j in plan["jobs"]) <= 100
    assert len(by_rule["tile"]) == 2 and len(by_rule["evaluate"]) == 2 and len(by_rule["pretrain"]) == 2
    # pretraining: each model its own geometry
    pre = {j["nnodes"]: j for j in by_rule["pretrain"]}
    assert sorted(pre) == ["1", "2"] and pre["2"]["nodes"] == "n[1-2]", pre
    srun_steps = [s for k, s in pre["2"].get("steps", {}).items() if k.isdigit() and s["ntasks"] == "2"]
    assert srun_steps and srun_steps[0]["nodes"] == "n[1-2]", pre  # one rank on each node
    # one batch job per model x node count, one srun step per cell (test_micro x 2 nodes: 2 + 1 variant)
    (b,) = by_rule["profile_test_micro_2n"]
    cell_steps = [s for k, s in b.get("steps", {}).items() if k.isdigit() and s["ntasks"] == "4"]
    assert b["nnodes"] == "2" and len(cell_steps) == 3, b  # (+ the site script's one task per node)
    # evaluation: one job per model, each protocol x dataset an srun step of 2 ranks
    for ev in by_rule["evaluate"]:
        steps = [s for k, s in ev.get("steps", {}).items() if k.isdigit()]
        assert ev["nnodes"] == "1" and len(steps) == 2 and all(s["ntasks"] == "2" for s in steps), ev
    # the site script ran and made its node-local directory on both nodes of the 2-node pretrain job
    node_tmp = next(Path("/tmp").glob(f"geofm-*-{pre['2']['id']}"))
    assert {p.name for p in node_tmp.glob(".node-*")} == {".node-n1", ".node-n2"}

    # outputs
    for model, world in (("test_micro", 2), ("demo_tiny", 2)):
        summary = json.loads((res / f"pretrain/{model}/summary.json").read_text())
        assert summary["world_size"] == world and summary["steps"] == 5
        recs = [json.loads(ln) for ln in (res / f"pretrain/{model}/metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in recs] == [1, 2, 3, 4, 5] and all(r["loss"] > 0 for r in recs)
        for proto in ("knn", "linprobe"):
            ev = json.loads((res / f"eval/{proto}/{model}/demo_landcover.json").read_text())
            assert "top1" in ev["random_init"]
            # top-1 is the confusion matrix's diagonal share (the ranks' predictions gathered, none lost)
            cm = [[int(v) for v in ln.split(",")[1:]] for ln in
                  (res / f"eval/{proto}/{model}/demo_landcover.confusion.csv").read_text().splitlines()[1:]]
            assert sum(map(sum, cm)) == ev["pretrained"]["n_test"]
            assert ev["pretrained"]["top1"] == pytest.approx(sum(cm[i][i] for i in range(len(cm))) / sum(map(sum, cm)))
            assert ev["settings"]["world_size"] == 2  # evaluated on 2 ranks
    for cell in cell_paths_of(cfg):
        rec = json.loads((wd / cell).read_text())
        assert rec["status"] == "ok" and rec["world_size"] == 2 * rec["nodes"], (cell, rec.get("status"))
    for name in ("loss_curves", "accuracy_vs_size", "throughput_per_strategy"):
        assert (res / f"figures/{name}.png").stat().st_size > 1000
    assert (res / "tables/profile.csv").exists()
    print(f"slurm study: {time.time() - t0:.0f}s, {len(jobs)} sbatch jobs "
          f"{sorted((r, len(v)) for r, v in by_rule.items())}")
