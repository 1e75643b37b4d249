import pytest

from enginelib import RESUME_RUN, TINY, losses, run_ranks


@pytest.fixture
def tiny():
    return dict(TINY)


@pytest.fixture(scope="session")
def resume_reference(tmp_path_factory):
    """Losses per step of RESUME_RUN on 2 gloo ranks, never interrupted."""
    out = tmp_path_factory.mktemp("resume-ref")
    run_ranks(2, {"mode": "train", "cfg": RESUME_RUN, "out": str(out)})
    return losses(out)
