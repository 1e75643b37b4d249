"""Run several cells (profile cells, evaluation cells) one after another inside one batch job.

Each cell is its own command (under the job's launcher: ``srun --nodes=N --ntasks=... `` on a cluster,
nothing locally, where the CLI starts its own ranks), with its own log and output file, and a time budget.
A cell that fails, or runs over its budget (its process group is terminated, then killed), gets its own
record ``{..., "status": "failed: <reason>"}`` written atomically to its output file and the bundle goes
on with the next cell: one cell never takes its siblings down, and the batch job ends with every output
file present. The bundle's exit status is non-zero only when a cell left no output at all.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common.io import write_json


@dataclass
class BundleCell:
    argv: list[str]  # geofm subcommand and its arguments (without the launcher)
    out: str
    log: str
    record: dict = field(default_factory=dict)  # identity of the cell, copied into a failure record


def _tail(path: Path, n: int = 6) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(ln.strip() for ln in lines[-n:])[-600:]


def write_failed(out: str | os.PathLike, record: dict, reason: str) -> None:
    write_json(out, {**record, "status": f"failed: {reason}"})


def _stop(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM to the cell's process group (srun forwards it to the step's tasks), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_cell(cell: BundleCell, launch: str = "", timeout_s: float | None = None) -> str:
    """Run one cell; returns "ok" or the failure reason (already written to ``cell.out``)."""
    cmd = [*shlex.split(launch), sys.executable, "-m", "geofm.cli", *cell.argv]
    Path(cell.log).parent.mkdir(parents=True, exist_ok=True)
    out = Path(cell.out)
    if out.exists():  # a stale result of an earlier run must not pass for this one
        out.unlink()
    t0 = time.monotonic()
    with open(cell.log, "w") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout_s)
            reason = None if rc == 0 else f"exit status {rc}"
        except subprocess.TimeoutExpired:
            _stop(proc)
            reason = f"over its time budget of {timeout_s:.0f} s"
        except BaseException:  # the bundle itself is being stopped: take the cell down with it
            _stop(proc, 5.0)
            raise
    if reason is None and out.exists():
        return "ok"
    if reason is None:
        reason = "exited 0 without writing its output"
    write_failed(out, cell.record, f"{reason} after {time.monotonic() - t0:.0f} s; log {cell.log}: {_tail(Path(cell.log))}")
    return reason


def run_bundle(cells: list[BundleCell], launch: str = "", timeout_s: float | None = None) -> dict:
    """Run every cell in order; returns {output path: "ok" | failure reason}."""
    done = {}
    for cell in cells:
        status = run_cell(cell, launch, timeout_s)
        done[cell.out] = status
        print(f"[bundle] {cell.out}: {status}", flush=True)
    return done
