"""Helpers of the engine tests: run ranks under torchrun, read losses."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path


WORKER = Path(__file__).with_name("worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(nprocs: int, payload: dict, timeout: int = 300, background: bool = False):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    if nprocs == 1:
        cmd = [sys.executable, str(WORKER), json.dumps(payload)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nprocs}", "--master-addr=127.0.0.1",
               f"--master-port={free_port()}", str(WORKER), json.dumps(payload)]
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode:
        raise AssertionError(f"{cmd[-1][:200]} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def losses(out_dir) -> dict[int, float]:
    recs = [json.loads(ln) for ln in Path(out_dir, "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {r["step"]: r["loss"] for r in recs}


TINY = dict(model="test_micro", image_size=16, data="synthetic", batch_size=8, decoder_dim=32, decoder_depth=1,
            decoder_heads=2, precision="fp32", log_every=1, warmup_steps=2, augment=False, device="cpu")


# the 2-rank FULL_SHARD run the resume tests continue (SIGKILL, walltime signal); its checkpoint cadence is not
# part of the trajectory (geofm.train.fingerprint), so one uninterrupted run (conftest's resume_reference) is
# the reference for both
RESUME_RUN = {**TINY, "steps": 40, "strategy": "FULL_SHARD"}
