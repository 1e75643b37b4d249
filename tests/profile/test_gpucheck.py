"""scripts/gpu-check in its CPU mode: every measurement kind runs on a tiny model and the report holds
together; the time budget and an out-of-memory size skip what they must, and the files are written anyway."""
import json
import runpy
from pathlib import Path

import pytest
import torch

from geofm.profile import gpucheck as G
from geofm.train import flops

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_mode_measures_every_kind(tmp_path):
    assert G.main(["--cpu", "--out", str(tmp_path), "--models", "test_micro", "--budget-s", "600"]) == 0
    rep = json.loads((tmp_path / "gpu-check-CPU.json").read_text())
    assert rep["complete"] and rep["device"] == "CPU" and rep["peak_tflops"] > 0
    rows = {r["kind"]: r for r in rep["rows"]}
    assert set(rows) == {"plain", "geofm", "geofm_compile", "fsdp2_1rank", "loader_all", "loader_none"}
    assert all(r["status"] == "ok" and r["images_per_s"] > 0 for r in rows.values()), rep["rows"]
    fl = flops.mae_train_flops_per_image("test_micro", 32, 3, 0.75, 32, 1)
    for k in ("plain", "geofm", "geofm_compile", "fsdp2_1rank"):
        r = rows[k]
        assert r["batch"] == 8 and r["images_per_s"] == pytest.approx(8 / r["step_s"])
        assert r["tflops"] == pytest.approx(r["images_per_s"] * fl / 1e12)
        assert r["mfu"] == pytest.approx(r["tflops"] / rep["peak_tflops"])
    # each kind is what it says: blocks compiled only where asked, parameters sharded only under FSDP2
    assert rows["geofm_compile"]["compiled_modules"] == 2 + 1 and rows["geofm"]["compiled_modules"] == 0
    assert rows["fsdp2_1rank"]["sharded_params"] == rows["fsdp2_1rank"]["n_params_tensors"] > 0
    assert rows["plain"]["sharded_params"] == rows["geofm"]["sharded_params"] == 0
    md = (tmp_path / "gpu-check-CPU.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("| test_micro |"))
    best = max(rows[k]["images_per_s"] for k in ("geofm", "geofm_compile", "fsdp2_1rank"))
    assert f"{best / rows['plain']['images_per_s']:.2f}×" in line
    assert "| all | 8 |" in md and "| none | 8 |" in md
    assert not torch.distributed.is_initialized()


def test_budget_and_out_of_memory_skip_and_still_write(tmp_path, monkeypatch):
    """run()'s bookkeeping, with the measurements replaced: an out-of-memory size skips the larger ones."""
    ran = []

    def measure(kind, model, batch, st, device, deadline):
        ran.append((kind, model))
        oom = model == "demo_tiny" and kind == "geofm"
        return {"kind": kind, "model": model, "batch": batch,
                "status": "out of memory: CUDA out of memory" if oom else "ok", "images_per_s": 1.0}

    monkeypatch.setattr(G, "measure", measure)
    monkeypatch.setattr(G, "measure_loader", lambda stage, *a: {"kind": f"loader_{stage}", "model": "-", "batch": 8,
                                                                 "status": "ok", "images_per_s": 1.0})
    G.run(True, tmp_path, budget_s=600, models=["test_micro", "demo_tiny", "demo_small"])
    rows = {(r["kind"], r["model"]): r for r in json.loads((tmp_path / "gpu-check-CPU.json").read_text())["rows"]}
    # the rest of the size that ran out of memory is still tried; the larger size is not
    assert ran == [(k, "test_micro") for k in G.KINDS] + [(k, "demo_tiny") for k in G.KINDS[:3]]
    assert rows[("geofm_compile", "demo_tiny")]["status"] == "ok"
    assert all(rows[(k, "demo_small")]["status"] == "skipped: a smaller size ran out of memory" for k in G.KINDS[:3])
    assert rows[("loader_all", "-")]["status"] == "ok"
    # a budget already spent: nothing runs, every row says why, the files exist
    ran.clear()
    out = tmp_path / "spent"
    G.run(True, out, budget_s=0.01, models=["test_micro"])
    rep = json.loads((out / "gpu-check-CPU.json").read_text())
    assert not ran and rep["complete"] and rep["rows"] and all(r["status"].startswith("skipped: ") for r in rep["rows"])
    assert "Not measured:" in (out / "gpu-check-CPU.md").read_text()


def test_script_refuses_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("sys.argv", ["gpu-check"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(ROOT / "scripts" / "gpu-check"), run_name="__main__")
    assert exc.value.code == 2 and "--cpu" in capsys.readouterr().err


def test_sweep_options_change_what_is_measured(tmp_path):
    """--batch / --steps / --kinds / --no-loader (a batch sweep on a GPU): the rows are measured with them."""
    assert G.main(["--cpu", "--out", str(tmp_path), "--models", "test_micro", "--batch", "test_micro=4",
                   "--steps", "2", "--kinds", "plain", "fsdp2_1rank", "--no-loader"]) == 0
    rep = json.loads((tmp_path / "gpu-check-CPU.json").read_text())
    assert rep["timed_steps"] == 2 and [r["kind"] for r in rep["rows"]] == ["plain", "fsdp2_1rank"]
    for r in rep["rows"]:
        assert r["status"] == "ok" and r["batch"] == 4 and r["steps"] == 2
    assert rep["rows"][1]["sharded_params"] > 0
    for bad in (["--batch", "test_micro"], ["--batch", "test_micro=0"], ["--steps", "0"]):
        with pytest.raises(SystemExit) as exc:
            G.main(["--cpu", "--out", str(tmp_path / "bad"), *bad])
        assert exc.value.code == 2
    assert not (tmp_path / "bad").exists()
