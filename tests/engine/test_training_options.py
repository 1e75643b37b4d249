"""Training options that must not change the maths (accumulation, checkpointing) and the metric outputs."""
import json
from pathlib import Path

import pytest

from enginelib import losses, run_ranks


OPTIONS = [{"grad_accum": 2}, {"activation_checkpointing": 1}, {"activation_checkpointing": 2, "grad_accum": 4}]


@pytest.fixture(scope="module")
def option_runs(tmp_path_factory):
    """The plain run and one run per option, one after another in one process (one start for all four)."""
    from enginelib import TINY

    root = tmp_path_factory.mktemp("options")
    runs = [{"cfg": {**TINY, "steps": 4, "strategy": "NO_SHARD"}, "out": str(root / "ref")}]
    runs += [{"cfg": {**TINY, "steps": 4, "strategy": "NO_SHARD", **o}, "out": str(root / str(i)),
              "record_compute": str(root / str(i) / "compute")} for i, o in enumerate(OPTIONS)]
    run_ranks(1, {"mode": "train", "runs": runs})
    return root


@pytest.fixture(scope="module")
def reference(option_runs):
    return losses(option_runs / "ref")


@pytest.mark.parametrize("i", range(len(OPTIONS)))
def test_option_keeps_losses(i, reference, option_runs, tiny):
    """The losses stay those of the plain run, and the option is really applied: with grad_accum g every step
    runs g forwards of batch / g images; a checkpointed block (every ``activation_checkpointing``-th of each
    stack, from the first) runs its forward again in backward, the others once."""
    option, out = OPTIONS[i], option_runs / str(i)
    got = losses(out)
    for s, v in reference.items():
        assert got[s] == pytest.approx(v, rel=1e-4, abs=1e-5), (option, s)
    accum, every = option.get("grad_accum", 1), option.get("activation_checkpointing", 0)
    attn = json.loads((out / "compute.0.json").read_text())["attn"]
    assert sorted(attn) == ["0.0", "0.1", "1.0"]  # test_micro: 2 encoder blocks, 1 decoder block
    for key, sizes in attn.items():
        runs = 2 if every and int(key.split(".")[1]) % every == 0 else 1
        assert sizes == [tiny["batch_size"] // accum] * (4 * accum * runs), (option, key, sizes)


def test_two_ranks_with_accumulation_and_checkpointing(reference, tiny, tmp_path):
    run_ranks(2, {"mode": "train", "cfg": {**tiny, "steps": 4, "strategy": "HYBRID_2GPUs", "grad_accum": 2,
                                           "activation_checkpointing": 1}, "out": str(tmp_path)})
    got = losses(tmp_path)
    for s, v in reference.items():
        assert got[s] == pytest.approx(v, rel=1e-4, abs=1e-5), s


def test_metrics_records_and_tensorboard(tiny, tmp_path):
    from geofm.common.lr import warmup_cosine

    cfg = {**tiny, "steps": 5, "precision": "bf16", "strategy": "NO_SHARD", "lr": 1.0e-3, "min_lr": 1.0e-5}
    res = run_ranks(1, {"mode": "train", "cfg": cfg, "out": str(tmp_path),
                        "record_compute": str(tmp_path / "compute")})
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    # the learning rate AdamW really used at each step (every param group) is the warm-up + cosine schedule,
    # and the one the metrics report
    used = json.loads((tmp_path / "compute.0.json").read_text())["lr"]
    want = [warmup_cosine(s, 5, cfg["warmup_steps"], 1.0e-3, 1.0e-5) for s in range(5)]
    assert [set(g) for g in used] == [{w} for w in want]
    assert [r["lr"] for r in recs] == pytest.approx(want) and len(set(want)) == 4  # warm-up, peak, decay
    for key in ("loss", "lr", "images_per_s", "tflops", "mfu", "peak_mem_gb", "step_time_s", "grad_norm"):
        assert key in recs[-1]
    assert recs[-1]["images_per_s"] > 0 and recs[-1]["tflops"] > 0
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert "step      5/5" in res.stdout and "img/s" in res.stdout and "\r" not in res.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["device"] == "CPU" and summary["flops_per_image"] > 0


def test_bad_batch_geometry_is_reported(tiny, tmp_path):
    with pytest.raises(AssertionError, match="batch_size 8 must be divisible by world size 1 × grad_accum 3"):
        run_ranks(1, {"mode": "train", "cfg": {**tiny, "steps": 2, "grad_accum": 3, "strategy": "NO_SHARD"},
                      "out": str(tmp_path)})
