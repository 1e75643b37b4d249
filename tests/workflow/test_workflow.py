"""The DAG end to end on a tiny config in a temporary directory, via the Snakemake CLI."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def snakemake(cwd, *args, check=True, timeout=900):
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in Path(cwd, "results/logs").rglob("*.log"))
        raise AssertionError(f"{' '.join(cmd)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}\n{logs}")
    return res


def make_project(tmp: Path) -> Path:
    """A fresh checkout in ``tmp``: the workflow, configs and profiles, plus tests/workflow/tiny.yaml."""
    for item in ("Snakefile", "workflow", "config", "profiles"):
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, tmp / item, symlinks=True)
        else:
            shutil.copy(src, tmp / item)
    shutil.copy(Path(__file__).with_name("tiny.yaml"), tmp / "tiny.yaml")
    return tmp


def test_every_stage_produced_its_outputs(study):
    res = study / "results"
    for ds in ("demo_scenes", "demo_landcover"):
        stats = json.loads((res / "tiles" / ds / "stats.json").read_text())
        assert stats["n_tiles"] > 0 and len(stats["mean"]) == 3
    import geopandas as gpd

    man = gpd.read_parquet(res / "tiles/demo_scenes/manifest.parquet")
    assert man.crs is not None and {"train", "test"} <= set(man["split"])
    for model in ("test_micro", "demo_tiny"):
        lines = (res / "pretrain" / model / "metrics.jsonl").read_text().splitlines()
        assert json.loads(lines[-1])["step"] == 12
        assert (res / "pretrain" / model / "encoder.pt").exists()
        # Snakemake sets OMP_NUM_THREADS to the rule's threads: one per rank (rank_threads), times
        # threads_per_rank (tiny.yaml: demo_tiny 2); the sweep relies on it
        threads = json.loads((res / "pretrain" / model / "summary.json").read_text())["threads_per_rank"]
        assert threads == {"test_micro": 1, "demo_tiny": 2}[model]
        for protocol in ("linprobe", "knn"):
            ev = json.loads((res / "eval" / protocol / model / "demo_landcover.json").read_text())
            assert ev["pretrained"]["top5"] >= ev["pretrained"]["top1"]
            # the accuracies are those of the confusion matrix written beside them (pretrained encoder)
            cm = pd.read_csv(res / "eval" / protocol / model / "demo_landcover.confusion.csv", index_col=0)
            assert list(cm.index) == list(cm.columns) == list(ev["pretrained"]["per_class"])
            assert cm.values.sum() == ev["pretrained"]["n_test"] == ev["random_init"]["n_test"]
            assert ev["pretrained"]["top1"] == pytest.approx(cm.values.trace() / cm.values.sum())
            for c in cm.index:
                assert ev["pretrained"]["per_class"][c] == pytest.approx(cm.loc[c, c] / cm.loc[c].sum()), c
            # and the accuracy table lists both inits of this evaluation with the JSON's numbers
            acc = pd.read_csv(res / "tables/accuracy.csv")
            rows = acc[(acc["protocol"] == protocol) & (acc["model"] == model)].set_index("init")
            assert rows.loc["pretrained", "top1"] == pytest.approx(ev["pretrained"]["top1"])
            assert rows.loc["random init", "top1"] == pytest.approx(ev["random_init"]["top1"])
    ok = json.loads((res / "profile/test_micro/FULL_SHARD/1n.json").read_text())
    assert ok["status"] == "ok" and ok["world_size"] == 2 and ok["images_per_s"] > 0
    # a cell that cannot run (a shard group of 4 in a 2-rank job) is not a job; the tables still list it
    assert not (res / "profile/test_micro/HYBRID_4GPUs/1n.json").exists()
    listed = pd.read_csv(res / "tables/profile.csv").set_index("strategy")
    assert listed.loc["HYBRID_4GPUs", "status"].startswith("impossible: HYBRID_4GPUs needs a shard group of 4")
    plan = pd.read_csv(res / "plan/plan.csv")
    assert (plan["model"] == "test_micro").all() and plan["images_per_s"].notna().any()
    # a variant of the grid (tiny.yaml: profile.variants.noprefetch), next to its base run
    nop = json.loads((res / "profile/test_micro/FULL_SHARD/1n.noprefetch.json").read_text())
    assert nop["status"] == "ok" and nop["variant"] == "noprefetch" and nop["backward_prefetch"] == 0
    assert ok["variant"] == "base" and isinstance(ok["comm_share"], float)
    # the demo's own variants (merged in from config/demo.yaml, all on demo_base) add no job here
    assert not list((res / "profile").glob("demo_base/*/*.json"))
    for name in ("accuracy_vs_size", "loss_curves", "throughput_per_strategy", "peak_memory", "paper_weak_scaling",
                 "plan_weak_scaling"):
        assert (res / "figures" / f"{name}.png").stat().st_size > 10_000
    prof = pd.read_csv(res / "tables/profile.csv")
    assert set(prof["strategy"]) >= {"NO_SHARD", "FULL_SHARD"}
    assert set(prof["variant"]) == {"base", "noprefetch"}
    for name in ("prefetch_comparison", "compile_ac_comparison"):
        assert (res / "figures" / f"{name}.png").stat().st_size > 10_000


def test_rerun_does_nothing(study):
    out = snakemake(study, "--configfile", "tiny.yaml", "-n")
    assert "Nothing to be done" in out.stdout + out.stderr


def test_report_is_built(study):
    snakemake(study, "--configfile", "tiny.yaml", "--report", "report.html")
    html = (study / "report.html").read_text(errors="replace")
    assert len(html) > 50_000 and "accuracy_vs_size.png" in html


def test_forcerun_one_stage_keeps_the_rest(study):
    enc = study / "results/pretrain/test_micro/encoder.pt"
    before = enc.stat().st_mtime
    snakemake(study, "--configfile", "tiny.yaml", "--forcerun", "figures", "--until", "figures")
    assert enc.stat().st_mtime == before


def test_invalid_config_fails_before_any_job(tmp_path):
    proj = make_project(tmp_path)
    cfg = yaml.safe_load((proj / "tiny.yaml").read_text())
    cfg["pretrain"]["strategy"] = "HALF_SHARD"
    (proj / "bad.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(proj, "--configfile", "bad.yaml", check=False)
    assert res.returncode != 0
    assert "HALF_SHARD" in res.stdout + res.stderr
    assert not (proj / "results").exists() and not (proj / "resources").exists()
    # a cross-reference the schema cannot see also stops the workflow before any job, naming the key
    cfg["pretrain"]["strategy"] = "NO_SHARD"
    cfg["eval_datasets"] = ["nope"]
    (proj / "bad.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(proj, "--configfile", "bad.yaml", check=False)
    assert res.returncode != 0 and "eval_datasets entry 'nope'" in res.stdout + res.stderr
    assert not (proj / "results").exists()


def test_paper_study_dry_run_lists_every_job(paper_dry_run):
    _, text = paper_dry_run  # tests/conftest.py: config/config.yaml through profiles/frontier, once per session
    for model in ("vit_base", "vit_huge", "vit_1b", "vit_3b", "vit_5b", "vit_15b"):
        assert f"results/pretrain/{model}/encoder.pt" in text
    for ds in ("millionaid", "ucmerced", "aid", "resisc45", "eurosat"):
        assert f"resources/raw/{ds}/download.json" in text
    for strategy in ("DDP", "NO_SHARD", "SHARD_GRAD_OP", "FULL_SHARD", "HYBRID_16GPUs"):
        assert f"/{strategy}/128n.json" in text
    counts = dict(line.split()[:2] for line in text.splitlines() if line.split()[:1] and line.split()[0] in
                  ("pretrain", "evaluate", "download", "tile"))
    # evaluate: one job per model (3 protocols x 4 datasets each)
    assert counts == {"download": "5", "tile": "5", "pretrain": "6", "evaluate": "6"}
    # profile: 6 models x 9 strategies x 8 node counts (base) less the 62 cells the memory model rules out
    # (README: Impossible cells are not jobs), + the variants of config/config.yaml: noprefetch and prefetch2
    # (ViT-5B, 3 strategies, 8 nodes: 3 + 3) and compile (6 models x 2 x 2: 24) = 400 cells, in one job per
    # model x node count (49: ViT-5B x 8 nodes has 14 feasible cells, two 2-hour jobs)
    bundles = {ln.split()[0]: int(ln.split()[1]) for ln in text.splitlines()
               if re.match(r"^profile_\w+\s+\d+$", ln)}
    assert len(bundles) == 49 and set(bundles.values()) == {1}
    assert "profile_vit_5b_8n_1" in bundles and "profile_vit_5b_8n_2" in bundles
    cells = set(re.findall(r"results/profile/\S+?\.json", text))
    assert len(cells) == 432 - 62 + 30
    # evaluate: one job per model; its outputs: 3 protocols x (MillionAID + UC Merced at 50/80 % + AID at
    # 20/50 % + NWPU-RESISC45 at 10/20 % + EuroSAT) = 3 x 8 per model
    assert len(set(re.findall(r"results/eval/\S+?\.json", text))) == 3 * 6 * 8
    assert "results/profile/vit_15b/DDP/" not in text
    for stem in ("millionaid", "ucmerced.tr50", "ucmerced.tr80", "aid.tr20", "aid.tr50", "resisc45.tr10",
                 "resisc45.tr20", "eurosat"):
        assert f"results/eval/linprobe/vit_base/{stem}.json" in text
    assert "results/profile/vit_5b/HYBRID_16GPUs/8n.noprefetch.json" in text
    assert "results/profile/vit_15b/HYBRID_8GPUs/8n.compile.json" in text
