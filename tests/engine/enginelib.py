"""Helpers of the engine tests: run ranks (as processes with torchrun's environment, or under torchrun), read losses."""
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


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_",
                                                                   "LOCAL_WORLD_SIZE", "TORCHELASTIC_"))}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _start_ranks(nprocs: int, argv: list[str], env: dict) -> list[subprocess.Popen]:
    """The ranks as plain processes with torchrun's environment contract (RANK, LOCAL_RANK, WORLD_SIZE,
    LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT; torch/distributed/run.py's module docstring lists what torchrun
    sets for its workers): what geofm.distributed.launch.detect reads, with rank 0 hosting
    the TCP store as under srun. torchrun itself (its agent imports torch first: about 2 s on these machines
    before a rank starts) is kept for the tests of what torchrun does: a signal to one rank, a SIGKILL."""
    port = str(free_port())
    procs = []
    for r in range(nprocs):
        e = {**env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(nprocs), "LOCAL_WORLD_SIZE": str(nprocs),
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen(argv, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True))
    return procs


def _wait_ranks(procs: list[subprocess.Popen], timeout: int) -> tuple[int, str]:
    """Wait for every rank; the first that fails takes the others down (they would otherwise wait in a collective
    until gloo's timeout), as torchrun does. Returns (the first non-zero exit status or 0, the ranks' output)."""
    import signal
    import threading
    import time

    outs = [[] for _ in procs]
    readers = [threading.Thread(target=lambda p=p, o=o: o.append(p.stdout.read()), daemon=True)
               for p, o in zip(procs, outs)]
    for t in readers:
        t.start()
    deadline, rc = time.monotonic() + timeout, 0
    try:
        while True:
            states = [p.poll() for p in procs]  # every rank, each pass: any() would stop at the first running one
            if all(s is not None for s in states):
                break
            failed = [s for s in states if s not in (None, 0)]
            if failed or time.monotonic() > deadline:
                rc = failed[0] if failed else 124
                break
            time.sleep(0.05)
    finally:  # also on an interrupt: the ranks have their own sessions, a terminal's SIGINT does not reach them
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        for t in readers:
            t.join(10)
    rc = rc or next((p.returncode for p in procs if p.returncode), 0)
    return rc, "".join(f"--- rank {r}\n{''.join(o)}" for r, o in enumerate(outs))


def run_ranks(nprocs: int, payload: dict, timeout: int = 300, background: bool = False):
    """Run worker.py as ``nprocs`` ranks: plainly for one, as processes with torchrun's environment for more
    (``_start_ranks``), under torchrun itself with ``background=True`` (returns its Popen: the tests that signal
    or kill ranks and read torchrun's report)."""
    env = _env()
    if nprocs == 1:
        cmd = [sys.executable, str(WORKER), json.dumps(payload)]
    elif background:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nprocs}", "--master-addr=127.0.0.1",
               f"--master-port={free_port()}", str(WORKER), json.dumps(payload)]
    else:
        rc, text = _wait_ranks(_start_ranks(nprocs, [sys.executable, str(WORKER), json.dumps(payload)], env), timeout)
        if rc:
            raise AssertionError(f"{json.dumps(payload)[:200]} failed ({rc}) on {nprocs} ranks:\n{text[-6000:]}")
        return subprocess.CompletedProcess(["worker.py"], rc, text, "")
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
