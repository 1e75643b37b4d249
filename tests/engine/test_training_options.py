"""Training options that must not change the maths (accumulation, checkpointing) and the metric outputs."""
import json
from pathlib import Path

import pytest

from enginelib import losses, run_ranks


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from enginelib import TINY

    out = tmp_path_factory.mktemp("ref")
    run_ranks(1, {"mode": "train", "cfg": {**TINY, "steps": 4, "strategy": "NO_SHARD"}, "out": str(out)})
    return losses(out)


@pytest.mark.parametrize("option", [{"grad_accum": 2}, {"activation_checkpointing": 1},
                                    {"activation_checkpointing": 2, "grad_accum": 4}])
def test_option_keeps_losses(option, reference, tiny, tmp_path):
    run_ranks(1, {"mode": "train", "cfg": {**tiny, "steps": 4, "strategy": "NO_SHARD", **option}, "out": str(tmp_path)})
    got = losses(tmp_path)
    for s, v in reference.items():
        assert got[s] == pytest.approx(v, rel=1e-4, abs=1e-5), (option, s)


def test_two_ranks_with_accumulation_and_checkpointing(reference, tiny, tmp_path):
    run_ranks(2, {"mode": "train", "cfg": {**tiny, "steps": 4, "strategy": "HYBRID_2GPUs", "grad_accum": 2,
                                           "activation_checkpointing": 1}, "out": str(tmp_path)})
    got = losses(tmp_path)
    for s, v in reference.items():
        assert got[s] == pytest.approx(v, rel=1e-4, abs=1e-5), s


def test_metrics_records_and_tensorboard(tiny, tmp_path):
    res = run_ranks(1, {"mode": "train", "cfg": {**tiny, "steps": 3, "precision": "bf16", "strategy": "NO_SHARD"},
                        "out": str(tmp_path)})
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3]
    for key in ("loss", "lr", "images_per_s", "tflops", "mfu", "peak_mem_gb", "step_time_s", "grad_norm"):
        assert key in recs[-1]
    assert recs[-1]["images_per_s"] > 0 and recs[-1]["tflops"] > 0
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert "step      3/3" in res.stdout and "img/s" in res.stdout and "\r" not in res.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["device"] == "CPU" and summary["flops_per_image"] > 0


def test_bad_batch_geometry_is_reported(tiny, tmp_path):
    with pytest.raises(AssertionError, match="batch_size 8 must be divisible by world size 1 × grad_accum 3"):
        run_ranks(1, {"mode": "train", "cfg": {**tiny, "steps": 2, "grad_accum": 3, "strategy": "NO_SHARD"},
                      "out": str(tmp_path)})
