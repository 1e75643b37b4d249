"""The workflow under Slurm.

1. Without Slurm: a dry run of config/config.yaml with profiles/frontier (and profiles/slurm-cuda) and a
   dummy account lists every job of the study, and the sbatch command that
   snakemake-executor-plugin-slurm builds for a pretrain / profile / evaluate job (its own
   ``get_submit_command``, fed the resources the dry run prints) has the nodes, tasks, GPUs, CPUs and
   time limit that the config and the profile ask for.
2. With a running Slurm (scripts/start-test-slurm.sh: nodes n1, n2, partition batch, slurmdbd): the tiny
   demo DAG runs through the slurm executor; pretraining is 2 srun tasks over the 2 nodes (gloo), the
   profile job 2 tasks on 1 node; sacct shows the sbatch jobs; the outputs are checked. The study starts in
   the background as the session begins (conftest.py, slurm_study.py) and this test waits for it.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from geofm.perf.plan import cell_feasibility
from slurm_study import REPO, SNAKEMAKE, TINY, _copy_workflow, sacct_jobs



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


@pytest.mark.slurm
@pytest.mark.slow
def test_paper_shaped_study_through_slurm(slurm_study_run):
    """slurm_study.TINY through profiles/test-slurm on the local cluster (started in the background as the
    session began: conftest.py)."""
    study = slurm_study_run
    if study.skip:
        pytest.skip(study.skip)
    assert study.too_long_rejected  # over the partition's time limit: rejected at submission, as on Frontier

    from geofm.config import validate
    from geofm.schedule import cell_paths_of, study_schedule

    cfg = validate(yaml.safe_load(TINY))
    plan = study_schedule(cfg, cell_paths_of(cfg))
    assert plan["problems"] == [] and plan["profile_cells"] == 5
    wd = study.wd
    rc, log = study.wait()
    if rc != 0:
        tails = "".join(f"\n--- {f}\n{f.read_text()[-1500:]}" for f in sorted((wd / "results/logs").rglob("*.log")))
        pytest.fail(f"snakemake exited {rc} after {study.seconds:.0f}s\n{log[-4000:]}{tails}")
    res = wd / "results"

    # every non-local job went through sbatch and completed; download/figures ran locally
    jobs = sacct_jobs(wd, study.since)
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
    print(f"slurm study: {study.seconds:.0f}s, {len(jobs)} sbatch jobs "
          f"{sorted((r, len(v)) for r, v in by_rule.items())}")


def test_background_sessions_get_the_studys_nice_as_a_group():
    """slurm_study._lower_job_sessions: a process at nice 19 in a session of its own (as slurmstepd starts a job
    step) gets its session group's nice set to 19; a nice-0 session and the test's own group are left alone."""
    import sys
    import threading
    import time

    from slurm_study import _lower_job_sessions

    if not Path("/proc/self/autogroup").exists():
        pytest.skip("no autogroup scheduling here (/proc/self/autogroup absent): nothing to lower")
    # The test's own group may be the root one, which the file shows as empty (kernel/sched/autogroup.c,
    # proc_sched_autogroup_show_task prints only a task_group_is_autogroup group): so on CI, whose suite runs
    # under an init that never started a session. New sessions get a group of their own all the same.
    own = Path("/proc/self/autogroup").read_text()
    sleep = [sys.executable, "-c", "import time; time.sleep(30)"]
    niced = subprocess.Popen(["nice", "-n", "19", *sleep], start_new_session=True)
    plain = subprocess.Popen(sleep, start_new_session=True)
    stop = threading.Event()
    t = threading.Thread(target=_lower_job_sessions, args=(stop,), daemon=True)
    try:
        def group(p):
            return Path(f"/proc/{p.pid}/autogroup").read_text().split()

        if not (group(niced) and group(plain)):
            pytest.skip("new sessions get no autogroup of their own here: nothing to lower")
        assert group(niced)[-1] == group(plain)[-1] == "0" and group(niced)[0] != own.partition(" ")[0]
        t.start()
        deadline = time.monotonic() + 10
        while group(niced)[-1] != "19" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert group(niced)[-1] == "19"
        assert group(plain)[-1] == "0" and Path("/proc/self/autogroup").read_text() == own
    finally:
        stop.set()
        if t.is_alive():
            t.join(timeout=5)
        niced.kill()
        plain.kill()
