"""A pretraining job resumes only a checkpoint of its own config, and only an unfinished run's."""
import json
import shutil

import pytest

from enginelib import TINY, losses, run_ranks
from geofm.train.fingerprint import fingerprint
from geofm.train.pretrain import TrainConfig

pytestmark = pytest.mark.slow

RUN = {**TINY, "steps": 6, "checkpoint_every": 2, "keep_last": 5, "strategy": "NO_SHARD"}


def train(out, **over):
    return run_ranks(1, {"mode": "train", "cfg": {**RUN, **over}, "out": str(out)})


def crash_after_step_4(out):
    """What a job killed between its checkpoints at steps 4 and 6 leaves: no step-6 checkpoint, no outputs."""
    shutil.rmtree(out / "checkpoints" / "step-0000006")
    for name in ("encoder.pt", "summary.json", "metrics.jsonl"):
        (out / name).unlink()


def summary(out):
    return json.loads((out / "summary.json").read_text())


def aside(out):
    return sorted(p for p in out.iterdir() if p.name.startswith("checkpoints-aside-"))


def test_fingerprint_covers_the_trajectory_only(tmp_path):
    base = TrainConfig.from_dict(RUN)
    fp = fingerprint(base)
    for change in ({"lr": 2e-3}, {"steps": 7}, {"seed": 1}, {"model": "demo_tiny"}, {"mask_ratio": 0.5},
                   {"precision": "bf16"}, {"batch_size": 16}):
        assert fingerprint(TrainConfig.from_dict({**RUN, **change})) != fp, change
    for same in ({"log_every": 5}, {"checkpoint_every": 3}, {"keep_last": 1}, {"strategy": "FULL_SHARD"},
                 {"num_workers": 2}, {"device": "cuda"}, {"compile": True}, {"activation_checkpointing": 1}):
        assert fingerprint(TrainConfig.from_dict({**RUN, **same})) == fp, same
    # the data's identity is its stats.json, not its path: a moved tiles folder keeps the fingerprint
    a, b = tmp_path / "a" / "tiles", tmp_path / "b" / "tiles"
    for d in (a, b):
        d.mkdir(parents=True)
        (d / "stats.json").write_text('{"n_tiles": 10}')
    fa = fingerprint(TrainConfig.from_dict({**RUN, "data": str(a)}))
    assert fa == fingerprint(TrainConfig.from_dict({**RUN, "data": str(b)})) != fp
    (b / "stats.json").write_text('{"n_tiles": 11}')
    assert fingerprint(TrainConfig.from_dict({**RUN, "data": str(b)})) != fa


def test_checkpoint_of_another_config_is_moved_aside_not_resumed(tmp_path):
    out = tmp_path / "run"
    train(out)
    old_fp = summary(out)["fingerprint"]
    crash_after_step_4(out)
    res = train(out, lr=3e-3)
    s = summary(out)
    assert s["resumed_from"] == 0 and s["fingerprint"] != old_fp
    assert sorted(losses(out)) == list(range(1, 7))
    [moved] = aside(out)
    assert moved.name.endswith(old_fp) and (moved / "step-0000004" / ".complete").exists()
    assert f"moved them to {moved}" in res.stdout + res.stderr
    extra = json.loads((out / "checkpoints" / "step-0000006" / "extra.json").read_text())
    assert extra["fingerprint"] == s["fingerprint"]


def test_same_config_resumes_an_unfinished_run(tmp_path):
    out = tmp_path / "run"
    train(out)
    ref = losses(out)
    crash_after_step_4(out)
    train(out, log_every=1, checkpoint_every=3)  # settings that do not change the trajectory
    assert summary(out)["resumed_from"] == 4 and not aside(out)
    b = losses(out)
    for step in (5, 6):
        assert b[step] == pytest.approx(ref[step], rel=1e-4, abs=1e-5)
