"""The profile stage over its grid: variants (prefetch, activation checkpointing, real data), impossible
cells, the communication share on 2 gloo ranks, MFU, and the Snakemake wiring of the `{variant}` suffix."""
import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from geofm.cli import main
from geofm.profile import throughput as T
from geofm.train import flops, metrics

ROOT = Path(__file__).resolve().parents[2]

CFG = {
    "results": "results", "resources": "resources", "seed": 0, "device": "cpu", "image_size": 16,
    "pretrain_dataset": "demo_scenes", "eval_datasets": ["demo_landcover"], "models": ["test_micro"],
    "datasets": {
        "demo_scenes": {"kind": "scenes", "source": "synthetic", "format": "geotiff_scenes", "n_scenes": 1,
                        "size": 256, "bands": 3, "tile_size": 32, "stride": 32, "split_block": 64},
        "demo_landcover": {"kind": "classification", "source": "derived", "from": "demo_scenes",
                           "format": "derived_landcover", "tile_size": 32, "train_ratio": 0.5},
    },
    "pretrain": {"steps": 2, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "decoder_dim": 32, "decoder_depth": 1,
                 "decoder_heads": 2, "precision": "fp32"},
    "evaluate": {"protocols": ["knn"]},
    "profile": {
        "models": ["test_micro"], "strategies": ["FULL_SHARD", "HYBRID_2GPUs"], "nodes": [1], "procs_per_node": 1,
        "batch_size": 4, "steps": 3, "warmup_steps": 1, "precision": "fp32", "data": "synthetic",
        "variants": {
            "noprefetch": {"backward_prefetch": 0, "strategies": ["FULL_SHARD"]},
            "ac": {"activation_checkpointing": 1, "strategies": ["FULL_SHARD"]},
            "real": {"data": "real", "strategies": ["FULL_SHARD"]},
        },
    },
}


def write_cfg(tmp: Path, **profile) -> Path:
    cfg = json.loads(json.dumps(CFG))
    cfg["results"], cfg["resources"] = str(tmp / "results"), str(tmp / "resources")
    cfg["profile"].update(profile)
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "TORCHELASTIC"))}
    env["OMP_NUM_THREADS"] = "2"
    return env


def cli(*args, timeout=240, env_extra=None):
    res = subprocess.run([sys.executable, "-m", "geofm.cli", *map(str, args)], env={**clean_env(), **(env_extra or {})},
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def profile(cfg, out, model="test_micro", strategy="FULL_SHARD", nodes=1, variant=None):
    args = ["profile", "--config", cfg, "--model", model, "--strategy", strategy, "--nodes", nodes, "--out", out]
    if variant:
        args += ["--variant", variant]
    return [str(a) for a in args]


# ----------------------------------------------------------------------------- 2 gloo ranks
# Run by each rank's interpreter as it starts to exit (atexit, before finalisation): the FSDP2 modules and device
# meshes still in memory, collected garbage or not (gc.get_objects lists uncollected cycles too).
AT_EXIT_PROBE = """
import atexit, gc, os
def _probe():
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import FSDPModule
    live = gc.get_objects()
    with open(os.environ["GEOFM_TEST_AT_EXIT"], "a") as fh:
        fh.write(f"rank {os.environ.get('RANK')} fsdp {sum(isinstance(o, FSDPModule) for o in live)} "
                 f"mesh {sum(isinstance(o, DeviceMesh) for o in live)}\\n")
if os.environ.get("RANK") is not None:
    atexit.register(_probe)
"""


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, sitecustomize_env):
    """base and noprefetch of one cell on 2 gloo ranks (one local torchrun each). An impossible cell's record is
    checked on one rank (test_single_rank_variants_and_impossible_cells) and the 2-rank shard-group rule in
    test_feasibility: the same code, without a third launch. The base run's ranks also report, as they exit, what
    FSDP2 objects they still hold (``at_exit``)."""
    tmp = tmp_path_factory.mktemp("two")
    cfg = write_cfg(tmp, procs_per_node=2)
    at_exit = tmp / "at_exit.txt"
    probe = {**sitecustomize_env(tmp, AT_EXIT_PROBE), "GEOFM_TEST_AT_EXIT": str(at_exit)}
    out = {}
    for variant in ("base", "noprefetch"):
        out[variant] = tmp / f"{variant}.json"
        cli(*profile(cfg, out[variant], variant=variant), env_extra=probe if variant == "base" else None)
    return {**{k: json.loads(v.read_text()) for k, v in out.items()}, "at_exit": at_exit.read_text()}


