"""Scheduling the study against a batch system's limits (`geofm schedule`), bundles of cells, the Frontier site script."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from geofm.bundle import BundleCell, run_bundle
from geofm.config import ConfigError, load_config, validate
from geofm.schedule import cell_paths_of, max_walltime_min, pretrain_plan, profile_bundles, study_schedule

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def paper():
    return load_config(REPO / "config/config.yaml")


def test_paper_study_fits_frontier_limits(paper):
    plan = study_schedule(paper, cell_paths_of(paper))
    assert plan["problems"] == []
    assert plan["submissions"] <= paper["scheduler"]["max_submissions"] == 100
    # every feasible cell of the grid is in some bundle, once; no cell the memory model rules out is
    assert plan["profile_cells"] == 432 - 62 + 30 == len(cell_paths_of(paper))
    assert not any("/vit_15b/DDP/" in p for p in cell_paths_of(paper))
    cells = [c.path for b in profile_bundles(paper, cell_paths_of(paper)) for c in b.cells]
    assert sorted(cells) == sorted(cell_paths_of(paper)) and len(set(cells)) == len(cells)
    for j in plan["jobs"]:  # Frontier's bins: 2 h to 91 nodes, 6 h to 183, 12 h above
        assert j["runtime_min"] <= (120 if j["nodes"] <= 91 else 360 if j["nodes"] <= 183 else 720), j
    for m in paper["models"]:
        pp = pretrain_plan(paper, m)
        assert pp.retries + 1 >= pp.chunks_needed, pp
    # the profile's queue depth stays within the limit too
    prof = (REPO / "profiles/frontier/config.v8+.yaml").read_text()
    assert int(re.search(r"^jobs: (\d+)$", prof, re.M).group(1)) <= 100


def test_readme_states_what_geofm_schedule_computes(paper):
    out = subprocess.run([sys.executable, "-m", "geofm.cli", "schedule", "--config", str(REPO / "config/config.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    plan = study_schedule(paper, cell_paths_of(paper))
    readme = (REPO / "README.md").read_text()
    for text in (f"{plan['submissions']} batch submissions", f"{plan['node_hours_expected']:,.0f} node-hours",
                 f"{plan['node_hours_requested']:,.0f} node-hours"):
        assert text in readme, text
        assert text.split(" ")[0] in out.stdout


def test_problems_are_reported(paper):
    cfg = json.loads(json.dumps(paper))
    cfg["pretrain"]["per_model"]["vit_15b"] = {"nodes": 32, "runtime_min": 120, "retries": 3}
    cfg["scheduler"]["max_submissions"] = 50
    probs = study_schedule(cfg, cell_paths_of(cfg))["problems"]
    assert any(p.startswith("pretrain vit_15b") and "allow 4" in p for p in probs), probs
    assert any("above scheduler.max_submissions 50" in p for p in probs), probs
    cfg["evaluate"]["runtime_min"] = 200  # over 2 h on 1 node
    assert any(p.startswith("evaluate vit_base") for p in study_schedule(cfg, cell_paths_of(cfg))["problems"])


def test_bundles_pack_cells_into_the_walltime_and_take_any_list(paper):
    cells = cell_paths_of(paper)
    b = {x.name: x for x in profile_bundles(paper, cells)}
    # vit_5b x 8 nodes: 9 strategies + 3 noprefetch + 3 prefetch2 + 2 compile = 17 cells, 14 of them
    # feasible (DDP, NO_SHARD and HYBRID_1GPU do not fit), of 10 min each > 2 h
    assert [len(b["vit_5b-8n-1"].cells), len(b["vit_5b-8n-2"].cells)] == [12, 2]
    assert b["vit_5b-8n-1"].runtime_min == 120 and max_walltime_min(paper, 8) == 120
    # vit_15b x 128 nodes: the 5 sharded strategies that fit (README: Impossible cells)
    assert len(b["vit_15b-128n"].cells) == 5 and b["vit_15b-128n"].runtime_min == 50
    # a filtered list (e.g. infeasible cells dropped) is bundled as given
    kept = [c for c in cells if "/vit_15b/" not in c or "/1n" not in c]
    names = [x.name for x in profile_bundles(paper, kept)]
    assert "vit_15b-1n" not in names and "vit_15b-2n" in names
    with pytest.raises(ValueError, match="not a profile cell"):
        profile_bundles(paper, ["results/profile/x.json"])


def test_config_per_model_and_orion_variable(paper, monkeypatch):
    cfg = json.loads(json.dumps(paper))
    cfg["pretrain"]["per_model"]["vit_hug"] = {"nodes": 2}  # a misspelt model
    with pytest.raises(ConfigError, match="pretrain.per_model: 'vit_hug' is not allowed"):
        validate(cfg)
    # a model outside `models` keeps its entry, unused: a run of a subset needs no edit of per_model
    cfg = {**json.loads(json.dumps(paper)), "models": ["vit_base", "vit_huge"]}
    assert validate(cfg)["pretrain"]["per_model"]["vit_15b"]["nodes"] == 256
    cfg = json.loads(json.dumps(paper))
    cfg["pretrain"]["per_model"]["vit_base"] = {"nodes": 3}
    with pytest.raises(ConfigError, match="not divisible by vit_base's 3 nodes"):
        validate(cfg)
    cfg = {**json.loads(json.dumps(paper)), "results": "$GEOFM_TEST_ORION/results"}
    monkeypatch.delenv("GEOFM_TEST_ORION", raising=False)
    with pytest.raises(ConfigError, match="GEOFM_TEST_ORION"):
        validate(cfg)
    monkeypatch.setenv("GEOFM_TEST_ORION", "/lustre/orion/abc/scratch/me")
    assert validate(cfg)["results"] == "/lustre/orion/abc/scratch/me/results"


def test_bundle_isolates_failing_and_hanging_cells(tmp_path):
    ok_out, bad_out, hang_out, silent_out = (str(tmp_path / f"{n}.json") for n in ("ok", "bad", "hang", "silent"))
    cells = [
        BundleCell(["plan", "--config", str(tmp_path / "missing.yaml")], bad_out, str(tmp_path / "bad.log"),
                   {"cell": "bad"}),
        BundleCell(["validate", "--config", str(REPO / "config/demo.yaml")], silent_out, str(tmp_path / "s.log"),
                   {"cell": "silent"}),
    ]
    done = run_bundle(cells)
    assert done[bad_out].startswith("exit status 2") and done[silent_out] == "exited 0 without writing its output"
    rec = json.loads(Path(bad_out).read_text())
    assert rec["cell"] == "bad" and rec["status"].startswith("failed: exit status 2") and "missing.yaml" in rec["status"]
    # a hanging cell is stopped at its budget (its whole process group), the next one still runs
    from geofm.bundle import run_cell

    hang = BundleCell(["validate"], hang_out, str(tmp_path / "hang.log"), {"cell": "hang"})
    reason = run_cell(hang, launch="sh -c 'sleep 60' --", timeout_s=1.5)
    assert "over its time budget" in reason and "over its time budget" in json.loads(Path(hang_out).read_text())["status"]
    good = BundleCell(["validate"], ok_out, str(tmp_path / "ok.log"), {"cell": "ok"})
    assert run_cell(good, launch=f"sh -c 'echo {{\\\"status\\\": \\\"ok\\\"}} > {ok_out}' --") == "ok"
    assert json.loads(Path(ok_out).read_text()) == {"status": "ok"}


def _source_env(tmp_path, env_extra):
    """Source envs/frontier/env.sh as a job's rule does (bash strict mode, SLURM_* dropped by the job step:
    the node count comes from squeue), with stand-ins for squeue/srun that answer for the fake job."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    (bin_ / "squeue").write_text('#!/bin/sh\necho "$FAKE_JOB_NODES"\n')
    (bin_ / "srun").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NCCL_", "FI_"))}
    env.update({"PATH": f"{bin_}:/usr/bin:/bin", "HOME": str(tmp_path), **env_extra})
    script = f'set -euo pipefail; . {REPO}/envs/frontier/env.sh; echo "NCCL_NET=$NCCL_NET RDZV=$FI_CXI_RDZV_PROTO"'
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)


