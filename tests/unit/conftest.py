"""Shared fixtures of the unit tests."""

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread: the CI and dev boxes are small and shared, and more threads than free cores make
    OpenMP spin and crawl. Modules that run models use it with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