def test_ranks_free_their_fsdp_modules_before_exit(two_ranks):
    """An FSDP2 module holds its shards, its collectives' work and (through its device mesh) the gloo process group
    in reference cycles that only the garbage collector frees. Left to interpreter finalisation, tensors with
    Python references are destroyed while it is torn down and a rank can abort after its work is done ("terminate
    called without an active exception", exit -6: rank 1 of this fixture's run in one CI suite; pytorch/pytorch
    PR 179291's description). ``geofm`` collects them when its command returns (geofm.distributed.launch.release):
    at exit no rank holds any (4 each before). The device mesh stays in DTensor's private caches until exit."""
    lines = sorted(re.sub(r" mesh \d+", "", ln) for ln in two_ranks["at_exit"].splitlines())
    assert lines == ["rank 0 fsdp 0", "rank 1 fsdp 0"], two_ranks["at_exit"]


def test_variants_record_their_settings(two_ranks):
    base, nop = two_ranks["base"], two_ranks["noprefetch"]
    for rec in (base, nop):
        assert rec["status"] == "ok" and rec["world_size"] == 2 and rec["images_per_s"] > 0
        assert rec["images_per_s_min"] <= rec["images_per_s"] <= rec["images_per_s_max"]
        for k in ("data_s", "forward_s", "backward_s", "optimizer_s", "peak_mem_gb", "peak_reserved_gb", "tflops",
                  "mfu", "loader_images_per_s_per_rank", "energy_j_per_image"):
            assert k in rec
        # TFLOP/s and MFU are per device: the job's images/s x FLOPs per image shared by its 2 ranks
        fl = flops.mae_train_flops_per_image("test_micro", 16, 3, 0.75, 32, 1)
        assert rec["flops_per_image"] == fl
        assert rec["tflops"] == pytest.approx(rec["images_per_s"] * fl / 2 / 1e12)
        assert rec["mfu"] == pytest.approx(rec["tflops"] / rec["peak_tflops"])
    assert base["variant"] == "base" and base["variant_settings"] == {} and base["backward_prefetch"] == 1
    assert nop["variant"] == "noprefetch" and nop["variant_settings"] == {"backward_prefetch": 0}
    assert nop["backward_prefetch"] == 0 and nop["forward_prefetch"] == 0 and nop["data"] == "synthetic"


def test_communication_share_on_two_ranks(two_ranks):
    for rec in (two_ranks["base"], two_ranks["noprefetch"]):
        assert isinstance(rec["comm_share"], float) and 0 < rec["comm_share"] < 1, rec
        assert 0 < rec["comm_s"] < rec["comm_profiled_step_s"]
        assert "gloo" in rec["comm_source"] and rec["comm_ops"] > 0


# ----------------------------------------------------------------------------- 1 rank, in this process
def test_single_rank_variants_and_impossible_cells(tmp_path):
    cfg = write_cfg(tmp_path, device_memory_gb=1)
    assert main(profile(cfg, tmp_path / "ac.json", variant="ac")) == 0
    ac = json.loads((tmp_path / "ac.json").read_text())
    assert ac["status"] == "ok" and ac["activation_checkpointing"] == 1 and ac["variant"] == "ac"
    assert ac["comm_share"] == "n/a" and ac["world_size"] == 1
    # a shard group larger than the job
    assert main(profile(cfg, tmp_path / "h2.json", strategy="HYBRID_2GPUs")) == 0
    h2 = json.loads((tmp_path / "h2.json").read_text())
    assert h2["status"].startswith("impossible: HYBRID_2GPUs needs a shard group of 2")
    # a model too big for device_memory_gb (ViT-Base: 86M encoder params x 16 bytes of training state on one 1 GB
    # device): decided by the memory model, never built
    assert main(profile(cfg, tmp_path / "big.json", model="vit_base")) == 0
    big = json.loads((tmp_path / "big.json").read_text())
    assert big["status"].startswith("impossible: needs ~") and "of 1 GB per GPU" in big["status"]
    assert 1 < 80e6 * 16 / 2**30 < big["predicted_peak_mem_gb"]


