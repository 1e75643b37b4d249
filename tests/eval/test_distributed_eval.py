"""Feature extraction (a copy of the encoder per rank, or the encoder sharded with FSDP2) and fine-tuning
(FSDP2) over 2 gloo ranks give the 1-rank results."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("dist_worker.py")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(nprocs: int, payload: dict, timeout: int = 240) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    if nprocs == 1:
        cmd = [sys.executable, str(WORKER), json.dumps(payload)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nprocs}",
               "--master-addr=127.0.0.1", f"--master-port={_port()}", str(WORKER), json.dumps(payload)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode:
        raise AssertionError(f"{payload} on {nprocs} rank(s) failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return torch.load(payload["out"], weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    one = run(1, {"modes": ["features", "finetune"], "out": str(d / "one.pt")})
    two = run(2, {"modes": ["features", "features_sharded", "finetune", "finetune_ac", "finetune_ddp", "features_bf16"],
                  "out": str(d / "two.pt")})
    return one, two


def test_features_two_ranks_equal_one(runs):
    one, two = runs
    assert one["mean"].shape == (31, 32)
    for k in ("mean", "cls"):
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(one["mean"], one["cls"])  # the pool option reaches the encoder


def test_sharded_encoder_features_equal_one_rank(runs):
    one, two = runs
    torch.testing.assert_close(two["sharded_mean"], one["mean"], rtol=1e-5, atol=1e-5)


def test_finetune_two_ranks_fsdp_equal_one(runs):
    one, two = runs
    assert one["logits"].shape == (31, 3)
    torch.testing.assert_close(two["logits"], one["logits"], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(two["train_top1"], one["train_top1"])


def test_finetune_under_ddp_on_two_ranks_equals_one(runs):
    """evaluate.finetune_strategy: DDP: the two replicas stay equal (their gradients are all-reduced) and follow
    the one-rank run. (Before, the strategy left the model unwrapped: each rank trained on its own rows.)"""
    one, two = runs
    assert float(two["ddp_replica_spread"]) == 0.0
    torch.testing.assert_close(two["ddp_logits"], one["logits"], rtol=1e-3, atol=1e-4)


def test_finetune_with_activation_checkpointing_on_two_ranks_equals_one(runs):
    """evaluate.finetune_activation_checkpointing (vit_3b and larger): recomputation changes no number."""
    one, two = runs
    assert int(two["ac_wrapped"]) == 2  # test_micro's two blocks
    torch.testing.assert_close(two["ac_logits"], one["logits"], rtol=1e-3, atol=1e-4)


def test_bf16_features_are_bf16_and_close(runs):
    one, two = runs
    assert two["bf16_mean"].dtype == torch.float32
    assert not torch.equal(two["bf16_mean"], one["mean"])  # autocast really ran in bf16
    torch.testing.assert_close(two["bf16_mean"], one["mean"], rtol=0.1, atol=0.05)
