"""The walltime signal: SIGUSR1 (sbatch --signal=USR1@s) or SIGTERM mid-run writes a checkpoint at the
current step on every rank and exits 75; the next run resumes from that step to the same losses."""
import json
import signal
import time

import psutil
import pytest

from enginelib import RESUME_RUN, WORKER, losses, run_ranks
from geofm.distributed.checkpoint import complete_steps


def _wait_for_step(out, step, proc, timeout=120):
    path = out / "run" / "metrics.jsonl"
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        if path.exists() and sum(1 for ln in path.read_text().splitlines() if ln.strip()) >= step:
            return
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.05)


@pytest.mark.slow
def test_usr1_to_one_rank_checkpoints_all_and_resumes_to_same_losses(resume_reference, tmp_path):
    sig = signal.SIGUSR1
    cfg = {**RESUME_RUN, "checkpoint_every": 0}  # no periodic checkpoint
    steps_total = cfg["steps"]
    out = tmp_path / "out"
    proc = run_ranks(2, {"mode": "train", "cfg": cfg, "out": str(out)}, background=True)
    _wait_for_step(out, 5, proc)
    ranks = [p for p in psutil.Process(proc.pid).children(recursive=True) if str(WORKER) in " ".join(p.cmdline())]
    assert len(ranks) == 2
    ranks[-1].send_signal(sig)  # one rank only: the other must stop at the same step
    text = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode != 0, text[-2000:]
    assert "walltime stop" in text and "exitcode" in text and "75" in text, text[-2000:]
    steps = complete_steps(out / "checkpoints")
    assert len(steps) == 1 and 5 <= steps[0] < steps_total, (steps, text[-2000:])
    assert not (out / "encoder.pt").exists()

    run_ranks(2, {"mode": "train", "cfg": cfg, "out": str(out)})  # the next chunk resumes there
    assert json.loads((out / "summary.json").read_text())["resumed_from"] == steps[0]
    a, b = resume_reference, losses(out)  # same losses as a run never stopped
    assert sorted(b) == list(range(1, steps_total + 1))
    assert b == a


@pytest.mark.slow
def test_sigterm_one_process_checkpoints_and_exits_75(tiny, tmp_path):
    """Slurm's SIGTERM at the walltime (or scancel) is handled the same way, without torchrun."""
    out = tmp_path / "out"
    proc = run_ranks(1, {"mode": "train", "cfg": {**tiny, "steps": 400, "checkpoint_every": 0}, "out": str(out)},
                     background=True)
    _wait_for_step(out, 3, proc)
    proc.send_signal(signal.SIGTERM)
    text = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 75, text[-2000:]
    steps = complete_steps(out / "checkpoints")
    assert len(steps) == 1 and 3 <= steps[0] < 400, (steps, text[-2000:])