def test_unknown_variant_is_an_error(tmp_path, capsys):
    cfg = write_cfg(tmp_path)
    assert main(profile(cfg, tmp_path / "x.json", variant="turbo")) == 2
    assert "unknown profile variant 'turbo'" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_mfu_on_a_known_case(tmp_path, monkeypatch):
    """MFU = model FLOP/s per device / the device's peak; with the peak pinned to 1 TFLOP/s it is TFLOP/s."""
    monkeypatch.setattr(metrics, "peak_tflops", lambda device, precision: (1.0, "pinned for the test"))
    cfg = write_cfg(tmp_path)
    assert main(profile(cfg, tmp_path / "m.json")) == 0
    rec = json.loads((tmp_path / "m.json").read_text())
    fl = flops.mae_train_flops_per_image("test_micro", 16, 3, 0.75, 32, 1)
    assert rec["flops_per_image"] == fl and rec["peak_tflops"] == 1.0
    assert rec["tflops"] == pytest.approx(rec["images_per_s"] * fl / 1e12)
    assert rec["mfu"] == pytest.approx(rec["tflops"])
    assert rec["images_per_s"] == pytest.approx(rec["global_batch"] / rec["step_s"])


def test_real_data_variant_includes_the_loader(tmp_path, monkeypatch):
    """The ``real`` variant times steps fed from the tiles on disk (the pretraining dataset's training tiles,
    read through the loader), not the synthetic batch: the tile reader is called, on that directory."""
    from geofm.data.shards import TileDataset

    cfg = write_cfg(tmp_path)
    cli("download", "--config", cfg, "--dataset", "demo_scenes")
    cli("tile", "--config", cfg, "--dataset", "demo_scenes")
    reads, real_get = [], TileDataset.get_batch_numpy

    def get_batch_numpy(self, idx):
        reads.append((str(self.tiles_dir), len(idx)))
        return real_get(self, idx)

    monkeypatch.setattr(TileDataset, "get_batch_numpy", get_batch_numpy)
    assert main(profile(cfg, tmp_path / "real.json", variant="real")) == 0
    assert reads and {r for r, _ in reads} == {str(tmp_path / "results" / "tiles" / "demo_scenes")}, reads[:3]
    rec = json.loads((tmp_path / "real.json").read_text())
    assert rec["status"] == "ok" and rec["data"] == "real" and rec["variant_settings"] == {"data": "real"}
    assert rec["data_s"] > 0 and rec["loader_images_per_s_per_rank"] > 0


# ----------------------------------------------------------------------------- pieces
def ev(name, start, end, device="DeviceType.CPU"):
    return SimpleNamespace(name=name, time_range=SimpleNamespace(start=start, end=end), device_type=device)


def test_comm_share_from_events():
    events = [ev(T.STEP_RANGE, 100, 200),
              ev("c10d::_allgather_base_", 110, 130), ev("gloo:all_gather", 112, 128),  # nested: counted once
              ev("gloo:all_reduce", 190, 260),  # clipped at the step's end
              ev("FSDP::all_gather_copy_in", 140, 150), ev("aten::mm", 150, 180)]  # not communication
    r = T.comm_share_from_profile(events)
    assert r["comm_share"] == pytest.approx(0.30) and r["comm_s"] == pytest.approx(30e-6)
    assert "gloo" in r["comm_source"]
    # on GPUs the NCCL kernels count, not the CPU-side launches
    gpu = [ev(T.STEP_RANGE, 0, 1000), ev("c10d::allreduce_", 0, 900),
           ev("ncclDevKernel_AllGather_RING_LL", 100, 300, "DeviceType.CUDA"),
           ev("ncclDevKernel_ReduceScatter_Sum_f32_RING_LL", 250, 400, "DeviceType.CUDA"),
           ev("sm90_xmma_gemm", 0, 1000, "DeviceType.CUDA")]
    r = T.comm_share_from_profile(gpu)
    assert r["comm_share"] == pytest.approx(0.3) and "nccl" in r["comm_source"]
    assert T.comm_share_from_profile([ev("gloo:all_gather", 0, 1)])["comm_share"] == "n/a"


