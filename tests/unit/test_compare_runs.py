"""scripts/compare-runs, the no-behaviour-change guard, on small generated results trees."""
import importlib.machinery
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "compare-runs"


def _module():
    loader = importlib.machinery.SourceFileLoader("compare_runs", str(SCRIPT))
    spec = importlib.util.spec_from_loader("compare_runs", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


cr = _module()


def _tree(root: Path) -> Path:
    """A finished demo-shaped results/ tree: one model, one evaluation, one tiles folder, two tables, figures."""
    res = root / "results"
    pre = res / "pretrain" / "m"
    pre.mkdir(parents=True)
    lines = [{"step": s, "loss": 1.0 / s, "lr": 1e-4 * s, "grad_norm": float("nan"), "images_per_s": 100.0 + s,
              "step_time_s": 0.1 * s, "peak_mem_gb": 0.5} for s in (1, 10, 20)]
    (pre / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    torch.save({"meta": {"model": "m"}, "state_dict": {"w": torch.arange(6.0).reshape(2, 3)}}, pre / "encoder.pt")
    ev = res / "eval" / "knn" / "m"
    ev.mkdir(parents=True)
    rec = {"protocol": "knn", "model": "m", "dataset": "d", "checkpoint_step": 20,
           "pretrained": {"top1": 0.5, "top5": 1.0, "per_class": {"water": 0.25, "forest": 0.75}},
           "random_init": {"top1": 0.2, "top5": 0.9, "per_class": {"water": 0.1, "forest": 0.3}},
           "provenance": {"git": {"commit": "abc"}}}
    (ev / "d.json").write_text(json.dumps(rec))
    tiles = res / "tiles" / "d"
    tiles.mkdir(parents=True)
    (tiles / "stats.json").write_text(json.dumps({"mean": [0.1, 0.2], "std": [0.3, 0.4], "n_tiles": 2}))
    pd.DataFrame({"tile_id": ["a", "b"], "label": [0, 1], "split": ["train", "test"],
                  "geometry": [b"\x01\x02", b"\x03\x04"]}).to_parquet(tiles / "manifest.parquet")
    np.save(tiles / "shard-00000.npy", np.arange(8, dtype=np.uint8).reshape(2, 1, 2, 2))
    tab = res / "tables"
    tab.mkdir()
    pd.DataFrame({"model": ["m", "m"], "strategy": ["DDP", "FULL_SHARD"], "images_per_s": [10.0, 12.0],
                  "mfu": [0.1, 0.12], "peak_mem_gb": [1.0, 0.5], "predicted_peak_mem_gb": [1.1, 0.6],
                  "status": ["ok", "ok"]}).to_csv(tab / "profile.csv", index=False)
    pd.DataFrame({"model": ["m"], "init": ["pretrained"], "top1": [0.5]}).to_csv(tab / "accuracy.csv", index=False)
    fig = res / "figures"
    fig.mkdir()
    for name in ("loss_curves.png", "accuracy_vs_size.png"):
        (fig / name).write_bytes(b"png")
    return res


@pytest.fixture
def trees(tmp_path):
    base = _tree(tmp_path / "base")
    new = tmp_path / "new" / "results"
    shutil.copytree(base, new)
    return base, new


class _Ran:
    def __init__(self, returncode, stdout):
        self.returncode, self.stdout = returncode, stdout


@pytest.fixture
def _run(capsys):
    def run(base, new, *extra):
        capsys.readouterr()
        rc = cr.main([str(base), str(new), *extra])
        return _Ran(rc, capsys.readouterr().out)

    return run


def test_identical_trees_exit_0(trees):
    # the script as the README runs it: executable, its own interpreter line
    p = subprocess.run([str(SCRIPT), *map(str, trees)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "agree" in p.stdout


def test_one_perturbed_loss_exits_1_naming_it(trees, _run):
    base, new = trees
    path = new / "pretrain/m/metrics.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    recs[1]["loss"] = np.nextafter(recs[1]["loss"], 1.0)  # one ulp
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    p = _run(base, new)
    assert p.returncode == 1
    diff = [line for line in p.stdout.splitlines() if "metrics.jsonl" in line]
    assert len(diff) == 1 and "step 10.loss" in diff[0] and "0.1 ->" in diff[0], p.stdout
    # a tolerance admits it
    assert _run(base, new, "--rtol", "1e-9").returncode == 0


def test_timing_and_machine_columns_are_ignored(trees, _run):
    base, new = trees
    path = new / "tables/profile.csv"
    df = pd.read_csv(path)
    df["images_per_s"] *= 3
    df["mfu"] *= 3
    df["peak_mem_gb"] += 1
    df.to_csv(path, index=False)
    path = new / "pretrain/m/metrics.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    for r in recs:
        r["images_per_s"] += 1
        r["step_time_s"] *= 2
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    ev = new / "eval/knn/m/d.json"
    rec = json.loads(ev.read_text())
    rec["provenance"]["git"]["commit"] = "def"
    ev.write_text(json.dumps(rec))
    p = _run(base, new)
    assert p.returncode == 0, p.stdout


def test_every_compared_part_reports_its_difference(trees):
    base, new = trees
    # a deterministic table column, an accuracy per class, a tile's split, a band mean, shard pixels,
    # encoder weights, a lost figure
    path = new / "tables/profile.csv"
    df = pd.read_csv(path)
    df.loc[1, "predicted_peak_mem_gb"] = 0.7
    df.to_csv(path, index=False)
    ev = new / "eval/knn/m/d.json"
    rec = json.loads(ev.read_text())
    rec["random_init"]["per_class"]["forest"] = 0.31
    ev.write_text(json.dumps(rec))
    man = new / "tiles/d/manifest.parquet"
    df = pd.read_parquet(man)
    df.loc[0, "split"] = "val"
    df.to_parquet(man)
    st = new / "tiles/d/stats.json"
    s = json.loads(st.read_text())
    s["mean"][1] = 0.21
    st.write_text(json.dumps(s))
    np.save(new / "tiles/d/shard-00000.npy", np.zeros((2, 1, 2, 2), np.uint8))
    enc = new / "pretrain/m/encoder.pt"
    obj = torch.load(enc, weights_only=False)
    obj["state_dict"]["w"][0, 0] += 1e-3
    torch.save(obj, enc)
    (new / "figures/loss_curves.png").unlink()

    diffs = cr.compare(base, new)
    lines = {f for f in diffs.count}
    assert lines == {"tables/profile.csv", "eval/knn/m/d.json", "tiles/d/manifest.parquet", "tiles/d/stats.json",
                     "tiles/d/shard-00000.npy", "pretrain/m/encoder.pt", "figures/loss_curves.png"}
    text = "\n".join(line for v in diffs.by_file.values() for line in v)
    assert "tables/profile.csv: row 1.predicted_peak_mem_gb: '0.6' -> '0.7'" in text
    assert "eval/knn/m/d.json: random_init.per_class.forest: 0.3 -> 0.31" in text
    assert "tiles/d/manifest.parquet: a.split: 'train' -> 'val'" in text
    assert "tiles/d/stats.json: mean[1]: 0.2 -> 0.21" in text
    assert "pretrain/m/encoder.pt: state_dict.w" in text
    assert "figures/loss_curves.png: file: 'present' -> '<absent>'" in text
    assert cr.main([str(base), str(new)]) == 1


def test_a_missing_tree_is_a_usage_error(tmp_path, trees):
    assert cr.main([str(trees[0]), str(tmp_path / "nope")]) == 2


def test_ignore_leaves_out_a_key_changed_on_purpose_and_only_that(trees, _run):
    base, new = trees
    summary = {"final_loss": 0.05, "steps": 20, "fingerprint": "aaaa"}
    (base / "pretrain/m/summary.json").write_text(json.dumps(summary))
    (new / "pretrain/m/summary.json").write_text(json.dumps({**summary, "fingerprint": "bbbb"}))
    p = _run(base, new)
    assert p.returncode == 1 and "fingerprint: 'aaaa' -> 'bbbb'" in p.stdout, p.stdout
    p = _run(base, new, "--ignore", "fingerprint")
    assert p.returncode == 0 and "also leaving out fingerprint" in p.stdout, p.stdout
    # only that key: a changed final loss is still reported, and the next run without --ignore reports again
    (new / "pretrain/m/summary.json").write_text(json.dumps({**summary, "fingerprint": "bbbb", "final_loss": 0.06}))
    p = _run(base, new, "--ignore", "fingerprint")
    assert p.returncode == 1 and "final_loss" in p.stdout and "fingerprint" not in p.stdout.split("\n", 1)[1]
    assert "fingerprint" in _run(base, new).stdout
