"""Fixtures shared across test folders."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def paper_dry_run(tmp_path_factory):
    """The paper's study (``config/config.yaml`` through ``profiles/frontier``, a dummy account) dry-run once, in
    a fresh copy of the workflow (symlinks resolved: workflow/schemas points into src/), for every test that
    reads its job list (tests/slurm, tests/workflow, tests/perf): (workdir, stdout + stderr). Its outputs would
    lie under ``<workdir>/orion/results``."""
    wd = tmp_path_factory.mktemp("paper-dry")
    for name in ("Snakefile", "workflow", "config", "profiles", "envs"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, wd / name, symlinks=False, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, wd / name)
    env = {**os.environ, "SBATCH_ACCOUNT": "dummy123", "GEOFM_ORION": str(wd / "orion")}
    p = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--profile", "profiles/frontier"], cwd=wd,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return wd, p.stdout + p.stderr


def _sitecustomize_env(tmp: Path, code: str) -> dict:
    """The environment that makes every Python process started with it run ``code`` at start-up: Python's site
    module imports a ``sitecustomize`` module from sys.path after setting it up (docs.python.org/3/library/
    site.html), and PYTHONPATH comes before site-packages there. Child processes (a sweep's stages, torchrun's
    ranks) inherit it too."""
    inject = tmp / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(code)
    rest = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    return {"PYTHONPATH": os.pathsep.join([str(inject)] + rest)}


@pytest.fixture(scope="session")
def sitecustomize_env():
    """``sitecustomize_env(tmp, code)``: the extra environment that runs ``code`` in every Python process."""
    return _sitecustomize_env