def test_feasibility():
    from geofm.train.pretrain import TrainConfig

    def feas(model, strategy, world, image_size, mem):
        cfg = TrainConfig(model=model, strategy=strategy, image_size=image_size, batch_size=32 * world,
                          activation_checkpointing=1)
        return T.feasibility(cfg, world, mem)[0]

    assert feas("test_micro", "FULL_SHARD", 2, 16, None) == "ok"
    assert feas("test_micro", "HYBRID_4GPUs", 2, 16, None).startswith("impossible")
    assert feas("vit_15b", "DDP", 8, 224, 64).startswith("impossible: needs ~")  # 15B x 16 B, unsharded
    assert feas("vit_15b", "FULL_SHARD", 64, 224, 64) == "ok"


# ----------------------------------------------------------------------------- Snakemake wiring
def test_dry_run_lists_variant_jobs(tmp_path):
    for item in ("Snakefile", "workflow", "config", "profiles"):
        src = ROOT / item
        (shutil.copytree(src, tmp_path / item, symlinks=True) if src.is_dir() else shutil.copy(src, tmp_path / item))
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--forceall", "--profile", "profiles/local"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    text = res.stdout
    demo = yaml.safe_load((ROOT / "config/demo.yaml").read_text())["profile"]
    # one job per model x node count runs all of that shape's cells (base and variants)
    bundles = {}
    for ln in text.splitlines():
        if "profile-bundle" in ln:
            cells = ln.split("--cells ", 1)[1].split(" --launch", 1)[0].split()
            bundles[cells[0].split("/")[2]] = cells
    assert sorted(bundles) == sorted(demo["models"])
    listed = [c for cells in bundles.values() for c in cells]
    for name, v in demo["variants"].items():
        for model in v.get("models", demo["models"]):
            for strategy in v.get("strategies", demo["strategies"]):
                assert f"results/profile/{model}/{strategy}/1n.{name}.json" in bundles[model]
    assert "results/profile/demo_tiny/NO_SHARD/1n.json" in bundles["demo_tiny"]
    n_base = len(demo["models"]) * len(demo["strategies"]) * len(demo["nodes"])
    n_var = sum(len(v.get("models", demo["models"])) * len(v.get("strategies", demo["strategies"]))
                * len(v.get("nodes", demo["nodes"])) for v in demo["variants"].values())
    assert len(listed) == len(set(listed)) == n_base + n_var
    counts = {ln.split()[0]: ln.split()[1] for ln in text.splitlines() if re.match(r"^profile_\w+\s+\d+$", ln)}
    assert counts == {f"profile_{m}_1n": "1" for m in demo["models"]}


def test_energy_counter_reads_nvml(monkeypatch):
    """With an NVML stand-in, the energy counter is read in joules; on the CPU it is None."""
    import sys
    import types

    import torch

    from geofm.profile import throughput

    calls = {}
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByPciBusId=lambda bus: calls.setdefault("bus", bus),
        nvmlDeviceGetHandleByIndex=lambda i: calls.setdefault("index", i),
        nvmlDeviceGetTotalEnergyConsumption=lambda h: 123_456,  # mJ
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(pci_bus_id="0000:3b:00.0"))
    assert throughput._energy_j(torch.device("cuda", 1)) == pytest.approx(123.456)
    assert calls == {"bus": "0000:3b:00.0"}
    assert throughput._energy_j(torch.device("cpu")) is None