def test_frontier_env_stops_a_multinode_job_without_the_net_plugin(tmp_path):
    job = {"SLURM_JOB_ID": "4242", "FAKE_JOB_NODES": "2"}
    r = _source_env(tmp_path, job)
    assert r.returncode != 0 and "RCCL network plugin is missing" in r.stderr and "NCCL_NET=" not in r.stdout
    plugin = tmp_path / "librccl-net.so"
    plugin.write_bytes(b"\x7fELF")
    r = _source_env(tmp_path, {**job, "NCCL_NET_PLUGIN": str(plugin)})
    assert r.returncode == 0, r.stderr
    assert "NCCL_NET=OFI RDZV=alt_read" in r.stdout  # RCCL must use the plugin, never fall back to TCP
    r = _source_env(tmp_path, {**job, "NCCL_NET_PLUGIN": "ofi", "LD_LIBRARY_PATH": str(tmp_path)})
    assert r.returncode != 0  # a name needs librccl-net-ofi.so on LD_LIBRARY_PATH
    (tmp_path / "librccl-net-ofi.so").write_bytes(b"\x7fELF")
    assert _source_env(tmp_path, {**job, "NCCL_NET_PLUGIN": "ofi", "LD_LIBRARY_PATH": str(tmp_path)}).returncode == 0
    r = _source_env(tmp_path, {"SLURM_JOB_ID": "4243", "FAKE_JOB_NODES": "1"})
    assert r.returncode == 0 and "NCCL_NET=Socket" in r.stdout  # one node: no network plugin there
