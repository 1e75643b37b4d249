"""What a rerun of the finished tiny study plans when the config, the checkout's place or a --forcerun changes.

Most checks are dry runs (``-n``) of the one finished study (conftest ``study``); the ones that run jobs do
so on a copy of it.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_workflow import ROOT, make_project, snakemake

pytestmark = pytest.mark.slow


def planned(res) -> list[tuple[str, str]]:
    """(rule, first output) of every job a dry run plans."""
    jobs, rule = [], None
    for line in res.stdout.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if m:
            rule = m.group(1)
        elif rule and line.strip().startswith("output:"):
            jobs.append((rule, line.split("output:", 1)[1].split(",")[0].strip()))
            rule = None
        elif rule and line.strip().startswith("jobid:") and rule == "all":
            jobs.append(("all", ""))
            rule = None
    return jobs


def write_config(proj: Path, name: str, **changes) -> str:
    """tiny.yaml with ``changes`` ({"pretrain.steps": 8}) as ``name`` in the project."""
    cfg = yaml.safe_load((proj / "tiny.yaml").read_text())
    for path, value in changes.items():
        node = cfg
        *head, last = path.split(".")
        for part in head:
            node = node[part]
        node[last] = value
    (proj / name).write_text(yaml.safe_dump(cfg))
    return name


def copy_study(study: Path, dest: Path) -> Path:
    """The finished checkout copied elsewhere (file times kept, like cp -a / rsync -a)."""
    shutil.copytree(study, dest, symlinks=True)
    return dest


def test_unchanged_config_plans_nothing(study):
    res = snakemake(study, "--configfile", "tiny.yaml", "-n")
    assert "Nothing to be done" in res.stdout + res.stderr and planned(res) == []


def test_pretrain_steps_reruns_pretraining_and_what_depends_on_it(study):
    name = write_config(study, "steps.yaml", **{"pretrain.steps": 8})
    for args in (["--configfile", name], ["--configfile", "tiny.yaml", "--config", 'pretrain={"steps": 8}']):
        jobs = planned(snakemake(study, *args, "-n"))
        rules = sorted(r for r, _ in jobs)
        # geofm plan prices the pretraining (its node-hours), so it reruns too
        assert rules == ["all", "evaluate", "evaluate", "evaluate", "evaluate", "figures", "plan", "pretrain",
                         "pretrain"], args
    res = snakemake(study, "--configfile", name, "-n", "--list-changes", "params")
    assert {"results/pretrain/test_micro/encoder.pt", "results/pretrain/demo_tiny/encoder.pt"} <= set(res.stdout.split())
    # evaluation reruns as a consequence (its input changes), not for its params. (Not read from
    # --list-changes: Snakemake 9 lists the last output of every multi-output job there, changed or not,
    # persistence.ParamsChange.__or__ keeping an empty change's files.)
    blocks = re.split(r"\n(?=(?:local)?rule \w+:)", snakemake(study, "--configfile", name, "-n").stdout)
    evals = [b for b in blocks if b.startswith("rule evaluate:")]
    assert len(evals) == 4 and all("reason:" in b and "Params have changed" not in b for b in evals), evals


def test_knn_k_reruns_the_knn_jobs_and_the_figures_only(study):
    # one job per evaluation (evaluate.bundle: false, the default): its params are that evaluation's settings
    name = write_config(study, "knn.yaml", **{"evaluate.knn_k": 3})
    res = snakemake(study, "--configfile", name, "-n")
    assert sorted(planned(res)) == sorted([("all", ""), ("figures", "results/figures/accuracy_vs_size.png"),
                                           ("evaluate", "results/eval/knn/test_micro/demo_landcover.json"),
                                           ("evaluate", "results/eval/knn/demo_tiny/demo_landcover.json")])
    # a per-model setting that changes results reruns that model's evaluations only
    name = write_config(study, "ft.yaml", **{"evaluate.per_model": {"demo_tiny": {"feature_precision": "bf16"}}})
    jobs = planned(snakemake(study, "--configfile", name, "-n"))
    assert sorted(jobs) == sorted([("all", ""), ("figures", "results/figures/accuracy_vs_size.png"),
                                   ("evaluate", "results/eval/knn/demo_tiny/demo_landcover.json"),
                                   ("evaluate", "results/eval/linprobe/demo_tiny/demo_landcover.json")])


def test_a_cell_setting_reruns_the_profile_bundle_holding_it(study):
    # tiny.yaml: test_micro's 1-node cells (base + noprefetch) are one bundle, profile_test_micro_1n
    name = write_config(study, "var.yaml", **{"profile.variants.noprefetch.forward_prefetch": 1})
    rules = sorted(r for r, _ in planned(snakemake(study, "--configfile", name, "-n")))
    assert "profile_test_micro_1n" in rules and not {"pretrain", "evaluate", "tile"} & set(rules), rules
    # (geofm plan reads the profile section too, so it may rerun; nothing else does)
    assert set(rules) <= {"all", "figures", "plan", "profile_test_micro_1n"}, rules


def test_tile_size_reruns_that_datasets_tiles_and_downstream(study):
    name = write_config(study, "tiles.yaml", **{"datasets.demo_landcover.tile_size": 16})
    jobs = planned(snakemake(study, "--configfile", name, "-n"))
    assert ("tile", "results/tiles/demo_landcover/stats.json") in jobs
    assert sorted(r for r, _ in jobs) == ["all"] + ["evaluate"] * 4 + ["figures", "tile"]
    # the pretraining dataset's tiles: its tiling, pretraining, evaluation and figures; not its download
    name = write_config(study, "tiles2.yaml", **{"datasets.demo_scenes.tile_size": 16})
    rules = sorted(r for r, _ in planned(snakemake(study, "--configfile", name, "-n")))
    assert rules == ["all"] + ["evaluate"] * 4 + ["figures", "pretrain", "pretrain", "tile"]


def test_execution_only_settings_rerun_nothing(study):
    name = write_config(study, "exec.yaml", **{"pretrain.checkpoint_every": 3, "pretrain.runtime_min": 7,
                                              "evaluate.runtime_min": 9, "profile.runtime_min": 11,
                                              "pretrain.retries": 2,
                                              "pretrain.per_model": {"demo_tiny": {"runtime_min": 5, "retries": 1}},
                                              "evaluate.per_model": {"demo_tiny": {"runtime_min": 5}},
                                              "scheduler": {"max_submissions": 50}})
    res = snakemake(study, "--configfile", name, "-n")
    assert "Nothing to be done" in res.stdout + res.stderr


def test_pretraining_layout_reruns_the_plan_only(study):
    # geofm plan prices pretraining at its layout (nodes x ranks); pretraining resumes at any world size,
    # so a finished model is not retrained, nor evaluated again
    for n, over in enumerate(({"pretrain.procs_per_node": 2},
                              {"pretrain.per_model": {"test_micro": {"nodes": 2}}})):
        name = write_config(study, f"layout{n}.yaml", **over)
        rules = sorted(r for r, _ in planned(snakemake(study, "--configfile", name, "-n")))
        assert rules == ["all", "figures", "plan"], (over, rules)


def test_copied_checkout_plans_nothing(study, tmp_path):
    moved = copy_study(study, tmp_path / "elsewhere" / "checkout")
    res = snakemake(moved, "--configfile", "tiny.yaml", "-n")
    assert "Nothing to be done" in res.stdout + res.stderr, res.stdout[-3000:]


def test_forcerun_pretrain_retrains_and_protected_encoders_stay(study, tmp_path):
    proj = copy_study(study, tmp_path / "copy")
    target = "results/pretrain/test_micro/encoder.pt"
    first = [json.loads(ln) for ln in (proj / "results/pretrain/test_micro/metrics.jsonl").read_text().splitlines()]
    protect = ["--config", 'pretrain={"protect": true}']
    other = proj / "results/pretrain/demo_tiny/encoder.pt"
    other_stamp = other.stat().st_mtime_ns
    # the target goes before the options: --forcerun, --config and --configfile take any number of values and
    # would swallow it (then the default target runs: every model's pretraining is forced). Snakemake 9.27's
    # snakemake/cli.py: add_argument("--forcerun", nargs="*"), "--config" nargs="*", "--configfile" nargs="+"
    snakemake(proj, target, "--configfile", "tiny.yaml", *protect, "--forcerun", "pretrain")
    assert other.stat().st_mtime_ns == other_stamp  # only the target's pretraining ran
    out = proj / "results/pretrain/test_micro"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] == 0
    log = (proj / "results/logs/pretrain/test_micro.log").read_text()
    assert "training from step 0" in log and re.search(r"step +2/12 ", log)  # it trained: progress lines
    again = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again] == [r["step"] for r in first] and again[0]["step"] <= 2
    assert again[0]["loss"] == pytest.approx(first[0]["loss"], rel=1e-5)  # same config, same trajectory
    aside = [p for p in out.iterdir() if p.name.startswith("checkpoints-aside-")]
    assert len(aside) == 1 and (aside[0] / "step-0000012" / ".complete").exists()
    # provenance of the retrained summary
    prov = summary["provenance"]
    assert prov["config_fingerprint"] == summary["fingerprint"] and prov["software"]["torch"]
    # pretrain.protect: the new encoder is write-protected; a rerun stops before any job instead of replacing it
    enc = proj / target
    assert not enc.stat().st_mode & 0o222
    stamp = enc.stat().st_mtime_ns
    snake = ["-m", "snakemake"]
    if os.geteuid() == 0:
        # Snakemake asks os.access(W_OK), which root always passes: answer as for an ordinary user (the owner's
        # write bit), the case this feature is for
        snake = ["-c", AS_ORDINARY_USER]
    cmd = [sys.executable, *snake, "--cores", "1", target, "--configfile", "tiny.yaml", *protect, "--forcerun",
           "pretrain"]
    res = subprocess.run(cmd, cwd=proj, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "Write-protected output files" in res.stdout + res.stderr, res.stderr[-2000:]
    assert enc.stat().st_mtime_ns == stamp


def test_ready_jobs_run_longest_kind_first(study, tmp_path):
    """On one core, with both encoders (and what was made of them) gone, the jobs start in the order of the rules'
    priorities: every pretraining, then every linear probe, then every kNN. After the first pretraining its
    evaluations are ready beside the second pretraining; without the priorities Snakemake's greedy scheduler
    ranks ready jobs by the bytes of their inputs (snakemake 9.27 scheduling/greedy.py job_reward), so those
    evaluations (the encoder among their inputs) went first, and jobs with the same inputs (a model's linear
    probe and kNN of one dataset) in the order it found them. Locally a 1-core pretraining then runs beside the
    evaluations instead of alone after them, and the longest evaluation does not start last; under Slurm the
    long jobs are submitted first."""
    proj = copy_study(study, tmp_path / "copy")
    # the encoders and what was made from them: Snakemake remakes a missing file only where a target needs it
    for made in ("pretrain", "eval", "tables", "figures"):
        shutil.rmtree(proj / "results" / made)
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "tiny.yaml"]
    res = subprocess.run(cmd, cwd=proj, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    started = []  # (rule, protocol or "") in the order the jobs started
    for line in res.stderr.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if m:
            started.append([m.group(1), ""])
        m = re.match(r"^wildcards: .*protocol=(\w+)", line.strip())
        if m and started:
            started[-1][1] = m.group(1)
    kinds = [f"{rule}:{protocol}" if protocol else rule for rule, protocol in started if rule in ("pretrain", "evaluate")]
    rank = {"pretrain": 0, "evaluate:linprobe": 1, "evaluate:knn": 2}
    assert kinds.count("pretrain") == 2 and kinds.count("evaluate:linprobe") == kinds.count("evaluate:knn") == 2, kinds
    assert [rank[k] for k in kinds] == sorted(rank[k] for k in kinds), kinds


AS_ORDINARY_USER = """
import os, runpy, sys
real = os.access
def access(path, mode, *args, **kw):
    if mode & os.W_OK and os.path.exists(path) and not os.stat(path).st_mode & 0o200:
        return False
    return real(path, mode, *args, **kw)
