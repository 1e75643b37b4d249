"""Config validation (schema + cross-references), strategy translation, launch environment, CLI errors."""
import json
import os
from pathlib import Path

import pytest
import yaml

from geofm.cli import main
from geofm.config import ConfigError, load_config, validate
from geofm.distributed.launch import detect, expand_nodelist
from geofm.distributed.parallelize import ImpossibleStrategy, parse_strategy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def demo():
    return yaml.safe_load((ROOT / "config/demo.yaml").read_text())


@pytest.mark.parametrize("name", ["demo.yaml", "config.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(ROOT / "config" / name)
    assert cfg["models"]


def test_paper_config_has_the_study():
    cfg = load_config(ROOT / "config/config.yaml")
    assert cfg["models"] == ["vit_base", "vit_huge", "vit_1b", "vit_3b", "vit_5b", "vit_15b"]
    assert set(cfg["eval_datasets"]) == {"millionaid", "ucmerced", "aid", "resisc45", "eurosat"}
    ds = cfg["datasets"]
    assert ds["millionaid"]["format"] == "millionaid_zip" and ds["millionaid"]["expected_images"] == 1_000_848
    ratios = {k: ds[k].get("train_ratios") for k in ("ucmerced", "aid", "resisc45")}
    assert ratios == {"ucmerced": [0.5, 0.8], "aid": [0.2, 0.5], "resisc45": [0.1, 0.2]}
    ev = cfg["evaluate"]
    assert (ev["pool"], ev["linprobe_solver"], ev["linprobe_lr"], ev["linprobe_epochs"], ev["linprobe_batch_size"],
            ev["linprobe_augment"], ev["crop_pct"]) == ("cls", "lars", 0.1, 90, 16384, True, 0.875)
    assert cfg["pretrain"]["grad_clip"] == 0.0
    assert {"DDP", "NO_SHARD", "SHARD_GRAD_OP", "FULL_SHARD", "HYBRID_16GPUs"} <= set(cfg["profile"]["strategies"])
    assert cfg["image_size"] == 224


@pytest.mark.parametrize("path,value,fragment", [
    (("pretrain", "strategy"), "HALF_SHARD", "pretrain.strategy"),
    (("pretrain", "steps"), 0, "pretrain.steps"),
    (("models",), ["vit_giant"], "models.0"),
    (("pretrain", "lerning_rate"), 0.1, "lerning_rate"),
    (("datasets", "demo_scenes", "kind"), "video", "datasets.demo_scenes.kind"),
    # keys whose schema type is a list ([integer, "null"]): the message names both types
    (("evaluate", "linprobe_views"), 0, "evaluate.linprobe_views"),
    (("evaluate", "linprobe_warmup_epochs"), "ten", "evaluate.linprobe_warmup_epochs"),
])
def test_schema_errors_name_the_key(demo, path, value, fragment):
    node = demo
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    with pytest.raises(ConfigError) as err:
        validate(demo, "demo.yaml")
    assert fragment in str(err.value) and "demo.yaml" in str(err.value)
    if path[-1] in ("linprobe_views", "linprobe_warmup_epochs"):
        assert "integer or null" in str(err.value)


def test_number_yaml_reads_as_text_gets_a_hint(tmp_path):
    # PyYAML (YAML 1.1) reads 3e-4 as the string '3e-4' and 3.0e-4 as a float: the error says how to write it
    text = (ROOT / "config/demo.yaml").read_text() + "\n"
    bad = tmp_path / "bad.yaml"
    assert "\n  lr: 1.5e-3\n" in text
    bad.write_text(text.replace("\n  lr: 1.5e-3\n", "\n  lr: 3e-4\n", 1))
    assert yaml.safe_load(bad.read_text())["pretrain"]["lr"] == "3e-4"
    with pytest.raises(ConfigError, match=r"pretrain\.lr: '3e-4' is not allowed\n.*write it with a dot, e\.g\. 3\.0e-4"):
        load_config(bad)
    bad.write_text(text.replace("\n  lr: 1.5e-3\n", "\n  lr: 3.0e-4\n", 1))
    assert load_config(bad)["pretrain"]["lr"] == 3.0e-4


def test_cross_reference_errors(demo):
    demo["eval_datasets"] = ["nope"]
    with pytest.raises(ConfigError, match="eval_datasets entry 'nope'"):
        validate(demo)
    demo["eval_datasets"] = ["demo_scenes"]
    with pytest.raises(ConfigError, match="expected 'classification'"):
        validate(demo)


def test_patch_size_must_divide_image(demo):
    demo["image_size"] = 30
    with pytest.raises(ConfigError, match="not a multiple of demo_tiny's patch size 4"):
        validate(demo)


def test_cli_reports_invalid_config(tmp_path, demo, capsys):
    demo["pretrain"]["batch_size"] = "big"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(demo))
    assert main(["validate", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "pretrain.batch_size" in err and "bad.yaml" in err
    assert main(["validate", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_cli_set_override(tmp_path, capsys):
    demo = str(ROOT / "config/demo.yaml")
    assert main(["validate", "--config", demo, "--set", "models=[demo_tiny]"]) == 0
    assert "(1 models," in capsys.readouterr().out  # the demo lists 3: the override reached the config
    assert main(["validate", "--config", demo, "--set", "pretrain.steps=-1"]) == 2
    assert "pretrain.steps: -1 is not allowed" in capsys.readouterr().err
    # a nested value is typed (YAML) and merged key by key: grad_accum 5 against the demo's batch_size 64
    assert main(["validate", "--config", demo, "--set", "pretrain.grad_accum=5"]) == 2
    assert "batch_size 64 is not divisible by demo_tiny's 1 nodes x 1 ranks x grad_accum 5" in capsys.readouterr().err
    # an item without '=' or with a value that is not YAML is refused, naming it (before: the key was set to None)
    assert main(["validate", "--config", demo, "--set", "pretrain.steps"]) == 2
    assert "--set 'pretrain.steps': expected KEY=VALUE" in capsys.readouterr().err
    assert main(["validate", "--config", demo, "--set", "evaluate.protocols=[knn"]) == 2
    assert "--set evaluate.protocols: '[knn' is not a YAML value" in capsys.readouterr().err


def test_cli_set_values_reach_the_command(monkeypatch, capsys):
    """``--set`` values reach the subcommand, typed (YAML), merged key by key over the file; a bad one is refused."""
    import geofm.cli as cli

    seen = []
    monkeypatch.setattr(cli, "cmd_validate", lambda args, cfg: seen.append(cfg))
    demo = load_config(ROOT / "config/demo.yaml")
    args = ["validate", "--config", str(ROOT / "config/demo.yaml"), "--set", "pretrain.steps=7",
            "--set", "evaluate.protocols=[knn]", "--set", "seed=3"]
    assert main(args) == 0
    [cfg] = seen
    assert cfg["pretrain"]["steps"] == 7 and demo["pretrain"]["steps"] != 7
    assert cfg["evaluate"]["protocols"] == ["knn"] and cfg["seed"] == 3
    # every other key of the section is the file's
    assert {k: v for k, v in cfg["pretrain"].items() if k != "steps"} == \
        {k: v for k, v in demo["pretrain"].items() if k != "steps"}
    assert cfg["models"] == demo["models"] and cfg["datasets"] == demo["datasets"]
    assert main(["validate", "--config", str(ROOT / "config/demo.yaml"), "--set", "pretrain.steps=-1"]) == 2
    assert "pretrain.steps" in capsys.readouterr().err and len(seen) == 1


@pytest.mark.parametrize("name,kind,reshard,mesh", [
    ("DDP", "ddp", True, (8,)),
    ("NO_SHARD", "fsdp", False, (8, 1)),
    ("SHARD_GRAD_OP", "fsdp", False, (8,)),
    ("FULL_SHARD", "fsdp", True, (8,)),
    ("HYBRID_1GPU", "fsdp", True, (8, 1)),
    ("HYBRID_4GPUs", "fsdp", True, (2, 4)),
])
def test_strategy_translation(name, kind, reshard, mesh):
    s = parse_strategy(name)
    assert (s.kind, s.reshard_after_forward, s.mesh_shape(8)) == (kind, reshard, mesh)


def test_impossible_strategies():
    with pytest.raises(ImpossibleStrategy, match="HYBRID_16GPUs needs a shard group of 16"):
        parse_strategy("HYBRID_16GPUs").mesh_shape(8)
    with pytest.raises(ValueError, match="unknown strategy"):
        parse_strategy("ZERO3")


def test_launch_env_detection():
    assert detect({}).world_size == 1
    t = detect({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "h0", "MASTER_PORT": "1234"})
    assert (t.rank, t.local_rank, t.world_size, t.master_addr, t.master_port, t.launcher) == (3, 1, 4, "h0", 1234, "torchrun")
    s = detect({"SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NTASKS": "16", "SLURM_JOB_ID": "42",
                "SLURM_JOB_NODELIST": "frontier[00007-00008]", "PATH": "/nonexistent"})
    assert (s.rank, s.local_rank, s.world_size, s.launcher) == (9, 1, 16, "slurm")
    assert s.master_addr.startswith("frontier0000") and s.master_port == 20042


def test_expand_nodelist():
    assert expand_nodelist("frontier[00001-00003,00007],login1") == [
        "frontier00001", "frontier00002", "frontier00003", "frontier00007", "login1"]
    assert expand_nodelist("n1") == ["n1"]


def test_test_module_names_are_unique():
    """pytest's default import mode needs unique test-module basenames across the test folders."""
    names = [p.name for p in (ROOT / "tests").rglob("*.py") if p.name != "__init__.py" and p.name != "conftest.py"]
    dupes = sorted({n for n in names if names.count(n) > 1})
    assert not dupes, f"test modules with the same file name in two folders: {dupes}"


def test_profile_variant_cells_must_be_in_the_grid(demo):
    demo["profile"]["variants"] = {"ac": {"activation_checkpointing": 1, "models": ["demo_base", "vit_3b"]}}
    with pytest.raises(ConfigError, match=r"profile.variants.ac.models lists \['vit_3b'\]"):
        validate(demo)


def test_dataset_path_under_the_resources_directory(tmp_path, monkeypatch, demo):
    """A dataset fetched by hand lies where the profile puts ``resources/`` (profiles/frontier:
    ``$GEOFM_ORION/resources`` on Orion, not the 50 GB NFS home, OLCF user guide "Data and Storage"):
    ``path: "{resources}/manual/..."`` is resolved there (and ``$VARS`` expanded), whatever the working
    directory; the download stage links the file from there."""
    import hashlib
    import json

    orion = tmp_path / "orion"
    (orion / "resources" / "manual").mkdir(parents=True)
    (orion / "resources" / "manual" / "scenes.bin").write_bytes(b"by hand")
    demo["resources"] = "$FAKE_ORION/resources"
    demo["results"] = str(tmp_path / "results")
    demo["datasets"]["byhand"] = {"kind": "scenes", "source": "local", "format": "geotiff_scenes",
                                  "path": "{resources}/manual/scenes.bin",
                                  "sha256": hashlib.sha256(b"by hand").hexdigest()}
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(demo))
    monkeypatch.setenv("FAKE_ORION", str(orion))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # not where the data is
    cfg = load_config(cfg_file)
    assert cfg["datasets"]["byhand"]["path"] == f"{orion}/resources/manual/scenes.bin"
    assert main(["download", "--config", str(cfg_file), "--dataset", "byhand"]) == 0
    rec = json.loads((orion / "resources" / "raw" / "byhand" / "download.json").read_text())
    assert rec["origin"] == str((orion / "resources" / "manual" / "scenes.bin").resolve())
    # an unset variable names the key; '{resources}' only at the start
    monkeypatch.delenv("FAKE_ORION")
    demo["resources"] = "resources"
    demo["datasets"]["byhand"]["path"] = "$NOT_SET_ANYWHERE/manual/scenes.bin"
    with pytest.raises(ConfigError, match=r"datasets\.byhand\.path: .*\$NOT_SET_ANYWHERE"):
        validate(demo)
    demo["datasets"]["byhand"]["path"] = "manual/{resources}/scenes.bin"
    with pytest.raises(ConfigError, match=r"datasets\.byhand\.path: .*may only start it"):
        validate(demo)


@pytest.mark.parametrize("args,fragment", [
    (["--model", "demo_tinyy", "--dataset", "demo_landcover"], "--model 'demo_tinyy' is not a registry model"),
    (["--model", "demo_tiny", "--dataset", "nope"], "--dataset 'nope' is not under datasets in"),
    (["--model", "demo_tiny", "--dataset", "demo_scenes"], "has kind 'scenes'"),
    (["--model", "demo_tiny", "--dataset", "demo_landcover", "--train-ratio", "abc"], "--train-ratio 'abc' is not"),
    (["--model", "demo_tiny", "--dataset", "demo_landcover", "--train-ratio", "1.5"], "strictly between 0 and 1"),
])
def test_evaluate_arguments_checked_before_anything_loads(tmp_path, capsys, args, fragment):
    # nothing exists under results: each error must come from the arguments, not from a missing file
    cfg = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
    cfg["results"] = str(tmp_path / "results")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc = main(["evaluate", "--config", str(path), "--protocol", "knn", "--out", str(tmp_path / "o.json"), *args])
    err = capsys.readouterr().err
    assert rc == 1 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("argv", [
    ["profile", "--model", "test_micro", "--strategy", "FULL_SHARD", "--nodes", "1", "--out", "x.json"],
    ["pretrain", "--model", "test_micro", "--set", "pretrain.procs_per_node=2"],
])
def test_cli_relaunches_as_ranks_before_importing_torch(argv, tmp_path):
    """A multi-rank stage started plainly re-launches itself under torchrun; the process that decides so (reads
    the config, checks the model and strategy, reads the launch environment) has no use for torch and does not
    import it (about 1.3 s of CPU per job, and per profile cell, on these machines)."""
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "import geofm.cli as cli\n"
        "cli._relaunch = lambda n, argv: print(json.dumps([n, 'torch' in sys.modules])) or 0\n"
        f"sys.exit(cli.main({[argv[0], '--config', str(ROOT / 'config/demo.yaml'), *argv[1:]]!r}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "SLURM_"))}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == [2, False]


def test_relaunched_ranks_share_every_thread_variable_snakemake_sets(monkeypatch):
    """Snakemake sets six thread variables to a job's threads (snakemake/shell.py, read here from the installed
    Snakemake); a 2-rank job of 4 threads must hand each rank 2 in every one of them. Left at the job's count,
    MKL_NUM_THREADS gave each of demo_base's two ranks two GEMM threads in a 2-core job: four busy threads on
    two cores, its pretraining at 94 img/s instead of about 150."""
    import importlib.util
    import re
    import subprocess

    import geofm.cli as cli

    src = Path(importlib.util.find_spec("snakemake.shell").origin).read_text()
    snakemake_sets = set(re.findall(r'envvars\["([A-Z_]+)"\] = threads', src))
    assert "OMP_NUM_THREADS" in snakemake_sets and "MKL_NUM_THREADS" in snakemake_sets
    for v in snakemake_sets:
        monkeypatch.setenv(v, "4")
    seen = {}
    monkeypatch.setattr(subprocess, "call", lambda cmd, env: seen.update(env) or 0)
    assert cli._relaunch(2, ["pretrain"]) == 0
    assert {v: seen[v] for v in snakemake_sets} == {v: "2" for v in snakemake_sets}
