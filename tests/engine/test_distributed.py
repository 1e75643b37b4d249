"""Two gloo processes on CPU: every strategy matches one process; kill/resume; 2→1 resume; meta init."""
import json
from pathlib import Path

import pytest

from enginelib import RESUME_RUN, losses, run_ranks

STRATEGIES = ["DDP", "NO_SHARD", "SHARD_GRAD_OP", "FULL_SHARD", "HYBRID_1GPU", "HYBRID_2GPUs"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    from enginelib import TINY

    out = tmp_path_factory.mktemp("single")
    run_ranks(1, {"mode": "train", "cfg": {**TINY, "steps": 5, "strategy": "NO_SHARD"}, "out": str(out)})
    return losses(out)


# What each strategy must do to the model pretraining builds on 2 ranks (torch 2.14 FSDP2: fully_shard on a 1-D
# mesh shards every parameter over it; on a 2-D (replicate, shard) mesh it replicates over dim 0 and shards over
# dim 1; reshard_after_forward=False keeps the gathered parameters from forward to backward): the wrapper, the
# parameters' mesh, whether each rank holds half the parameters, and FSDP2 all-gathers per step per FSDP group
# (a block or the root): 1 (forward only) or 2 (gathered again for backward).
LAYOUT = {
    "DDP": ("DistributedDataParallel", None, False, 0),
    "NO_SHARD": ("FSDPMAE", [[2, 1]], False, 0),
    "HYBRID_1GPU": ("FSDPMAE", [[2, 1]], False, 0),
    "SHARD_GRAD_OP": ("FSDPMAE", [[2]], True, 1),
    "FULL_SHARD": ("FSDPMAE", [[2]], True, 2),
    "HYBRID_2GPUs": ("FSDPMAE", [[1, 2]], True, 2),
}


def _strategy_cfg(strategy):
    from enginelib import TINY

    return {**TINY, "steps": 5, "strategy": strategy, "backward_prefetch": 2, "forward_prefetch": 1}


@pytest.fixture(scope="module")
def strategy_runs(tmp_path_factory):
    """Every strategy's run on the same 2 ranks, one after another (one process start for all six)."""
    root = tmp_path_factory.mktemp("strategies")
    from enginelib import free_port

    ports: set[int] = set()
    while len(ports) < len(STRATEGIES):  # distinct: a second process group on the same port would hang
        ports.add(free_port())
    runs = [{"cfg": _strategy_cfg(s), "out": str(root / s), "record_layout": str(root / s / "layout"),
             "master_port": p} for s, p in zip(STRATEGIES, sorted(ports))]
    run_ranks(2, {"mode": "train", "runs": runs}, timeout=600)
    return root


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_two_ranks_matches_one(strategy, one_process, strategy_runs):
    """Each strategy trains as one process does, and really lays the model out as it says (a strategy that
    silently fell back to another, or a prefetch setting that never reached FSDP2, would still match)."""
    cfg = _strategy_cfg(strategy)
    tmp_path = strategy_runs / strategy
    two = losses(tmp_path)
    assert sorted(two) == sorted(one_process) == [1, 2, 3, 4, 5]
    for step, loss in one_process.items():
        assert two[step] == pytest.approx(loss, rel=1e-4, abs=1e-5), (strategy, step)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["strategy"] == strategy
    assert (tmp_path / "encoder.pt").exists()
    from geofm.models import MODELS

    groups = MODELS["test_micro"].depth + cfg["decoder_depth"] + 1  # each block, and the root
    wrapper, mesh, sharded, gathers = LAYOUT[strategy]
    seen = [json.loads((tmp_path / f"layout.{r}.json").read_text()) for r in (0, 1)]
    for s in seen:
        assert (s["wrapper"], s["mesh"], s["all_gathers"]) == (wrapper, mesh, gathers * groups * 5), (strategy, s)
        assert s["local_fraction"] == (pytest.approx(0.5, abs=0.01) if sharded else 1.0), (strategy, s)
        assert s.get("prefetch", [2, 1]) == [2, 1], s  # DDP never calls parallelize
    if sharded:  # the two shards make up the model
        assert seen[0]["local_fraction"] + seen[1]["local_fraction"] == pytest.approx(1.0)


def test_ddp_on_one_rank_trains_the_weights_no_shard_does(tmp_path):
    """config/demo-real.yaml sets strategy DDP (for demo_base's two ranks) and keeps demo_tiny on one rank,
    where its encoder must stay the one measured under NO_SHARD: at world size 1 DDP is the plain module and
    FSDP2's NO_SHARD a one-rank mesh, and the two must train the same weights to the last bit."""
    import torch

    from enginelib import TINY

    runs = [{"cfg": {**TINY, "steps": 5, "strategy": s}, "out": str(tmp_path / s)} for s in ("NO_SHARD", "DDP")]
    run_ranks(1, {"mode": "train", "runs": runs})
    a, b = (torch.load(tmp_path / s / "encoder.pt", map_location="cpu")["state_dict"] for s in ("NO_SHARD", "DDP"))
    assert sorted(a) == sorted(b) and a
    assert losses(tmp_path / "NO_SHARD")[1] != losses(tmp_path / "NO_SHARD")[5]  # it trained
    for k in a:
        assert torch.equal(a[k], b[k]), k


FALLING = {"steps": 40, "lr": 3e-3, "log_every": 1}  # long enough, at this rate, for the loss to fall


@pytest.fixture(scope="module")
def falling_fp32(tmp_path_factory):
    """Losses of a 1-process fp32 run of FALLING."""
    from enginelib import TINY

    out = tmp_path_factory.mktemp("falling")
    run_ranks(1, {"mode": "train", "cfg": {**TINY, **FALLING, "strategy": "NO_SHARD"}, "out": str(out)})
    return losses(out)


def _falls(ls: dict) -> tuple[float, float]:
    return sum(ls[s] for s in range(1, 6)) / 5, sum(ls[s] for s in range(36, 41)) / 5


def test_loss_falls(falling_fp32):
    first, last = _falls(falling_fp32)
    assert last < 0.9 * first, (first, last)


@pytest.mark.slow
def test_bf16_fsdp2_two_ranks(falling_fp32, tiny, tmp_path):
    """FULL_SHARD on 2 gloo ranks with precision bf16: FSDP2's MixedPrecisionPolicy (geofm.distributed.parallelize:
    param_dtype bf16, reduce_dtype fp32) computes in bf16, reduces gradients in fp32 and keeps fp32 master
    parameters and optimizer state; it trains, and follows the fp32 run within bf16's precision."""
    cfg = {**tiny, **FALLING, "strategy": "FULL_SHARD", "precision": "bf16"}
    run_ranks(2, {"mode": "train", "cfg": cfg, "out": str(tmp_path), "record_dtypes": str(tmp_path / "dtypes")})
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"dtypes.{rank}.json").read_text())
        assert seen["compute_input"] == seen["compute_weight"] == ["torch.bfloat16"], seen
        assert seen["grad"] == ["torch.bfloat16"] and seen["reduce"] == ["torch.float32"], seen
        assert seen["params"] == seen["optimizer"] == ["torch.float32"], seen
    got = losses(tmp_path)
    first, last = _falls(got)
    assert last < 0.9 * first, (first, last)
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2 %); over 40 steps the two trajectories part
    # by about one rounding (measured: at most 0.34 %), far less than the fall of the loss itself (~40 %)
    for s, ref in falling_fp32.items():
        assert got[s] == pytest.approx(ref, rel=0.01), (s, got[s], ref)
    assert max(abs(got[s] - v) / v for s, v in falling_fp32.items()) > 0  # bf16 really was used


