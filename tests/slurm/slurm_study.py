"""The paper-shaped study through the local Slurm, started in the background at the start of the session.

Most of its wall time is waiting: each sbatch job is seen finished at the Slurm executor's next status
check (snakemake-executor-plugin-slurm 2.8.0 ``check_active_jobs``: the first check after
``slurm-init-seconds-before-status-checks``, then 10 s longer after each check that finds nothing finished),
and the DAG is five jobs deep. The tests' own work uses the CPUs meanwhile (the study at nice 19, its Slurm
sessions' scheduling groups too: ``_lower_job_sessions``): ``conftest.py`` starts the study when ``test_paper_shaped_study_through_slurm`` is among the collected tests, and that test waits for it
and checks what it did (sacct, the outputs). Outside pytest: ``start(dir).wait()``.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace


REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
COPY = ["Snakefile", "workflow", "config", "profiles", "envs"]
# snakemake gets SIGINT then (it cancels its Slurm jobs and stops). At nice 19 the study runs on the CPU the
# other tests leave idle: measured 9 min in a suite of 9 min 50 s on 2 cores (it finishes before the last test,
# which waits for it), so the bound is generous; the jobs' walltimes below leave the same room.
STUDY_TIMEOUT_S = 1200
# Its jobs' CPU work runs at the lowest priority, on what the tests leave idle: sbatch inherits snakemake's
# nice value and the jobs' tasks the submitting command's (slurm.conf PropagatePrioProcess=1, set by
# scripts/start-test-slurm.sh; slurm.conf(5)); without it they run at slurmd's and merely contend.
NICE = ["nice", "-n", "19"]


def _lower_job_sessions(stop: threading.Event, nice: int = 19, period_s: float = 0.25) -> None:
    """Give the study's Slurm job sessions the study's nice value as a scheduling group.

    slurmstepd starts each job step and each task in a session of its own (setsid), and where the kernel
    groups sessions (autogroup, /proc/sys/kernel/sched_autogroup_enabled = 1; sched(7), "The autogroup
    feature") it shares the CPU between the groups first and looks at nice values only inside a group:
    measured here, six of the study's tasks at nice 19, each in its own session, left a test's process at nice 0
    a quarter to half a core. A group has a nice value of its own (/proc/PID/autogroup, which a process may
    raise for its own user's groups): set it to ``nice`` for every session of ours whose processes run at
    that nice value, except the test session's own group. Without autogroup the files are absent and
    nothing is done."""
    uid = os.getuid()
    try:
        own = Path("/proc/self/autogroup").read_text().partition(" ")[0]
    except OSError:
        return
    done: set[str] = {own}
    while not stop.wait(period_s):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid != uid or os.getpriority(os.PRIO_PROCESS, int(entry.name)) < nice:
                    continue
                ag = Path(entry.path, "autogroup")
                group = ag.read_text().partition(" ")[0]
                if group and group not in done:
                    ag.write_text(str(nice))
                    done.add(group)
            except OSError:  # gone meanwhile, or not ours to change
                continue


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
           nodes: 2, procs_per_node: 1, precision: fp32, checkpoint_every: 2, log_every: 1, runtime_min: 20,
           retries: 1, per_model: {demo_tiny: {nodes: 1, procs_per_node: 2, runtime_min: 15}}}
evaluate: {protocols: [knn, linprobe], bundle: true, batch_size: 64, linprobe_epochs: 2, knn_k: 5, knn_temperature: 0.07,
           runtime_min: 20, nodes: 1, procs_per_node: 2, per_model: {demo_tiny: {shard_encoder: true}}}
profile: {models: [test_micro], strategies: [NO_SHARD, FULL_SHARD], nodes: [1, 2], procs_per_node: 2,
          batch_size: 4, steps: 2, warmup_steps: 1, precision: fp32, data: synthetic, runtime_min: 10,
          variants: {noprefetch: {backward_prefetch: 0, models: [test_micro], strategies: [FULL_SHARD], nodes: [2]}}}
"""


def sacct_jobs(workdir: Path, since: str) -> list[dict]:
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


class Study:
    """One run of TINY through ``profiles/test-slurm`` in ``wd``: either ``skip`` (why it cannot run here) or a
    running snakemake; ``wait()`` returns (returncode, log)."""

    def __init__(self, wd: Path):
        self.wd, self.skip, self.proc, self.result = wd, None, None, None
        self.too_long_rejected = None
        self._quiet = threading.Event()

    def begin(self) -> "Study":
        reason = _slurm_reason()
        if reason:
            self.skip = reason
            return self
        # the cluster carries Frontier's limits that matter here
        run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=30)  # noqa: E731
        qos = run("sacctmgr", "-n", "-P", "show", "qos", "where", "name=normal", "format=MaxSubmitPU").stdout.split()
        part = run("scontrol", "show", "partition", "batch").stdout
        enforce = run("scontrol", "show", "config").stdout
        if qos != ["100"] or "MaxTime=02:00:00" not in part or "limits" not in enforce:
            self.skip = "the local Slurm lacks the submit/time limits: restart it with scripts/start-test-slurm.sh"
            return self
        # over the partition's limit: rejected at submission, as on Frontier
        self.too_long_rejected = run("sbatch", "--parsable", "-t", "121", "-o", "/dev/null", "--wrap", "true").returncode != 0
        _copy_workflow(self.wd)
        (self.wd / "tiny.yaml").write_text(TINY)
        self.since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
        self.t0 = time.time()
        self.log_path = self.wd / "snakemake.out"
        with open(self.log_path, "w") as log:
            # SIGINT, not SIGTERM: Snakemake then cancels its Slurm jobs and stops
            self.proc = subprocess.Popen([*NICE, "timeout", "-s", "INT", str(STUDY_TIMEOUT_S), *SNAKEMAKE, "--profile",
                                          "profiles/test-slurm", "--configfile", "tiny.yaml"], cwd=self.wd,
                                         stdout=log, stderr=subprocess.STDOUT)
        threading.Thread(target=_lower_job_sessions, args=(self._quiet,), daemon=True).start()
        return self

    def wait(self) -> tuple[int, str]:
        if self.result is None:
            rc = self.proc.wait(timeout=STUDY_TIMEOUT_S + 60)
            self._quiet.set()
            self.result = (rc, self.log_path.read_text(errors="replace"))
            self.seconds = time.time() - self.t0
        return self.result

    def stop(self) -> None:
        """Interrupt a study still running (the session ended first): snakemake cancels its jobs."""
        self._quiet.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start(wd: Path) -> Study:
    return Study(Path(wd)).begin()