os.access = access
sys.argv = ["snakemake", *sys.argv[1:]]
runpy.run_module("snakemake", run_name="__main__")
"""


def readme_config_commands() -> list[str]:
    """Every snakemake command line of the README that passes --config (comments after '#' dropped)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith("snakemake ") and re.search(r"--config[ =](?!file)", line):
                out.append(line)
    return out


def test_readme_config_examples_run_as_written(tmp_path):
    lines = readme_config_commands()
    assert len(lines) >= 3, lines
    proj = make_project(tmp_path)
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "snakemake", line
        cmd = [sys.executable, "-m", "snakemake", *argv[1:]]
        if "-n" not in argv and "--dry-run" not in argv:
            cmd.append("-n")
        res = subprocess.run(cmd, cwd=proj, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"{line}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        assert "Job stats" in res.stdout, line


@pytest.mark.parametrize("args, names", [
    (["--config", 'pretrain={"stepz": 50}'], ["pretrain.stepz", "pretrain.steps"]),
    (["--config", 'evaluate={"knn_k": "many"}'], ["evaluate.knn_k", "'many'", "integer >= 1"]),
])
def test_a_bad_key_or_value_stops_in_five_lines(tmp_path, args, names):
    proj = make_project(tmp_path)
    res = snakemake(proj, "--profile", "profiles/local", *args, check=False)
    text = (res.stdout + res.stderr).strip()
    assert res.returncode != 0 and len(text.splitlines()) <= 5, text
    for n in names:
        assert n in text, text
    assert not (proj / "results").exists()


def test_a_misspelt_key_in_a_config_file(tmp_path):
    proj = make_project(tmp_path)
    cfg = yaml.safe_load((proj / "tiny.yaml").read_text())
    cfg["evaluate"]["knn_kk"] = cfg["evaluate"].pop("knn_k")
    (proj / "typo.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(proj, "--configfile", "typo.yaml", check=False)
    text = (res.stdout + res.stderr).strip()
    assert res.returncode != 0 and len(text.splitlines()) <= 5, text
    assert "evaluate.knn_kk" in text and "did you mean evaluate.knn_k?" in text


def test_readme_geofm_commands_run_as_written(tmp_path):
    """The README's `geofm` lines (plan, validation, help) run as written from the checkout's root."""
    lines = sorted({ln for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
                    for ln in (re.sub(r"\s+#.*$", "", x).strip() for x in block.splitlines())
                    if ln.startswith("geofm ")})
    assert any("plan" in ln for ln in lines), lines
    proj = make_project(tmp_path)
    for line in lines:
        res = subprocess.run(shlex.split(line), cwd=proj, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"{line}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    plan = (proj / "plan.csv").read_text().splitlines()
    assert plan[0].startswith("model,") and len(plan) > 100  # one row per cell of the paper's profile grid