@pytest.mark.slow
def test_sigkill_then_resume_gives_same_losses(resume_reference, tmp_path):
    """Both ranks SIGKILLed at step 26 (checkpoints at 10 and 20): the rerun resumes step 20 and ends with the
    uninterrupted run's losses, bit for bit, keeping the last two checkpoints."""
    cfg = {**RESUME_RUN, "checkpoint_every": 10, "keep_last": 2}
    out = tmp_path / "killed"
    proc = run_ranks(2, {"mode": "train", "cfg": cfg, "out": str(out), "kill_at_step": 26}, background=True)
    text = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode != 0, text[-3000:]
    assert not (out / "encoder.pt").exists(), "the run finished instead of being killed"
    done = sorted(p.name for p in (out / "checkpoints").iterdir() if (p / ".complete").exists())
    assert done == ["step-0000010", "step-0000020"], done
    run_ranks(2, {"mode": "train", "cfg": cfg, "out": str(out)})
    assert json.loads((out / "summary.json").read_text())["resumed_from"] == 20
    a, b = resume_reference, losses(out)
    assert sorted(a) == sorted(b) == list(range(1, RESUME_RUN["steps"] + 1))
    assert b == a  # bit-exact: same world, same strategy, every random number a function of (seed, step, row)
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step-0000030", "step-0000040"]


