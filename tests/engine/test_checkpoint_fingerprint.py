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


def test_missing_tiles_or_a_damaged_checkpoint_lose_nothing(tmp_path, monkeypatch, capsys):
    """`geofm pretrain` on tiles that are gone (moved, a purged scratch) or unreadable stops with one line
    naming the file, before looking at the checkpoints: the resumable ones stay where they are (they are not
    "another config's" to be moved aside). A complete-marked checkpoint whose shard was damaged afterwards is
    named too, with what to do, and nothing is moved."""
    import yaml

    from geofm.cli import main

    from pathlib import Path

    cfg = yaml.safe_load((Path(__file__).parents[2] / "config" / "demo.yaml").read_text())
    cfg.update(results=str(tmp_path / "r"), resources=str(tmp_path / "s"), image_size=16, models=["test_micro"])
    cfg["datasets"]["demo_scenes"].update(n_scenes=1, size=256)
    cfg["pretrain"].update(steps=4, batch_size=8, checkpoint_every=2, keep_last=5, warmup_steps=1, log_every=1,
                           decoder_dim=32, decoder_depth=1, decoder_heads=2)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    c = ["--config", str(path)]
    assert main(["download", *c, "--dataset", "demo_scenes"]) == 0
    assert main(["tile", *c, "--dataset", "demo_scenes"]) == 0
    assert main(["pretrain", *c, "--model", "test_micro"]) == 0
    out = tmp_path / "r" / "pretrain" / "test_micro"
    shutil.rmtree(out / "checkpoints" / "step-0000004")  # killed after step 2's checkpoint
    tiles = tmp_path / "r" / "tiles" / "demo_scenes"
    tiles.rename(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["pretrain", *c, "--model", "test_micro"]) == 1
    err = capsys.readouterr().err
    assert "stats.json not found" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "elsewhere").rename(tiles)
    stats = (tiles / "stats.json").read_text()
    (tiles / "stats.json").write_text(stats[:40])
    assert main(["pretrain", *c, "--model", "test_micro"]) == 1
    assert f"{tiles / 'stats.json'} is unreadable" in capsys.readouterr().err
    (tiles / "stats.json").write_text(stats)
    assert not aside(out) and (out / "checkpoints" / "step-0000002" / ".complete").exists()
    # the step-2 checkpoint damaged after it was written: named, nothing moved
    shard = sorted((out / "checkpoints" / "step-0000002").glob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    assert main(["pretrain", *c, "--model", "test_micro"]) == 1
    err = capsys.readouterr().err
    assert "checkpoint " + str(out / "checkpoints" / "step-0000002") + " is damaged (EOFError" in err, err
    assert "Traceback" not in err and not aside(out)
