"""Starts the Slurm study (slurm_study.py) as the session begins, when its test is selected, and runs that
test last, so that the study's waiting on Slurm overlaps all the other tests; the study's directory is
removed when the session ends."""
import shutil
import tempfile
from pathlib import Path

import pytest

import slurm_study

_STUDY: dict = {}
TEST = "test_paper_shaped_study_through_slurm"


def pytest_collection_modifyitems(session, config, items):
    """The study's test goes last: it only waits for the study and checks its outputs."""
    items.sort(key=lambda item: item.name == TEST)  # stable: the rest keep their order


def pytest_collection_finish(session):
    if session.config.option.collectonly or not any(item.name == TEST for item in session.items):
        return
    _STUDY["study"] = slurm_study.start(Path(tempfile.mkdtemp(prefix="geofm-slurm-study-")) / "wf")


def pytest_sessionfinish(session):
    study = _STUDY.pop("study", None)
    if study is not None:
        study.stop()
        shutil.rmtree(study.wd.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_study_run():
    """The background study (started now if the session did not start it)."""
    if "study" not in _STUDY:
        _STUDY["study"] = slurm_study.start(Path(tempfile.mkdtemp(prefix="geofm-slurm-study-")) / "wf")
    return _STUDY["study"]
