"""Provenance in result files, the lock file, and the LayerNorm eps that the timm pin guarantees."""
import re
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import torch

from geofm.models.mae import build_mae
from geofm.provenance import provenance

ROOT = Path(__file__).resolve().parents[2]


def test_provenance_names_commit_fingerprint_and_versions():
    rec = provenance("abc123")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert rec["git"]["commit"] == head and isinstance(rec["git"]["dirty"], bool)
    assert rec["config_fingerprint"] == "abc123"
    sw = rec["software"]
    assert sw["torch"] == torch.__version__ and sw["timm"] == metadata.version("timm")
    assert sw["snakemake"] == metadata.version("snakemake") and re.match(r"3\.\d+\.\d+", sw["python"])
    assert set(rec["device"]) >= {"cuda_runtime", "hip_runtime", "driver", "gpu"}
    assert rec["device"]["cuda_runtime"] == torch.version.cuda


def test_lock_pins_every_direct_dependency_exactly_within_pyproject():
    lock = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "requirements.lock").read_text(), re.M))
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    from packaging.requirements import Requirement

    for dep in deps:
        req = Requirement(dep)
        name = req.name.lower().replace("_", "-")
        pinned = {k.lower().replace("_", "-"): v for k, v in lock.items()}.get(name)
        assert pinned, f"{req.name} is not in requirements.lock (run pip-compile, README)"
        assert req.specifier.contains(pinned, prereleases=True), (req.name, pinned, str(req.specifier))
    assert lock["torch"] == "2.14.1" and lock["torchvision"] == "0.29.1"


def test_every_layernorm_of_the_mae_uses_eps_1e6():
    model = build_mae("test_micro", 16, 3, device="meta", decoder_dim=32, decoder_depth=1, decoder_heads=2)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) >= 4 and {m.eps for m in norms} == {1e-6}
