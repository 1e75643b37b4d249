import pytest

from test_workflow import make_project, snakemake


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    """The tiny study run once to the end; tests that change it work on a copy (``copy_study``)."""
    proj = make_project(tmp_path_factory.mktemp("study"))
    snakemake(proj, "--configfile", "tiny.yaml")
    return proj
