import pytest

from enginelib import TINY


@pytest.fixture
def tiny():
    return dict(TINY)