def test_resume_two_ranks_on_one(tiny, tmp_path):
    ref = tmp_path / "ref"
    run_ranks(1, {"mode": "train", "cfg": {**tiny, "steps": 8, "strategy": "NO_SHARD"}, "out": str(ref)})
    out = tmp_path / "out"
    import shutil

    run_ranks(2, {"mode": "train", "cfg": {**tiny, "steps": 8, "checkpoint_every": 4, "strategy": "FULL_SHARD"},
                  "out": str(out)})
    shutil.rmtree(out / "checkpoints" / "step-0000008")
    (out / "encoder.pt").unlink()
    run_ranks(1, {"mode": "train", "cfg": {**tiny, "steps": 8, "strategy": "DDP"}, "out": str(out)})
    a, b = losses(ref), losses(out)
    assert sorted(b) == list(range(1, 9))
    for s in range(5, 9):
        assert b[s] == pytest.approx(a[s], rel=1e-4, abs=1e-5), s
    assert json.loads((out / "summary.json").read_text())["resumed_from"] == 4


def test_nan_loss_stops_with_last_good_checkpoint(tiny, tmp_path):
    with pytest.raises(AssertionError) as err:
        run_ranks(1, {"mode": "train", "cfg": {**tiny, "steps": 10, "checkpoint_every": 3, "fail_at_step": 7,
                                               "strategy": "NO_SHARD"}, "out": str(tmp_path)})
    assert "loss is nan at step 7" in str(err.value)
    assert "step-0000006" in str(err.value)
    assert (tmp_path / "checkpoints" / "step-0000006" / ".complete").exists()
    assert not (tmp_path / "encoder.pt").exists()


def test_meta_init_shards_parameters(tmp_path):
    """vit_base under FULL_SHARD on 2 ranks: each rank holds ~half of the parameters, never the whole model."""
    run_ranks(2, {"mode": "meta", "model": "vit_base", "image_size": 224, "strategy": "FULL_SHARD",
                  "out": str(tmp_path / "m")}, timeout=600)
    recs = [json.loads(Path(f"{tmp_path}/m.{r}.json").read_text()) for r in (0, 1)]
    total = recs[0]["total"]
    for r in recs:
        assert abs(r["local"] - total / 2) / total < 0.01
        # resident growth stays well below the full fp32 model (4 bytes/param)
        assert r["rss_growth_mb"] < 0.8 * total * 4 / 2**20, r


def test_a_failing_rank_takes_the_others_down():
    """The tests' launcher (enginelib): a rank that exits non-zero while another still runs (say, in a
    collective that would wait for gloo's timeout) ends the launch at once with that rank's status and output."""
    import subprocess
    import sys
    import time

    from enginelib import _wait_ranks

    def start(code):
        return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)

    procs = [start("import time; time.sleep(60)"), start("import sys, time; time.sleep(0.3); print('boom'); sys.exit(3)")]
    t0 = time.monotonic()
    rc, text = _wait_ranks(procs, timeout=50)
    assert (rc, "boom" in text) == (3, True) and time.monotonic() - t0 < 20
    assert [p.returncode for p in procs][1] == 3 and procs[0].returncode != 0  # the sleeper was killed
